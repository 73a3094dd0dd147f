"""A decoder-only Transformer for the Llama and Qwen2 families, readable in one sitting.

Architecture (identical for both families):
    x = embed(ids)
    for each layer:  x = x + Attn(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

- RoPE with the "default" rope type only (rotate-half convention, as in Hugging Face).
- Grouped-query attention: n_kv_heads <= n_heads, each kv head shared by n_heads // n_kv_heads query heads.
- Qwen2 has a bias on q/k/v (not o); Llama has an optional bias on q/k/v/o (`attention_bias`).
- Tied or untied input/output embeddings.

Module and parameter names mirror Hugging Face's (`model.layers.0.self_attn.q_proj.weight` ...), so a
state dict maps 1:1 onto a checkpoint directory and back, with no renaming table to read.

One forward serves training, evaluation and decoding: optional per-row positions (a left-padded row's first
real token sits at position 0), a key-validity mask, a KV cache as an argument (the sampler's), and the
final hidden states instead of logits on request (the chunked log-prob kernel multiplies them with lm_head
itself, so [B, T, V] logits never exist). Attention gets a boolean mask only when some key is padding, else
it runs plain causal (CUDA's fused kernels). On CPU the sampler swaps how the linear layers compute
(sampler.fast_linears); there is no second copy of this model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minirlvr.checkpoint import CheckpointError, atomic_dir, load_safetensors_dir, read_json

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


@dataclass
class ModelConfig:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # llama: bias on q, k, v, o. qwen2 always has q/k/v bias (and none on o).
    model_type: str = "llama"
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(f"model_type {self.model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Reads a Hugging Face config dict, refusing features this implementation does not have."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(f"{source}: field 'model_type' is {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        # transformers >= 5 nests rope settings in rope_parameters; older configs use rope_theta + rope_scaling.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{source}: rope type {rope_type!r} is not supported (only 'default' RoPE)")
        if d.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{source}: field 'hidden_act' is {d['hidden_act']!r}; only 'silu' is supported")
        if d.get("mlp_bias", False):
            raise CheckpointError(f"{source}: field 'mlp_bias' is true; MLP biases are not supported")
        if d.get("use_sliding_window", False):
            raise CheckpointError(f"{source}: field 'use_sliding_window' is true; sliding-window attention is not supported")
        kw = {f.name: d[f.name] for f in fields(cls) if d.get(f.name) is not None}
        if "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        if model_type == "qwen2":
            kw.pop("attention_bias", None)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if name not in d:
                raise CheckpointError(f"{source}: required field {name!r} is missing")
            if not isinstance(d[name], int) or d[name] <= 0:
                raise CheckpointError(f"{source}: field {name!r} must be a positive integer, got {d[name]!r}")
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        kw["rope_theta"] = float(kw.get("rope_theta", 10000.0))
        return cls(**kw)

    def to_hf(self) -> dict:
        d = asdict(self)
        d.pop("initializer_range")
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.model_type]
        d.update(architectures=[arch], hidden_act="silu", mlp_bias=False, rope_scaling=None,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
                 initializer_range=self.initializer_range, torch_dtype="float32", use_cache=True)
        if self.model_type == "qwen2":
            d.pop("attention_bias")
            d.update(use_sliding_window=False, sliding_window=None)
        return d


# ----------------------------------------------------------------------------------------------------
# building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the scale, exactly as HF does (matters in bf16). In fp32,
        # F.rms_norm computes the same bits as x * rsqrt(mean(x^2) + eps) * weight, in one kernel.
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [B, T] (long) -> cos, signed_sin [B, T, head_dim] in `dtype`, computed in fp32; signed_sin is
    sin with its first half negated, so that rotate-half is x * cos + roll(x) * signed_sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim))
    freqs = positions[..., None].float() * inv_freq  # [B, T, head_dim/2]
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; cos/signed_sin [B, T, head_dim]. HF's rotate-half, x * cos + cat(-x2, x1) * sin,
    as x * cos + roll(x) * signed_sin: the same bits, fewer kernels."""
    return x * cos[:, None] + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin[:, None]


