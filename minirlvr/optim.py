"""Optimiser, learning-rate schedule and the small numerics every training loop shares."""

from __future__ import annotations

import contextlib
import math

import torch


def make_adamw(params, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed, as in GPT-2/nanoGPT)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # foreach=False keeps the update bit-identical across save/resume and across 1 vs N processes.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=False)


def lr_at(step: int, total: int, lr: float, warmup: int, min_lr_frac: float = 0.1) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to lr * min_lr_frac at step `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def apply_update(module: torch.nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> torch.Tensor:
    """Sum gradients over ranks, clip to `grad_clip` (<= 0: no clipping), step, clear. Returns the grad norm."""
    from minirlvr import dist
    dist.sync_grads(module.parameters())
    gnorm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip) if grad_clip > 0 else torch.tensor(0.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return gnorm


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when asked (works on CPU and CUDA); a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"step {step}: loss is {loss.item()} (not finite); stopping. "
                            "The last good checkpoint is kept; lower the learning rate or enable clipping.")


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for the `device` key; one this torch build cannot use is one line, not an assert."""
    from minirlvr.config import ConfigError
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(f"config: 'device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
        raise ConfigError(f"config: 'device' is {name!r} but torch {torch.__version__} is {build}; use cpu or auto")
    if device.type == "cuda":  # fp32 matmuls on TF32 tensor cores (10 mantissa bits, fp32 range and sums)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device
