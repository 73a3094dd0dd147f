"""The GRPO family (GRPO, Dr.GRPO, RLOO, DAPO's clip-higher and zero-variance filter, CISPO, GSPO): one loop.

One step:
    1. rollout    sample G responses for each of P prompts and score them (rollout.py, rewards.py)
    2. logprobs   log-probs of the sampled tokens under the policy before the update ("old") and under the
                  frozen reference, with the full softmax at the sampling temperature (no grad)
    3. advantage  group-relative: algos.ADVANTAGES[cfg.advantage] of each group's G rewards
    4. update     mu epochs x minibatches of cfg.loss (kernels.POLICY_LOSSES) + kl_coef * KL(pi || ref);
                  each minibatch is one optimiser step, accumulated over micro-batches of micro_batch_size
                  rows, which bounds memory without changing the update
Around the loop, and shared with PPO's (ppo.py: this loop with a critic): the config, validated before anything
loads; the run's setup (models, optimiser, prompts, logs); each step's prompts and rollout; and each step's end
(its metrics row, a few of its rollouts, the no-signal warning and the checkpoint).
Everything a step needs is a pure function of (seed, step, rank), so --resume is exact. Under torchrun each rank
samples its share of the prompts and every loss is scaled to the global batch, so N processes make the update
one process would make.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kernels import AGGREGATORS, KL_ESTIMATORS, POLICY_LOSSES, LossConfig, loss_units, policy_loss
from minirlvr import algos, dist
from minirlvr.checkpoint import restore_training, save_checkpoint
from minirlvr.config import ConfigError, check
from minirlvr.data import prompt_of, read_many, record_kind, row_batch
from minirlvr.model import Transformer
from minirlvr.optim import apply_update, autocast, check_finite, lr_at, make_adamw, set_lr
from minirlvr.rewards import gold_answer, load_reward
from minirlvr.rollout import Rollout, response_logprobs, rollout
from minirlvr.run import MetricsLog, Progress, StopSignal, after_step, check_report_to, run_log, start_training
from minirlvr.sampler import Batch
from minirlvr.tokenizer import Tokenizer
from minirlvr.verifier import MATH_MODES, verify_math

Tensor = torch.Tensor


@dataclass
class GRPOConfig:
    out: str = "runs/grpo"         # run folder: model/, state/, metrics.jsonl, samples.jsonl, config.json
    init: str = ""                 # HF model dir (with tokenizer): the starting policy
    ref: str = ""                  # frozen reference policy; empty: same as init
    data: list[str] = field(default_factory=list)  # prompt JSONL (MiniWorld tasks, GSM8K, requests)
    system: str = ""               # optional system prompt
    reward: str = ""               # '' (by record: math, code, request) or 'package.module:function'
    answer_mode: str = "strict"    # how math answers are read: strict ('#### N', \boxed{N}) | flexible | math_verify
    reward_workers: int = 8        # responses scored at once (code rewards: sandbox processes side by side)
    format_reward: float = 0.0     # weight of the format reward
    steps: int = 50                # optimiser rounds of rollout + update
    prompts_per_step: int = 16     # global, split over processes
    group_size: int = 8            # G responses per prompt
    max_new_tokens: int = 96       # response budget; a response cut here counts as truncated
    temperature: float = 1.0       # sampling temperature (log-probs are scored at it too)
    top_k: int = 0                 # 0: no top-k truncation
    top_p: float = 1.0             # 1.0: no nucleus truncation
    lr: float = 5e-5               # peak learning rate (AdamW)
    min_lr_frac: float = 1.0       # final lr as a share of lr (cosine); 1.0: constant lr after warmup
    warmup: int = 0                # linear warmup steps
    weight_decay: float = 0.0      # AdamW weight decay (matrices only)
    grad_clip: float = 1.0         # max gradient norm; 0: no clipping
    mu: int = 1                    # inner epochs over each rollout batch
    minibatches: int = 1           # optimiser steps per epoch
    micro_batch_size: int = 0      # rows per forward/backward (gradient accumulation); 0: a whole minibatch
    loss: str = "ppo_clip"         # a key of kernels.POLICY_LOSSES: ppo_clip | cispo | gspo
    clip_low: float = 0.2          # ratio clip below 1 - clip_low
    clip_high: float = 0.2         # ratio clip above 1 + clip_high; DAPO's clip-higher uses 0.28
    kl_coef: float = 0.05          # beta of the KL(pi || ref) term; 0: no reference model
    kl_estimator: str = "k3"       # a key of kernels.KL_ESTIMATORS, the in-loss estimator
    kl_in_reward: bool = False     # True: subtract kl_coef * sum_t k1_t from the reward instead
    advantage: str = "grpo"        # a key of algos.ADVANTAGES
    agg: str = "token_mean"        # a key of kernels.AGGREGATORS
    filter_zero_variance: bool = False  # drop groups whose rewards are all equal (no signal) from the loss
    stop_if_no_signal: int = 0     # stop after N steps in a row in which no group's rewards differ; 0: warn only
    log_samples: int = 4           # rollouts per step written to OUT/samples.jsonl (first response of N prompts)
    bf16: bool = False             # bf16 autocast (CPU and CUDA)
    fast: bool = False             # speed (issue 16): same math, other rounding and random stream (rollout.py)
    seed: int = 0                  # seeds data order, sampling and init
    save_every: int = -1           # checkpoint every N steps and after the last; -1: every steps/10; 0: last only
    device: str = "auto"           # auto (cuda when available) | cpu | cuda | cuda:N
    resume: str = ""               # OUT/model of an earlier run: continue it with its saved config
    overwrite: bool = False        # replace a run already in out (else refused)
    report_to: str = ""            # 'tensorboard': also log to OUT/tensorboard (pip install tensorboard)
    progress: bool = True          # one-line progress display
    min_group_size = 2             # not a field: a group baseline needs two samples (PPO: 1)

    def validate(self):
        """Every bad value fails here, naming its key, before any model is loaded."""
        tables = dict(advantage=algos.ADVANTAGES, loss=POLICY_LOSSES, agg=AGGREGATORS, kl_estimator=KL_ESTIMATORS,
                      answer_mode=MATH_MODES)
        at_least_1 = ("prompts_per_step", "mu", "minibatches", "steps", "max_new_tokens")
        at_least_0 = ("micro_batch_size", "top_k", "lr", "warmup", "weight_decay", "grad_clip", "kl_coef",
                      "format_reward", "reward_workers", "stop_if_no_signal", "log_samples", "seed")
        v = lambda k: getattr(self, k)
        check([(k, v(k), v(k) in t, f"must be one of {sorted(t)}") for k, t in tables.items()]
              + [(k, v(k), v(k) >= 1, "must be >= 1") for k in at_least_1]
              + [(k, v(k), v(k) >= 0, "must be >= 0") for k in at_least_0] + [
                ("init", self.init, self.init or self.resume, "(an HF model directory) is required"),
                ("data", self.data, self.data or self.resume, "must list at least one prompt JSONL file"),
                ("group_size", self.group_size, self.group_size >= self.min_group_size,
                 f"must be >= {self.min_group_size}"),
                ("minibatches", self.minibatches, self.minibatches <= self.prompts_per_step * self.group_size,
                 "must not exceed the rows"),
                ("temperature", self.temperature, self.temperature > 0,
                 "must be > 0: RL samples, and scores log-probs, at it"),
                ("top_p", self.top_p, 0 < self.top_p <= 1, "must be in (0, 1]"),
                ("min_lr_frac", self.min_lr_frac, 0 <= self.min_lr_frac <= 1, "must be in [0, 1]"),
                ("clip_low", self.clip_low, 0 <= self.clip_low < 1, "must be in [0, 1)"),
                ("clip_high", self.clip_high, self.clip_high >= 0, "must be >= 0"),
                ("save_every", self.save_every, self.save_every >= -1, "must be >= -1 (-1: every tenth of the steps)")])
        check_report_to(self.report_to)
        try:
            load_reward(self.reward)
        except ValueError as e:
            raise ConfigError(f"config: key 'reward': {e}") from None
        if self.top_k > 0 or self.top_p < 1:
            warnings.warn("config: top_k/top_p sample from a truncated distribution but the loss scores the full "
                          "softmax, so the update is off-policy (importance ratios != 1 at the first step)")


# ------------------------------------------------------------------------------------- the loop

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


# ------------------------------------------------------------------------------------- setup

@dataclass
class Run:
    """What a training run holds besides its config; `state` is the resumed checkpoint's (or None)."""
    device: torch.device
    tok: Tokenizer
    policy: Transformer
    ref: Transformer | None
    opt: torch.optim.Optimizer
    records: list[dict]
    state: dict | None
    start: int
    log: MetricsLog
    samples: MetricsLog            # OUT/samples.jsonl: a few rollouts per step, to see what is rewarded
    bar: Progress
    no_signal_steps: int = 0       # steps in a row in which no group's rewards differed


