"""Batched generation over model.forward with a KV cache: prefill the prompts once, then one token per step.

    out = generate(model, prompts, max_new_tokens=64, temperature=1.0, num_samples=8, stop_ids=[2], seed=0)
    out.tokens[r], out.logprobs[r]  # row r: new tokens (up to and including its stop token), their log-probs
    out.prompt_index[r]             # the prompt row r continues; rows are prompt-major (p0s0, p0s1, .., p1s0, ..)
    out.tokens_tensor, out.logprobs_tensor, out.mask  # the same, padded [R, T_new] (0 / 0.0 / False after the end)

How it works:
- Ragged prompts are left-padded to a common length P (build_batch, the one batch layout of the project:
  training appends the responses to the same rows), so every row writes the same cache slot at every step.
  Each row's real tokens get positions 0, 1, ... whatever padding precedes them, and padding slots are masked
  out of attention, so a row's result does not depend on the other rows in the batch.
- A GRPO group (num_samples=G) shares one prompt: each prompt is prefilled once and its cache copied to its
  G rows (KVCache.reorder). lm_head runs on the last position only.
- Each row stops on its own at a stop token; the loop ends early once every row has stopped. When at least
  half of the rows have stopped, the finished rows are dropped from the cache, so decoding costs what the live
  rows need. Looking at which rows stopped is a host sync: on CPU it is free and done every step, on a GPU
  only every CHECK_EVERY steps, so the device is never stalled once per token.

Log-probs. Each returned log-prob is that of the sampled token under the distribution it was sampled from:
softmax(logits / temperature) restricted to the top-k / top-p set and renormalised. With temperature 0
(greedy) it is the log-prob under the full, unscaled softmax (temperature 1). Training recomputes log-probs
with the full softmax at the same temperature (kernels.token_logprobs), not after top-k/top-p: with top_k or
top_p that truncate, the two differ (the sampler's are larger), and an importance ratio between them is not 1.

Randomness comes only from a torch.Generator seeded with `seed` on the model's device, never the global RNG:
the same call gives the same output. The stream is consumed per step for the whole batch, so a row's samples
depend on the whole call (which rows it shares a batch with, and when they stop).

Speed: decoding runs the model's own forward; on CPU its linear layers compute through oneDNN with weights
prepacked for the batch while generate runs (fast_linears). With MINIRLVR_COMPILE_DECODE=1, fast=True runs each
step (forward and sampling) as one torch.compile'd graph instead (decode_step, compiled once per process).
bench/sampler.py compares with transformers.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from kernels import MaybeCompiled, want_compile
from minirlvr.model import KVCache, Transformer

Tensor = torch.Tensor


@dataclass
class Generation:
    tokens: list[list[int]]       # new tokens per row, up to and including a stop token
    logprobs: list[list[float]]   # log-prob of each token under the distribution it was sampled from
    tokens_tensor: Tensor         # [R, T_new] long, 0 after a row's end
    logprobs_tensor: Tensor       # [R, T_new] float32, 0.0 after a row's end
    mask: Tensor                  # [R, T_new] bool, True on generated tokens
    prompt_index: list[int]       # [R] which prompt each row came from


@dataclass
class Batch:
    """R rows, each a prompt left-padded to P tokens and then a response right-padded to T tokens.

    The hidden state at column P-1+t predicts response token t, so one slice lines up a whole batch."""
    ids: Tensor             # [R, P + T] token ids (pad_id at padding)
    key_mask: Tensor        # [R, P + T] bool, True at real tokens
    positions: Tensor       # [R, P + T] RoPE positions, 0 at each row's first real token
    prompt_len: int         # P
    response_mask: Tensor   # [R, T] float, 1.0 at response tokens
    prompt_id: Tensor       # [R] long: rows with the same id have the same prompt (a GRPO group)
    pack: bool = False      # log-probs by the packed forward (rollout.packed_hidden): same math, other rounding

    @property
    def responses(self) -> Tensor:
        return self.ids[:, self.prompt_len:]

    def rows(self, index: slice | Tensor) -> "Batch":
        return Batch(self.ids[index], self.key_mask[index], self.positions[index], self.prompt_len,
                     self.response_mask[index], self.prompt_id[index], self.pack)


def build_batch(prompts: list[list[int]], responses: list[list[int]] | None = None, pad_id: int = 0,
                device: torch.device | str | None = None, pack: bool = False) -> Batch:
    """Ragged prompts (and the responses that continue them, row by row) -> one left-padded Batch.

    Padding gets position 0 (prompt side) or repeats the last position (response side); it is masked anyway.
    Without responses the batch has T = 0 response columns; with them T >= 1, even if all are empty.
    """
    T = 0 if responses is None else max(1, max(len(r) for r in responses))
    responses = [[] for _ in prompts] if responses is None else responses
    R, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((R, P + T), pad_id, dtype=torch.long)
    key_mask = torch.zeros(R, P + T, dtype=torch.bool)
    response_mask = torch.zeros(R, T)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        key_mask[i, P - len(p):P + len(r)] = True
        response_mask[i, :len(r)] = 1.0
    positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    ids_of: dict[tuple, int] = {}
    prompt_id = torch.tensor([ids_of.setdefault(tuple(p), len(ids_of)) for p in prompts], dtype=torch.long)
    return Batch(ids.to(device), key_mask.to(device), positions.to(device), P, response_mask.to(device),
                 prompt_id.to(device), pack)


# ----------------------------------------------------------------------------------- pure functions

def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """logits [B, V] -> logits [B, V] with -inf outside the top-k, then top-p (nucleus), set. 0 / 1.0 disable.

    top-k keeps the k largest logits (ties with the k-th are kept too). top-p keeps the smallest prefix of the
    tokens sorted by probability whose mass reaches top_p: a token stays if the mass strictly before it is
    < top_p, so the most likely token always stays. The same order and rules as transformers' warpers.
    """
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample(logits: Tensor, temperature: float, top_k: int, top_p: float,
           generator: torch.Generator | None, fast: bool = False, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits [B, V] -> (tokens [B] long, logprobs [B] float32).

    temperature 0: argmax, with its log-prob under the unscaled full softmax. Otherwise a draw from
    softmax(filter_logits(logits / temperature)) and its log-prob under that same (renormalised) distribution.
    fast: the draw by inverse CDF, one uniform number per row, where torch.multinomial draws one exponential
    number per vocabulary entry (a fifth of a MiniWorld decode step); the same distribution, another stream.
    u [B, 1]: those uniform numbers, drawn by the caller (outside a compiled step, which takes no generator).
    """
    logits = logits.float()
    if temperature == 0.0:
        tokens = logits.argmax(-1)
    else:
        logits = filter_logits(logits / temperature, top_k, top_p)
        if fast:
            logp = logits - logits.logsumexp(-1, keepdim=True)
            cdf = logp.exp().cumsum(-1)
            # u < 1 so u * total < total: the first entry of the cdf above it has non-zero probability
            u = torch.rand(len(cdf), 1, generator=generator, device=cdf.device) if u is None else u
            tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
            return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
        tokens = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


