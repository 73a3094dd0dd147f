"""The model against transformers (a peer implementation): logits, save/load both ways, bad checkpoints."""

import json
import os
from pathlib import Path

import pytest
import torch

from minirlvr import Transformer
from minirlvr.model import CheckpointError, KVCache, ModelConfig

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "llama_gqa_tied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama_mha_untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "llama_bias_mqa": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=1, attention_bias=True,
                           tie_word_embeddings=False, rope_theta=500000.0),
    "qwen2_gqa_tied": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2_untied_headdim": dict(model_type="qwen2", num_attention_heads=2, num_key_value_heads=1, head_dim=24,
                                 tie_word_embeddings=False),
}


def hf_model(kind: str, seed: int = 0):
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, rms_norm_eps=1e-6,
              max_position_embeddings=128)
    kw.update(CONFIGS[kind])
    cls = transformers.LlamaConfig if kw["model_type"] == "llama" else transformers.Qwen2Config
    kw.pop("model_type")
    theta = kw.pop("rope_theta", 10000.0)
    cfg = cls(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # HF zero-inits biases and ones-inits norms; randomise them so they are tested
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(ours, theirs) built from the same checkpoint that transformers saved."""
    theirs = hf_model(request.param)
    d = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(d)
    return Transformer.from_pretrained(d).eval(), theirs, d


def test_logits_match_transformers(pair):
    ours, theirs, _ = pair
    ids = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_our_save_loads_in_transformers(pair, tmp_path):
    ours, theirs, _ = pair
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").float().eval()
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(back(ids).logits, theirs(ids).logits, atol=1e-4, rtol=0)
    assert back.config.tie_word_embeddings == ours.config.tie_word_embeddings


def test_left_padding_with_positions_and_mask_matches_unpadded(pair):
    ours, _, _ = pair
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, 97, (n,), generator=g) for n in (9, 4, 6)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    key_mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], key_mask[i, T - len(r):] = r, True
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = ours(ids, positions=positions, key_mask=key_mask)
        for i, r in enumerate(rows):
            alone = ours(r[None])[0]
            torch.testing.assert_close(out[i, T - len(r):], alone, atol=1e-5, rtol=0)


def test_kv_cache_incremental_equals_full_forward(pair):
    ours, _, _ = pair
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache.for_model(ours, batch=2, max_len=16)
        steps = [ours(ids[:, :5], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_return_hidden_times_head_is_logits(pair):
    ours, _, _ = pair
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        h = ours(ids, return_hidden=True)
        torch.testing.assert_close(h @ ours.lm_head.weight.T, ours(ids), atol=1e-5, rtol=0)


def test_sharded_checkpoint_loads(tmp_path):
    theirs = hf_model("llama_mha_untied")
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=0)


def test_roundtrip_our_own_random_init_and_bf16(tmp_path):
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    m = Transformer(cfg)
    m.save_pretrained(tmp_path / "m")
    m2 = Transformer.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    m3 = Transformer.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert m3.lm_head.weight.dtype == torch.bfloat16
    assert m3.lm_head.weight.data_ptr() == m3.model.embed_tokens.weight.data_ptr()  # still tied


# ------------------------------------------------------------------------- bad checkpoints fail fast

@pytest.fixture
def good_dir(tmp_path):
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    Transformer(cfg).save_pretrained(tmp_path / "ck")
    return tmp_path / "ck"


def _edit_config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d, fn):
    from safetensors.torch import load_file, save_file
    st = load_file(str(d / "model.safetensors"))
    fn(st)
    save_file(st, str(d / "model.safetensors"))


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"missing \['lm_head.weight'\]"),
    ("extra", r"unexpected \['model.extra.weight'\]"),
    ("shape", r"tensor 'model.norm.weight' has shape \(31,\)"),
    ("model_type", r"config.json: field 'model_type' is 'gpt2'"),
    ("rope", r"config.json: rope type 'yarn' is not supported"),
    ("truncated", r"model.safetensors: corrupt or truncated"),
    ("no_config", r"config.json: file not found"),
    ("bad_json", r"config.json: invalid JSON"),
    ("field", r"config.json: field 'hidden_size' must be a positive integer"),
])
def test_bad_checkpoints_fail_fast_naming_file_and_field(good_dir, case, pattern):
    d = good_dir
    if case == "missing":
        _edit_tensors(d, lambda st: st.pop("lm_head.weight"))
    elif case == "extra":
        _edit_tensors(d, lambda st: st.__setitem__("model.extra.weight", torch.zeros(2)))
    elif case == "shape":
        _edit_tensors(d, lambda st: st.__setitem__("model.norm.weight", torch.zeros(31)))
    elif case == "model_type":
        _edit_config(d, model_type="gpt2")
    elif case == "rope":
        _edit_config(d, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    elif case == "truncated":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "no_config":
        os.remove(d / "config.json")
    elif case == "bad_json":
        (d / "config.json").write_text("{not json")
    elif case == "field":
        _edit_config(d, hidden_size="32")
    with pytest.raises(CheckpointError, match=pattern):
        Transformer.from_pretrained(d)


def test_failed_save_keeps_previous_checkpoint(good_dir, monkeypatch):
    before = (good_dir / "model.safetensors").read_bytes()
    m = Transformer.from_pretrained(good_dir)
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        m.save_pretrained(good_dir)
    assert (good_dir / "model.safetensors").read_bytes() == before
    assert not [p for p in good_dir.parent.iterdir() if p.name.endswith(".tmp")]


SMOL = os.environ.get("MINIRLVR_SMOLLM2")


@pytest.mark.skipif(not SMOL, reason="set MINIRLVR_SMOLLM2 to an HF folder of SmolLM2-135M-Instruct (README: Real models)")
def test_smollm2_logits_match_transformers(tmp_path):
    ours = Transformer.from_pretrained(SMOL).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)
        ours.save_pretrained(tmp_path / "s")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "s", dtype=torch.float32).eval()
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=1e-5, rtol=0)