def start_run(cfg: GRPOConfig, stage: str) -> Run:
    """Models, optimiser and data; on --resume the checkpoint's config, optimiser, RNG and step."""
    device, state = start_training(cfg, stage)
    if cfg.prompts_per_step % dist.world_size():
        raise ConfigError(f"config: 'prompts_per_step' {cfg.prompts_per_step} must divide by the processes")
    records = read_many(cfg.data, need="prompt" if cfg.reward else "rl")  # all checked before a model loads
    for r in records:
        r["_answer_mode"] = cfg.answer_mode   # read by rewards.task_reward
    src = cfg.resume or cfg.init
    tok, policy = Tokenizer.from_pretrained(src), Transformer.from_pretrained(src, device=device)
    ref = Transformer.from_pretrained(cfg.ref or cfg.init, device=device).eval().requires_grad_(False) \
        if cfg.kl_coef > 0 else None
    opt = make_adamw(policy.parameters(), cfg.lr, cfg.weight_decay)
    start = restore_training(state, opt)
    log, bar = run_log(cfg, start, every=1)
    samples = MetricsLog(Path(cfg.out) / "samples.jsonl", start if cfg.resume else None,
                         enabled=dist.rank() == 0 and cfg.log_samples > 0)
    return Run(device, tok, policy, ref, opt, records, state, start, log, samples, bar)