# ----------------------------------------------------------------------------------- CPU fast path

# On CPU, nn.Linear's fp32 GEMM (MKL) is slow at the small matmuls of decoding; oneDNN, with the weights
# prepacked for the batch size, runs them much faster (bench/sampler.py). Set False to compare with the plain
# path (the one used on GPU).
USE_ONEDNN = torch.backends.mkldnn.is_available()


@functools.cache
def _onednn_packs(dtype: torch.dtype) -> bool:
    """Can oneDNN prepack weights of this dtype here? (bf16 needs AVX-512 or AVX-NE-CONVERT.)"""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2, dtype=dtype), 2)
        return True
    except (AttributeError, RuntimeError):
        return False


class PackedLinear:
    """What sibling nn.Linear layers (reading the same input) compute, x @ W_i.T + b_i for each, as one oneDNN
    matmul on [W_1; W_2; ...] prepacked for `batch` rows: a tuple of outputs, or the output of a single layer."""

    def __init__(self, linears: list[nn.Linear], batch: int):
        w = torch.cat([m.weight.detach() for m in linears])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w, batch) if batch > 1 else w.contiguous()
        self.bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
        self.sizes = [m.out_features for m in linears]

    def __call__(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        y = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return y.split(self.sizes, dim=-1) if len(self.sizes) > 1 else y


@contextlib.contextmanager
def fast_linears(model: Transformer, batch: int):
    """While inside, on CPU: the model's linear layers compute as PackedLinear, q|k|v and gate|up fused into
    one matmul each (Attention.qkv, MLP.gate_up; decoding at small batch is per-op overhead and weight
    streaming). USE_ONEDNN False, other devices, or dtypes oneDNN cannot pack here: nothing changes. The packed
    weights are copies, made per call (training changes the weights between calls)."""
    w = model.lm_head.weight
    if not (USE_ONEDNN and w.device.type == "cpu" and _onednn_packs(w.dtype)):
        yield
        return
    swapped = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        swapped += [(a, "qkv", [a.q_proj, a.k_proj, a.v_proj]), (m, "gate_up", [m.gate_proj, m.up_proj]),
                    (a.o_proj, "forward", [a.o_proj]), (m.down_proj, "forward", [m.down_proj])]
    swapped.append((model.lm_head, "forward", [model.lm_head]))
    for module, name, linears in swapped:
        setattr(module, name, PackedLinear(linears, batch))  # an instance attribute: found before the method
    try:
        yield
    finally:
        for module, name, _ in swapped:
            delattr(module, name)


# ----------------------------------------------------------------------------------- the loop

def decode_step(model: Transformer, cache: KVCache, tok: Tensor, pos: Tensor, temperature: float, top_k: int,
                top_p: float, generator: torch.Generator | None, fast: bool, u: Tensor | None) -> tuple[Tensor, Tensor]:
    """One decode step, forward then sample: tok, pos [R] (the last token of each row and the position of the
    next) -> (next token [R], its log-prob [R]). With COMPILE, fast=True compiles it (_compiled_step) with dynamic
    shapes: cache.length is a symbolic int, so one graph serves every step, batch size and cache length. Attention
    reads only the filled slots: on CPU, 15% faster at batch 128 than a static max_len cache under a mask."""
    hidden = model(tok[:, None], pos[:, None], cache=cache, return_hidden=True)
    return sample(model.lm_head(hidden[:, -1]), temperature, top_k, top_p, generator, fast, u)


# Off unless MINIRLVR_COMPILE_DECODE=1. Compiling costs 16 s (warm inductor cache) to 2 min (cold) per process on
# 2 CPU cores and buys 1.1-1.8x per decode step (bench/sampler.py --fast), so a MiniWorld evaluation or a GRPO run
# of this project's length ends later with it than without; long runs and batch-1 chat gain.
COMPILE = os.environ.get("MINIRLVR_COMPILE_DECODE", "") not in ("", "0")
# kernels' switch decides as for every kernel: MINIRLVR_NO_COMPILE=1 forbids it, and the first compile error (not an
# error of the computation) warns and turns compiling off for the rest of the process.
_compiled_step = MaybeCompiled(decode_step, dynamic=True)


CHECK_EVERY = {"cpu": 1}  # decode steps between looks at which rows stopped (a host sync); other devices: 16


def _check_args(model, prompts, max_new_tokens, temperature, top_k, top_p, num_samples) -> None:
    V = model.config.vocab_size
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("generate: prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"generate: prompts[{i}] is empty; a prompt needs at least one token")
        if min(p) < 0 or max(p) >= V:
            raise ValueError(f"generate: prompts[{i}] has a token id outside [0, {V})")
    for name, value, ok, rule in [("max_new_tokens", max_new_tokens, max_new_tokens >= 0, ">= 0"),
                                  ("temperature", temperature, temperature >= 0, ">= 0"),
                                  ("top_k", top_k, top_k >= 0, ">= 0 (0 disables)"),
                                  ("top_p", top_p, 0.0 < top_p <= 1.0, "in (0, 1]"),
                                  ("num_samples", num_samples, num_samples >= 1, ">= 1")]:
        if not ok:
            raise ValueError(f"generate: {name} must be {rule}, got {value}")


@torch.inference_mode()
def _generate(model: Transformer, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, seed, num_samples,
              fast):
    device = model.lm_head.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    n, G = len(prompts), num_samples
    R = n * G
    batch = build_batch(prompts, device=device)
    cache = KVCache.for_model(model, n, batch.prompt_len + max_new_tokens)
    check_every = CHECK_EVERY.get(device.type, 16)

    stop = torch.tensor(sorted(set([stop_ids] if isinstance(stop_ids, int) else stop_ids or ())), dtype=torch.long,
                        device=device)
    tokens = torch.zeros(R, max_new_tokens, dtype=torch.long, device=device)
    logprobs = torch.zeros(R, max_new_tokens, dtype=torch.float32, device=device)
    lengths = torch.full((R,), max_new_tokens, dtype=torch.long, device=device)
    live = torch.arange(R, device=device)  # original row of each cache row still being decoded
    done = torch.zeros(R, dtype=torch.bool, device=device)  # per cache row: has it emitted a stop token?
    compiled = fast and COMPILE and want_compile(None)
    step = functools.partial(_compiled_step, None) if compiled else decode_step
    step_generator = None if fast else generator  # fast: the step takes u, drawn below (a compiled step can't draw)
    with contextlib.nullcontext() if compiled else fast_linears(model, R):  # inductor packs its own
        # Prefill each distinct prompt once, then copy its cache to the G rows of its group.
        hidden = model(batch.ids, batch.positions, batch.key_mask, cache=cache, return_hidden=True)
        logits = model.lm_head(hidden[:, -1])  # [n, V]
        if G > 1:
            group = torch.arange(n, device=device).repeat_interleave(G)
            cache.reorder(group)
            logits = logits.index_select(0, group)
        next_pos = batch.positions[:, -1].repeat_interleave(G) + 1  # [R] position of each row's next token
        tok, lp = sample(logits, temperature, top_k, top_p, generator, fast)
        for t in range(max_new_tokens):
            tokens[live, t], logprobs[live, t] = tok, lp  # finished rows write too; `lengths` masks that out
            newly = torch.isin(tok, stop) & ~done
            lengths[live] = torch.where(newly, t + 1, lengths[live])
            done |= newly
            if t + 1 == max_new_tokens:
                break
            if (t + 1) % check_every == 0:
                n_done = int(done.sum())
                if n_done == live.numel():
                    break
                # drop finished rows when half the batch is; the compiled step keeps 2+ (1 would be another graph)
                if 2 * n_done >= live.numel() and n_done > 0 and live.numel() - n_done >= (2 if fast else 1):
                    keep = (~done).nonzero().squeeze(-1)
                    cache.reorder(keep)
                    live, done, tok, next_pos = live[keep], done[keep], tok[keep], next_pos[keep]
            # fast: the uniform numbers of sample(fast=True) are drawn here, as a compiled step takes no generator
            u = torch.rand(len(tok), 1, generator=generator, device=device) if fast and temperature else None
            tok, lp = step(model, cache, tok, next_pos, temperature, top_k, top_p, step_generator, fast, u)
            next_pos = next_pos + 1

    T = int(lengths.max()) if R else 0
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]
    return tokens[:, :T].masked_fill(~mask, 0), logprobs[:, :T].masked_fill(~mask, 0.0), mask, lengths


def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids=None, seed: int = 0, num_samples: int = 1,
             fast: bool = False) -> Generation:
    """Continue each prompt (a list of token ids; ragged is fine) num_samples times. See the module docstring.

    temperature 0 is greedy (top_k/top_p then do nothing). stop_ids: token ids that end a row (the stop token
    is included in its output). Returns a Generation with R = len(prompts) * num_samples rows, prompt-major.
    fast: speed paths that sample the same distributions with other rounding and another random stream (see
    sample), so the output differs from fast=False's, reproducibly.
    """
    _check_args(model, prompts, max_new_tokens, temperature, top_k, top_p, num_samples)
    tokens, logprobs, mask, lengths = _generate(model, [list(map(int, p)) for p in prompts], max_new_tokens,
                                                float(temperature), int(top_k), float(top_p), stop_ids, seed,
                                                num_samples, fast)
    # Clone outside inference mode: inference tensors cannot take part in autograd (e.g. `loss * out.mask`).
    tokens, logprobs, mask = tokens.clone(), logprobs.clone(), mask.clone()
    ends = lengths.tolist()
    return Generation(tokens=[r[:n] for r, n in zip(tokens.tolist(), ends)],
                      logprobs=[r[:n] for r, n in zip(logprobs.tolist(), ends)],
                      tokens_tensor=tokens, logprobs_tensor=logprobs, mask=mask,
                      prompt_index=[i for i in range(len(prompts)) for _ in range(num_samples)])