class KVCache:
    """Preallocated keys/values, per layer [B, n_kv_heads, max_len, head_dim].

    `length` slots are filled, for all rows at once (ragged prompts are left-padded, so every row writes
    the same slot each step). `key_mask` [B, max_len] marks which filled slots hold real tokens (False for
    left padding); a query attends to real keys at or before its own slot.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length, self.max_len = 0, max_len
        self.padded = False  # does any filled slot hold padding? (known without a host sync per decoded token)

    @classmethod
    def for_model(cls, model: "Transformer", batch: int, max_len: int) -> "KVCache":
        c, p = model.config, model.lm_head.weight
        return cls(c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim, p.dtype, p.device)

    def reorder(self, index: torch.Tensor) -> None:
        """Gather rows (e.g. copy one prefilled prompt to the G rows of its group): index [B_new]."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.key_mask = self.key_mask.index_select(0, index)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.hidden_size, bias=cfg.o_bias)

    def qkv(self, x):
        """The three projections of x. The sampler's CPU fast path computes them as one matmul instead."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
        # no mask (no padding): causal, which a lone query after the cache's keys gets for free
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def gate_up(self, x):
        """The two input projections of x (one matmul in the sampler's CPU fast path)."""
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x):
        gate, up = self.gate_up(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The trunk, named `model` inside Transformer so parameter names match HF checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def build_mask(key_mask: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, start+T]: query t (at slot start+t) sees real keys at slots <= its own.

    key_mask [B, start+T] marks real (non-padding) key slots. A query always sees its own slot, so a padding
    query has at least one key and SDPA never produces NaN rows (their outputs are never used).
    """
    S = start + T
    q_slot = torch.arange(start, S, device=key_mask.device)[:, None]
    k_slot = torch.arange(S, device=key_mask.device)[None, :]
    causal = k_slot <= q_slot  # [T, S]
    return ((causal & key_mask[:, None, :]) | (k_slot == q_slot))[:, None]


def attention_mask(key_mask: torch.Tensor | None, cache: KVCache | None, T: int) -> torch.Tensor | None:
    """The boolean mask for T new queries, or None when causal attention is exact (no key is padding, and the
    queries start the sequence or are one decoding step). Records key_mask [B, T] in the cache."""
    if cache is None:
        return None if key_mask is None or bool(key_mask.all()) else build_mask(key_mask, 0, T)
    start = cache.length
    if start + T > cache.max_len:
        raise ValueError(f"KV cache overflow: {start} + {T} tokens > max_len {cache.max_len}")
    cache.key_mask[:, start:start + T] = True if key_mask is None else key_mask
    cache.padded = cache.padded or (key_mask is not None and not bool(key_mask.all()))
    return None if not cache.padded and (start == 0 or T == 1) else build_mask(cache.key_mask[:, :start + T], start, T)


# ----------------------------------------------------------------------------------------------------
# the model

class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() de-duplicates tied weights

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                return_hidden: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V] (or final-normed hidden states [B, T, H] if return_hidden).

        positions [B, T]: RoPE positions (default 0..T-1, continuing after the cache's filled slots).
        key_mask [B, T]: True at real tokens, False at padding (default: all real).
        cache: the T new keys/values go to slots cache.length.. and attend to every real key before them.
        attn_mask [B, 1, T, T] bool, without a cache: which token sees which, instead of causal + key_mask
        (several sequences packed in one row: rollout.packed_hidden).
        """
        B, T = input_ids.shape
        start = 0 if cache is None else cache.length
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        mask = attention_mask(key_mask, cache, T) if attn_mask is None else attn_mask
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length = start + T
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x)

    # ---------------------------------------------------------------- Hugging Face directory I/O

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> "Transformer":
        """Loads config.json + model.safetensors (or sharded, via model.safetensors.index.json)."""
        path = Path(path)
        config = ModelConfig.from_hf(read_json(path / "config.json"), source=str(path / "config.json"))
        state = load_safetensors_dir(path)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight", None)
            state.pop("lm_head.weight", None)  # some tied checkpoints store it anyway; the embedding wins
        state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise CheckpointError(f"{path}: tensors do not match config.json: missing {missing[:8]}"
                                  f"{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}")
        for k, shape in expected.items():
            if tuple(state[k].shape) != tuple(shape):
                raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                      f"config.json implies {tuple(shape)}")
        state = {k: v.to(dtype=dtype, device=device) for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Writes config.json + model.safetensors atomically (temp dir, then rename) into `path`."""
        from safetensors.torch import save_file
        path = Path(path)
        state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # safetensors refuses shared storage; HF re-ties on load
        cfg = self.config.to_hf()
        cfg["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        with atomic_dir(path) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