def step_records(run: Run, cfg: GRPOConfig, step: int) -> list[dict]:
    """This rank's prompt records of the step, a pure function of (seed, step, rank)."""
    idx = row_batch(len(run.records), step, cfg.prompts_per_step, cfg.seed)[dist.shard(cfg.prompts_per_step)]
    return [run.records[i] for i in idx.tolist()]


def step_rollout(run: Run, cfg: GRPOConfig, step: int) -> Rollout:
    """This rank's prompts of the step, sampled with a seed that depends only on (seed, step, rank)."""
    run.policy.eval()
    return rollout(run.policy, run.tok, step_records(run, cfg, step), cfg,
                   seed=cfg.seed * 1_000_003 + step * 101 + dist.rank())


def loss_config(cfg: GRPOConfig, kl_coef: float) -> LossConfig:
    # Dr.GRPO's constant: the generation budget, not this batch's padded width (which varies by step and rank)
    return LossConfig(cfg.loss, cfg.clip_low, cfg.clip_high, kl_coef, cfg.kl_estimator, cfg.agg,
                      float(cfg.max_new_tokens))


# ------------------------------------------------------------------------------------- a step's end

def finish_step(run: Run, cfg: GRPOConfig, step: int, ro: Rollout, old_logp: Tensor, ref_logp: Tensor | None,
                stats: list[dict], times: tuple[float, float, float, float], stage: str, stop: str | None,
                **critic) -> None:
    """Log the step (rollout numbers over all ranks, update statistics averaged over optimiser steps) and a few
    of its rollouts; warn when there is nothing to learn; save a checkpoint every save_every steps, after the
    last, and before stopping early (`stop`: a signal; or stop_if_no_signal steps in a row without signal)."""
    mask, R, G = ro.batch.response_mask, len(ro.rewards) * dist.world_size(), cfg.group_size
    records = [r for r in step_records(run, cfg, step) for _ in range(G)]  # rollout rows are prompt-major
    truncated = truncated_rows(ro.batch, run.tok.stop_ids, cfg.max_new_tokens)
    flexible = ro.correct.clone()  # math answers read flexibly (the last number), beside answer_mode
    for i, rec in enumerate(records):
        if record_kind(rec) == "math":
            flexible[i] = verify_math(ro.texts[i], gold_answer(rec), "flexible")
    kl = ((old_logp - ref_logp) * mask).sum() if ref_logp is not None else mask.sum()
    n_tok, reward_sum, correct_sum, kl_sum, flexible_sum, truncated_sum = dist.all_sum(torch.stack(
        [mask.sum(), ro.rewards.float().sum(), ro.correct.float().sum(), kl, flexible.sum(),
         truncated.float().sum()])).tolist()
    everyone = dist.all_gather(ro.rewards)
    dt, t_gen, t_lp, t_up = times
    row = {"step": step, "reward_mean": reward_sum / R, "reward_std": float(everyone.std()) if R > 1 else 0.0,
           "accuracy": correct_sum / R, "accuracy_flexible": flexible_sum / R,
           "kl": kl_sum / n_tok if ref_logp is not None else 0.0, "response_len": n_tok / R,
           "truncated_share": truncated_sum / R}
    if G > 1:  # share of groups whose G rewards are all equal: no signal for a group baseline
        row["zero_variance_share"] = float(algos.zero_variance_groups(everyone, G).float().mean())
    row.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
    row.update(tokens_per_s=n_tok / dt, time_generate=t_gen, time_logprob=t_lp, time_update=t_up, time_s=dt)
    run.log.write(row)
    write_samples(run, cfg, step, ro, records, truncated)
    run.bar.update(step, reward=row["reward_mean"], acc=row["accuracy"], kl=row["kl"])
    code, flags = 130, ""
    if no_signal(run, cfg, step, row, everyone, stage) and stop is None and step + 1 < cfg.steps:
        stop, code, flags = f"stopped: no learning signal in {cfg.stop_if_no_signal} steps in a row", 1, \
            "--stop_if_no_signal 0"
    after_step(cfg, step, lambda: save_checkpoint(Path(cfg.out), run.policy, run.opt, step + 1,
                                                  {"stage": stage, **dataclasses.asdict(cfg)}, run.tok, **critic),
               stop, code, flags)


