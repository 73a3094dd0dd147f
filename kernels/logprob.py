"""Per-token log-probs (and entropy) straight from hidden states, chunk by chunk.

RL needs, for every generated token, only log pi(token) and sometimes the entropy of pi. The naive route
    logp = log_softmax(hidden @ W.T / T).gather(-1, targets)
materialises several [N, V] float tensors (logits, log-softmax, and their gradients): with N=4096 tokens and
SmolLM2's V=49152 each is 805 MB. Here the N rows are processed `chunk_size` at a time, so only a [chunk, V]
slice of logits exists at once, and backward recomputes each chunk's logits from (hidden, W) instead of
keeping them: one extra matmul buys memory proportional to chunk_size instead of N. The per-chunk math
(log-sum-exp, gather, entropy, the softmax gradient) is a plain function that torch.compile fuses into one
kernel each way (C++ loops on CPU, Triton on GPU); it runs eagerly when compile is off or unavailable.

Gradients, with z = h @ W.T / T, p = softmax(z), t the target and H = -sum_v p_v log p_v:
    d logp_t / dz = onehot(t) - p,    d H / dz = -p * (log p + H)
"""

import torch
from torch.autograd.function import once_differentiable

from kernels import MaybeCompiled


def _chunk_forward(logits: torch.Tensor, targets: torch.Tensor):
    """logits [C,V] (fp32/fp64), targets [C] long -> logp [C], entropy [C], lse [C]."""
    m = logits.amax(-1, keepdim=True)
    shifted = logits - m  # <= 0: exp cannot overflow
    e = shifted.exp()
    s = e.sum(-1)  # >= 1
    lse = m.squeeze(1) + s.log()
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    # H = -sum p log p with log p = shifted - log s, i.e. log s - sum(e * shifted) / s:
    # two non-negative terms, so nothing cancels even for very peaked rows
    entropy = s.log() - (e * shifted).sum(-1) / s
    return logp, entropy, lse


def _softmax_grad_(logits: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor,
                   g_logp: torch.Tensor, g_ent: torch.Tensor) -> None:
    """Overwrite a chunk's logits [C,V] with -g_logp * p - g_ent * p * (log p + H).

    That is dL/dz except for the +g_logp at each row's target, which the caller
    scatters in. Purely elementwise and in place, so backward holds a single
    [C,V] buffer: compiled, Inductor turns it into one loop writing straight
    back into the buffer; eager needs one more buffer for p.
    """
    log_p = logits.sub_(lse[:, None])
    p = log_p.exp()
    log_p.add_(entropy[:, None]).mul_(g_ent[:, None]).add_(g_logp[:, None]).mul_(p).neg_()


