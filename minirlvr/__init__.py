"""minirlvr: a small, readable, pure-PyTorch reference implementation of RL with verifiable rewards.

Public API (names are stable):
    Transformer, ModelConfig   (minirlvr.model)
    Tokenizer                  (minirlvr.tokenizer)
    generate                   (minirlvr.sampler)
Imports are lazy so that `import minirlvr.verifier` (say, in a sandbox helper) does not pull in torch.
"""

_EXPORTS = {"Transformer": "minirlvr.model", "ModelConfig": "minirlvr.model", "KVCache": "minirlvr.model",
            "Tokenizer": "minirlvr.tokenizer", "generate": "minirlvr.sampler"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minirlvr' has no attribute {name!r}")
