"""Data parallelism for `torchrun --nproc_per_node N train.py ...` (gloo on CPU, nccl on GPU).

Every rank holds the full model and a 1/N slice of the global batch. After backward, gradients are summed
across ranks with one all-reduce per parameter (what DDP does in buckets, written out so it can be read).
Each rank scales its loss by (its share of the global normaliser), so the summed gradient equals the
gradient of the global-batch loss: the update is the same as one process with the same global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> torch.device | None:
    """This process's device under torchrun (WORLD_SIZE set), after starting the process group; else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (identity in a single process). x must live on the training device (NCCL
    reduces GPU tensors only): derive it from the batch's tensors, never torch.tensor(a Python number)."""
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x [n, ...] (the same n on all ranks) concatenated in rank order; x in a single process."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def sync_grads(params) -> None:
    """Sum gradients over ranks, in place. Losses are already scaled to the global normaliser."""
    for p in params if world_size() > 1 else ():
        if p.requires_grad:
            if p.grad is None:  # every rank must join every all-reduce, even with nothing to add
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def shard(n: int) -> slice:
    """This rank's contiguous slice of n items (n must divide evenly: a global batch is split exactly)."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"global batch of {n} does not split evenly over {w} processes")
    return slice(r * n // w, (r + 1) * n // w)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_params(model: torch.nn.Module) -> None:
    for p in model.parameters() if world_size() > 1 else ():
        dist.broadcast(p.data, 0)


def finish() -> None:
    """Tear the process group down together: without the barrier a rank that finishes first (while rank 0
    still writes the checkpoint) can destroy its gloo threads mid-flight and abort the process at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