# The number of rows varies (the last chunk, the number of non-ignored tokens),
# the vocabulary does not: rows are marked dynamic, everything else is static,
# so one forward and one backward graph serve a whole run (a one-row chunk
# runs eagerly rather than compiling a graph of its own).
_forward = MaybeCompiled(_chunk_forward, dynamic_dims=(0,), dynamic=False)
_softmax_grad = MaybeCompiled(_softmax_grad_, dynamic_dims=(0,), dynamic=False)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the lm_head products: autocast's when it is on (as nn.Linear would), else the inputs'."""
    if hidden.dtype == torch.float64:
        return torch.float64
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _matmul_weight(weight: torch.Tensor, compute_dtype: torch.dtype, acc: torch.dtype) -> torch.Tensor:
    """The lm_head weight as the logits matmul takes it, cast once per call. On CUDA a low-precision compute
    dtype stays low (tensor cores); elsewhere the values are rounded to it and held in fp32, which gives the
    same products and fp32 sums (CPUs have no fast bf16 x bf16 -> fp32 matmul in torch)."""
    if weight.is_cuda and compute_dtype != acc:
        return weight.to(compute_dtype)
    return weight.to(compute_dtype).to(acc)  # no copy when the weight is already fp32 and so is the compute


def _logits(h: torch.Tensor, w: torch.Tensor, inv_temp: float, compute_dtype: torch.dtype,
            out: torch.Tensor) -> torch.Tensor:
    """h [C,H] @ w.T / temperature -> [C,V] in fp32 (out's dtype): products in compute_dtype, sums in fp32."""
    if w.dtype != out.dtype:  # CUDA bf16/fp16: tensor-core matmul accumulating into an fp32 result
        return torch.mm(h.to(compute_dtype), w.T, out_dtype=out.dtype).mul_(inv_temp)
    return torch.mm(h.to(compute_dtype).to(out.dtype) * inv_temp, w.T, out=out)


class _TokenLogprobs(torch.autograd.Function):
    """hidden [N,H], weight [V,H], targets [N] (all valid) -> logp [N], entropy [N].

    One [chunk, V] buffer is allocated per pass and reused by every chunk:
    besides capping memory, this avoids paying the kernel's page faults on a
    fresh 200 MB allocation for each chunk, which on CPU costs as much as the
    softmax itself.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp: float, chunk_size: int, compute_dtype, compiled):
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        w = _matmul_weight(weight, compute_dtype, acc)
        n = hidden.shape[0]
        logp, entropy, lse = (torch.empty(n, dtype=acc, device=hidden.device) for _ in range(3))
        buf = torch.empty(min(chunk_size, n), w.shape[0], dtype=acc, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes here are chosen, not autocast's
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                logits = _logits(hidden[s:e], w, inv_temp, compute_dtype, buf[: e - s])
                logp[s:e], entropy[s:e], lse[s:e] = _forward(compiled, logits, targets[s:e])
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.inv_temp, ctx.chunk_size, ctx.compute_dtype, ctx.compiled = inv_temp, chunk_size, compute_dtype, compiled
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc, n, chunk_size = lse.dtype, hidden.shape[0], ctx.chunk_size
        w = _matmul_weight(weight, ctx.compute_dtype, acc)
        w_acc = w.to(acc)  # the gradient matmuls run in fp32 (TF32 on CUDA)
        g_logp, g_ent = g_logp.to(acc).contiguous(), g_ent.to(acc).contiguous()
        grad_h = torch.empty(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        buf = torch.empty(min(chunk_size, n), w.shape[0], dtype=acc, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                grad_z = _logits(hidden[s:e], w, ctx.inv_temp, ctx.compute_dtype, buf[: e - s])  # recompute ...
                _softmax_grad(ctx.compiled, grad_z, lse[s:e], entropy[s:e], g_logp[s:e], g_ent[s:e])
                grad_z.scatter_add_(1, targets[s:e, None], g_logp[s:e, None])  # ... dL/dz in place
                if need_h:
                    torch.mm(grad_z, w_acc, out=grad_h[s:e])
                if need_w:  # accumulated in fp32 across chunks
                    grad_w.addmm_(grad_z.T, hidden[s:e].to(ctx.compute_dtype).to(acc) * ctx.inv_temp)
        return (grad_h.mul_(ctx.inv_temp).to(hidden.dtype) if need_h else None,
                grad_w.to(weight.dtype) if need_w else None, None, None, None, None, None)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False, chunk_size: int = 1024, ignore_index: int = -100,
                   compiled: bool | None = None):
    """Log-prob of each target token under softmax(hidden @ weight.T / temperature).

    hidden [N,H] any float dtype, weight [V,H] (lm_head, no bias), targets [N] long.
    Returns logp [N] float32 (float64 for float64 inputs); with return_entropy
    also entropy [N] of the full distribution. Positions where
    targets == ignore_index get 0.0 for both and zero gradient; they are
    dropped before any matmul, so prompt and padding tokens cost nothing.
    The logits matmul multiplies in the inputs' dtype, or autocast's when it is
    on (bf16 products on tensor cores), and sums in fp32; the softmax, all
    reductions and the gradient matmuls run in fp32 (TF32 on CUDA). On CPU the
    low-precision values are upcast (one fp32 copy of the weight per call).
    Memory beyond the inputs: compiled, one [chunk_size, V] fp32 buffer plus
    the fp32 grad of W; eager, about four such buffers in forward.
    compiled: None = torch.compile if it works here, True = must compile,
    False = eager (also forced by MINIRLVR_NO_COMPILE=1).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(f"token_logprobs: expected hidden [N,H], weight [V,H], targets [N]; got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1] or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"token_logprobs: shape mismatch hidden {tuple(hidden.shape)}, "
                         f"weight {tuple(weight.shape)}, targets {tuple(targets.shape)}")
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise ValueError("token_logprobs: hidden and weight must be floating point")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"token_logprobs: targets must be integer, got {targets.dtype}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"token_logprobs: need temperature > 0 and chunk_size >= 1, got {temperature}, {chunk_size}")

    targets = targets.long()
    valid = targets != ignore_index
    rows = None if bool(valid.all()) else valid.nonzero().squeeze(1)
    h, t = (hidden, targets) if rows is None else (hidden.index_select(0, rows), targets.index_select(0, rows))
    if bool(((t < 0) | (t >= weight.shape[0])).any()):
        raise ValueError(f"token_logprobs: targets must be in [0, {weight.shape[0]}) "
                         f"or {ignore_index}, got range [{int(t.min())}, {int(t.max())}]")

    logp, entropy = _TokenLogprobs.apply(h, weight, t, 1.0 / temperature, chunk_size,
                                         _compute_dtype(hidden, weight), compiled)
    if rows is not None:  # scatter back; ignored positions stay 0 and get no gradient
        logp = logp.new_zeros(targets.shape[0]).index_copy(0, rows, logp)
        entropy = entropy.new_zeros(targets.shape[0]).index_copy(0, rows, entropy)
    return (logp, entropy) if return_entropy else logp