def write_samples(run: Run, cfg: GRPOConfig, step: int, ro: Rollout, records: list[dict], truncated: Tensor) -> None:
    """OUT/samples.jsonl: the first response to each of the step's first log_samples prompts (this rank's), so a
    user can read what was rewarded, and why not (a wrong answer, an answer format the reward cannot read, a cut)."""
    for i in range(0, min(cfg.log_samples * cfg.group_size, len(records)), cfg.group_size):
        rec = records[i]
        run.samples.write({"step": step, "where": rec.get("_where"), "prompt": prompt_of(rec),
                           "response": ro.texts[i], "reward": float(ro.rewards[i]), "correct": bool(ro.correct[i]),
                           "truncated": bool(truncated[i]),
                           "gold": gold_answer(rec) if record_kind(rec) == "math" else None})


def no_signal(run: Run, cfg: GRPOConfig, step: int, row: dict, everyone: Tensor, stage: str) -> bool:
    """Warn when no reward differs from its baseline's peers (GRPO: within any group; PPO, whose critic is the
    baseline: anywhere in the batch), so the update can only follow the KL term. True when the run should stop."""
    flat = bool((everyone == everyone[0]).all()) if stage == "ppo" else row["zero_variance_share"] == 1.0
    run.no_signal_steps = run.no_signal_steps + 1 if flat else 0
    if flat and dist.rank() == 0:
        what = "all rewards are" if stage == "ppo" else "in every group all rewards are"
        print(f"\nwarning: step {step}: no learning signal: {what} equal (mean {row['reward_mean']:.3g}); "
              f"{row['truncated_share']:.0%} of responses hit max_new_tokens={cfg.max_new_tokens} without a stop "
              f"token; see {Path(cfg.out) / 'samples.jsonl'}", file=sys.stderr, flush=True)
    return bool(cfg.stop_if_no_signal) and run.no_signal_steps >= cfg.stop_if_no_signal


def truncated_rows(batch: Batch, stop_ids: list[int], max_new_tokens: int) -> Tensor:
    """[R] bool: responses cut by the token budget (max_new_tokens long, and not ending in a stop token)."""
    n = batch.response_mask.sum(1).long()
    last = batch.responses.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]
    return (n >= max_new_tokens) & ~torch.isin(last, torch.tensor(stop_ids, device=last.device))
