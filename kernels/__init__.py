"""Fused kernels for RL on language models, written once in PyTorch and fused by torch.compile.

token_logprobs  per-token log-probs (and entropy) from hidden states, chunked over tokens
policy_loss     policy loss (ppo_clip, cispo, gspo) + KL penalty, with its statistics

When to compile is decided here, once per process, for every kernel. `compiled=None` (the default everywhere)
means "compile if it works here": the first compiled call that fails *to compile* (no C++ compiler, unsupported
Python, a Dynamo/Inductor error) warns once, flips a process-wide switch, and that call and every later one run
the eager function instead; no probe compile is paid up front. Errors of the computation itself (CUDA out of
memory, bad shapes) are not compile failures: they propagate and compilation stays on. `compiled=True` lets
every error propagate, `compiled=False` or the environment variable MINIRLVR_NO_COMPILE=1 force eager. Both
paths run the same Python function, so they compute the same math; only Inductor's fusion (fewer [C,V]
temporaries, one pass over memory instead of several) differs.
"""

import os
import warnings
from typing import Callable

import torch

_compile_broken = False  # set once the first compiled call fails


def compile_errors() -> tuple[type[Exception], ...]:
    """What "compiling does not work here" raises: Dynamo's errors (Inductor's arrive wrapped in
    BackendCompilerFailed, a TorchDynamoException) and Inductor's own. Not torch.OutOfMemoryError, a plain
    RuntimeError of the computation. Imported on demand: importing kernels must not import Dynamo."""
    import torch._dynamo.exc
    import torch._inductor.exc
    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError


def want_compile(compiled: bool | None) -> bool:
    """Resolve the user's flag against the environment and past failures."""
    if compiled is False or os.environ.get("MINIRLVR_NO_COMPILE", "") not in ("", "0"):
        return False
    return compiled is True or not _compile_broken


class MaybeCompiled:
    """A pure tensor function that runs compiled or eager: `f(compiled, *args)`.

    The torch.compile wrapper is built lazily, on the first compiled call, so
    importing kernels costs nothing and forcing eager never touches Dynamo.

    dynamic_dims: dimensions whose size varies between calls (e.g. the number of
    rows in a chunk); they are marked dynamic on every tensor argument so that
    one graph serves all sizes, while the other dimensions stay static. When
    the first argument has size 0 or 1 in one of them, the call runs eagerly.
    """

    def __init__(self, fn: Callable, dynamic_dims: tuple[int, ...] = (), **compile_options):
        self.fn, self.dynamic_dims, self.compile_options = fn, dynamic_dims, compile_options
        self._compiled_fn = None

    def __call__(self, compiled: bool | None, *args):
        # Dynamo compiles sizes 0 and 1 into graphs of their own; for inputs that small
        # the eager function is just as fast and saves seconds of compile time.
        if not want_compile(compiled) or any(args[0].dim() > d and args[0].shape[d] < 2 for d in self.dynamic_dims):
            return self.fn(*args)
        if self._compiled_fn is None:
            try:
                self._compiled_fn = torch.compile(self.fn, **self.compile_options)
            except RuntimeError as e:  # e.g. "Dynamo is not supported on Python 3.x": nothing has run yet
                return self._eager_from_now_on(e, compiled, args)
        for t in args:
            for d in self.dynamic_dims:
                if isinstance(t, torch.Tensor) and t.dim() > d:
                    torch._dynamo.maybe_mark_dynamic(t, d)
        try:
            return self._compiled_fn(*args)
        except compile_errors() as e:
            return self._eager_from_now_on(e, compiled, args)

    def _eager_from_now_on(self, e: Exception, compiled: bool | None, args):
        global _compile_broken
        if compiled is True:
            raise e
        _compile_broken = True
        warnings.warn(f"kernels: torch.compile failed ({type(e).__name__}: {e}); "
                      "running eager from now on (set MINIRLVR_NO_COMPILE=1 to skip the attempt)")
        return self.fn(*args)


# the kernels build their MaybeCompiled functions at import, so they are imported after it is defined
from kernels.logprob import token_logprobs  # noqa: E402
from kernels.policy_loss import (AGGREGATORS, KL_ESTIMATORS, POLICY_LOSSES, LossConfig, loss_units,  # noqa: E402
                                 policy_loss)

__all__ = ["token_logprobs", "policy_loss", "loss_units", "LossConfig", "KL_ESTIMATORS", "AGGREGATORS", "POLICY_LOSSES"]
