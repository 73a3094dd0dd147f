"""The GRPO family (GRPO, Dr.GRPO, RLOO, DAPO's clip-higher and zero-variance filter, CISPO, GSPO): one loop.

One step:
    1. rollout    sample G responses for each of P prompts and score them (rollout.py, rewards.py)
    2. logprobs   log-probs of the sampled tokens under the policy before the update ("old") and under the
                  frozen reference, with the full softmax at the sampling temperature (no grad)
    3. advantage  group-relative: algos.ADVANTAGES[cfg.advantage] of each group's G rewards
    4. update     mu epochs x minibatches of cfg.loss (kernels.POLICY_LOSSES) + kl_coef * KL(pi || ref);
                  each minibatch is one optimiser step, accumulated over micro-batches of micro_batch_size
                  rows, which bounds memory without changing the update
The config, the run's setup and each step's logging are rl.py's (PPO, ppo.py, is this loop with a critic).
Everything a step needs is a pure function of (seed, step), so --resume is exact. Under torchrun each rank
samples its share of the prompts and every loss is scaled to the global batch, so N processes make the update
one process would make.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import torch

from kernels import LossConfig, loss_units, policy_loss
from minirlvr import algos, dist
from minirlvr.model import Transformer
from minirlvr.optim import apply_update, autocast, check_finite, lr_at, set_lr
from minirlvr.rl import GRPOConfig, finish_step, loss_config, start_run, step_rollout
from minirlvr.rollout import response_logprobs
from minirlvr.run import StopSignal
from minirlvr.sampler import Batch

Tensor = torch.Tensor

def train_grpo(cfg: GRPOConfig) -> Path:
    run = start_run(cfg, "grpo")
    policy, ref, opt, device = run.policy, run.ref, run.opt, run.device
    lcfg = loss_config(cfg, 0.0 if cfg.kl_in_reward else cfg.kl_coef)  # the KL: in the loss or in the reward
    # One on-policy update needs no separate "old" forward: old = logp.detach() of the update's own forward.
    on_policy = not cfg.kl_in_reward and cfg.mu == 1 and cfg.minibatches == 1

    # Ctrl-C/SIGTERM: the step finishes, a checkpoint is saved, train.py prints how to continue (StopSignal)
    with StopSignal() as signals, closing(run.log), closing(run.samples):
        for step in range(run.start, cfg.steps):
            t0 = time.time()
            # 1. rollout: G responses per prompt, scored
            ro = step_rollout(run, cfg, step)
            batch, mask = ro.batch, ro.batch.response_mask
            t_gen = time.time() - t0

            # 2. old and reference log-probs, no grad
            with torch.no_grad(), autocast(device, cfg.bf16):
                old_logp = torch.zeros_like(mask) if on_policy else frozen_logprobs(policy, batch, cfg)
                ref_logp = frozen_logprobs(ref, batch, cfg) if ref is not None else None
            t_lp = time.time() - t0 - t_gen

            # 3. advantages: each reward against its group's
            rewards = ro.rewards
            if cfg.kl_in_reward and ref_logp is not None:
                rewards = rewards - cfg.kl_coef * ((old_logp - ref_logp) * mask).sum(1)
            advantages = algos.ADVANTAGES[cfg.advantage](rewards, cfg.group_size)
            loss_mask = mask
            if cfg.filter_zero_variance:
                loss_mask = mask * (~algos.zero_variance_groups(ro.rewards, cfg.group_size)).float()[:, None]

            # 4. update: mu epochs x minibatches, one optimiser step each
            policy.train()
            set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac))
            stats = []
            for epoch in range(cfg.mu):
                for rows in global_minibatches(len(rewards), cfg.minibatches, cfg.seed * 7919 + step):
                    stats.append(policy_step(policy, opt, batch, rows, old_logp, ref_logp, advantages, loss_mask, cfg,
                                             lcfg, step, on_policy))
            t_up = time.time() - t0 - t_gen - t_lp
            finish_step(run, cfg, step, ro, old_logp, ref_logp, stats, (time.time() - t0, t_gen, t_lp, t_up), "grpo",
                        signals.requested(device))
    return Path(cfg.out) / "model"


def frozen_logprobs(model: Transformer, batch: Batch, cfg: GRPOConfig) -> Tensor:
    return by_micro_batch(lambda rows: response_logprobs(model, batch, cfg.temperature, rows), batch, cfg)


def by_micro_batch(fn, batch: Batch, cfg: GRPOConfig) -> Tensor:
    """fn(rows) [r, ...] over micro-batches of the batch's rows, concatenated: a no-grad pass (a model that is
    not being trained) within the memory budget."""
    return torch.cat([fn(rows) for rows in micro_batches(torch.arange(len(batch.ids), device=batch.ids.device),
                                                         cfg.micro_batch_size)])


def policy_step(policy: Transformer, opt, batch: Batch, rows: Tensor, old_logp: Tensor, ref_logp: Tensor | None,
                advantages: Tensor, mask: Tensor, cfg: GRPOConfig, lcfg: LossConfig, step: int,
                on_policy: bool) -> dict[str, float]:
    """One optimiser step on the minibatch `rows`, its gradient accumulated over micro-batches.

    Every micro-batch (and every rank) divides its loss by the unit count of the whole global minibatch,
    so their gradients add up to the gradient of the minibatch's loss. On-policy, old_logp is filled here.
    """
    rows = rows.to(mask.device)
    units = dist.all_sum(loss_units(mask[rows], cfg.agg))  # every rank joins, even one without rows
    tokens = mask[rows].sum().clamp(min=1)
    totals: dict[str, float] = {}
    for micro in micro_batches(rows, cfg.micro_batch_size):
        with autocast(policy.lm_head.weight.device, cfg.bf16):
            logp, entropy = response_logprobs(policy, batch, cfg.temperature, micro, with_entropy=True)
            if on_policy:
                old_logp[micro] = logp.detach()
            loss, stats = policy_loss(logp, old_logp[micro], None if ref_logp is None else ref_logp[micro],
                                      advantages[micro], mask[micro], lcfg, entropy=entropy.detach(), units=units)
        check_finite(loss, step)
        loss.backward()
        share = float(mask[micro].sum() / tokens)  # token statistics: weighted by the micro-batch's tokens
        for k, v in {**stats, "loss": loss.detach()}.items():
            totals[k] = totals.get(k, 0.0) + float(v) * (1.0 if k in ("loss", "pg_loss", "kl_loss") else share)
    totals["grad_norm"] = float(apply_update(policy, opt, cfg.grad_clip))
    return totals


def micro_batches(rows: Tensor, size: int) -> list[Tensor]:
    """rows split into pieces of at most `size` (0: one piece; no rows: none)."""
    if len(rows) == 0:
        return []
    return [rows] if size <= 0 or len(rows) <= size else list(rows.split(size))


def global_minibatches(local_rows: int, n: int, seed: int) -> list[Tensor]:
    """This rank's rows of each of the n minibatches of a global shuffle of all ranks' rows.

    Every rank draws the same permutation of the global batch, so minibatch k is the same set of rows
    whether the batch lives in one process or is split over several: the updates are identical.
    """
    if n == 1:  # one minibatch: every row, in order
        return [torch.arange(local_rows)]
    world, rank = dist.world_size(), dist.rank()
    perm = torch.randperm(local_rows * world, generator=torch.Generator().manual_seed(seed))
    lo = rank * local_rows
    return [mb[(mb >= lo) & (mb < lo + local_rows)] - lo for mb in perm.chunk(n)]
