"""RLVR: the GRPO family (GRPO, Dr.GRPO, RLOO) and PPO, in one loop that reads top to bottom.

One step:
    1. rollout   sample G responses for each of P prompts with the sampler (prompt prefilled once per group)
    2. reward    score each response with the verifier (+ optional format / judge rewards)
    3. logprobs  recompute log-probs of the sampled tokens under the policy (old) and the frozen reference,
                 with the full softmax at the sampling temperature, through kernels.token_logprobs
    4. advantage group-normalised (GRPO family, algos.ADVANTAGES) or GAE over a learned value (PPO)
    5. update    mu epochs x minibatches of the clipped surrogate, kernels.policy_loss, with the KL to the
                 reference either in the loss (k1/k2/k3 estimators) or in the reward
Everything the loop needs per step is a pure function of (seed, step), so --resume is exact.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minirlvr import algos, dist
from minirlvr.config import ConfigError
from minirlvr.checkpoint import load_optimizer, read_state, restore_rng, save_checkpoint
from minirlvr.data import chat_prompt_ids, read_many, row_batch
from minirlvr.metrics import MetricsLog, Progress
from minirlvr.model import Transformer
from minirlvr.optim import apply_update, autocast, check_finite, lr_at, make_adamw, pick_device, set_lr
from minirlvr.rewards import score
from minirlvr.tokenizer import Tokenizer


@dataclass
class RLConfig:
    out: str = "runs/grpo"
    init: str = ""                 # HF model dir (with tokenizer): the starting policy
    ref: str = ""                  # frozen reference policy; empty: same as init
    data: list[str] = field(default_factory=list)  # prompt JSONL (MiniWorld tasks, GSM8K, requests)
    system: str = ""               # optional system prompt
    steps: int = 50
    prompts_per_step: int = 16     # global, split over processes
    group_size: int = 8            # G responses per prompt
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    lr: float = 5e-5
    min_lr_frac: float = 1.0       # 1.0: constant lr after warmup
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mu: int = 1                    # inner epochs over each rollout batch
    minibatches: int = 1           # optimiser steps per epoch
    clip_low: float = 0.2
    clip_high: float = 0.2         # DAPO's clip-higher uses 0.28
    kl_coef: float = 0.05
    kl_estimator: str = "k3"       # in-loss estimator: k1 | k2 | k3
    kl_in_reward: bool = False     # True: subtract kl_coef * sum_t k1_t from the reward instead
    advantage: str = "grpo"        # a key of algos.ADVANTAGES (GRPO family)
    agg: str = "token_mean"        # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    filter_zero_variance: bool = False  # drop groups whose rewards are all equal (no signal) from the loss
    format_reward: float = 0.0     # weight of the format reward
    bf16: bool = False
    seed: int = 0
    save_every: int = 0
    device: str = "auto"
    resume: str = ""
    progress: bool = True
    # PPO only
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    value_clip: float = 0.2
    critic_lr: float = 1e-4

    def validate(self):
        if not self.init and not self.resume:
            raise ConfigError("config: 'init' (an HF model directory) is required")
        if not self.data:
            raise ConfigError("config: 'data' must list at least one prompt JSONL file")
        if self.advantage not in algos.ADVANTAGES:
            raise ConfigError(f"config: 'advantage' must be one of {sorted(algos.ADVANTAGES)}, got {self.advantage!r}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ConfigError(f"config: 'kl_estimator' must be k1, k2 or k3, got {self.kl_estimator!r}")
        if self.group_size < 1 or self.prompts_per_step < 1 or self.mu < 1 or self.minibatches < 1:
            raise ConfigError("config: group_size, prompts_per_step, mu and minibatches must be >= 1")


# ----------------------------------------------------------------------------------------- rollout

@dataclass
class Rollout:
    """A batch of R = P*G responses, left-padded prompts followed by responses: rows of [Lp + Tr] tokens."""
    ids: torch.Tensor        # [R, Lp + Tr]
    key_mask: torch.Tensor   # [R, Lp + Tr] real tokens
    positions: torch.Tensor  # [R, Lp + Tr]
    prompt_len: int          # Lp
    resp: torch.Tensor       # [R, Tr] response tokens
    mask: torch.Tensor       # [R, Tr] float, 1 on response tokens
    rewards: torch.Tensor    # [R]
    correct: torch.Tensor    # [R]
    texts: list[str]


def build_batch(prompts: list[list[int]], prompt_index: list[int], responses: list[list[int]], pad: int):
    """Left-pad prompts to Lp, append right-padded responses: ids, key_mask, positions [R, Lp+Tr], resp, mask."""
    R, Lp = len(responses), max(len(p) for p in prompts)
    Tr = max(1, max(len(r) for r in responses))
    ids = torch.full((R, Lp + Tr), pad, dtype=torch.long)
    key_mask = torch.zeros(R, Lp + Tr, dtype=torch.bool)
    mask = torch.zeros(R, Tr)
    for i, (pi, r) in enumerate(zip(prompt_index, responses)):
        p = prompts[pi]
        ids[i, Lp - len(p):Lp] = torch.tensor(p)
        ids[i, Lp:Lp + len(r)] = torch.tensor(r, dtype=torch.long)
        key_mask[i, Lp - len(p):Lp + len(r)] = True
        mask[i, :len(r)] = 1.0
    positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    return ids, key_mask, positions, Lp, ids[:, Lp:], mask


def sequence_logprobs(model: Transformer, ro: Rollout, temperature: float, rows: slice | torch.Tensor = slice(None),
                      with_entropy: bool = False):
    """log pi(response token | prefix) [r, Tr] (and entropy [r, Tr]) via the chunked kernel.

    Hidden state at slot Lp-1+t predicts response token t, so one slice lines everything up.
    """
    from kernels import token_logprobs
    ids, km, pos, Lp = ro.ids[rows], ro.key_mask[rows], ro.positions[rows], ro.prompt_len
    hidden = model(ids, positions=pos, key_mask=km, return_hidden=True)[:, Lp - 1:-1]
    targets = ro.resp[rows].masked_fill(ro.mask[rows] == 0, -100)
    r, Tr = targets.shape
    out = token_logprobs(hidden.reshape(r * Tr, -1), model.lm_head.weight, targets.reshape(-1),
                         temperature=temperature, return_entropy=with_entropy)
    if with_entropy:
        return out[0].view(r, Tr), out[1].view(r, Tr)
    return out.view(r, Tr)


def rollout(policy: Transformer, tok: Tokenizer, recs: list[dict], cfg: RLConfig, step: int) -> Rollout:
    from minirlvr.sampler import generate
    prompts = [chat_prompt_ids(tok, r, cfg.system or None) for r in recs]
    with torch.no_grad():
        out = generate(policy, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, stop_ids=tok.stop_ids, num_samples=cfg.group_size,
                       seed=cfg.seed * 1_000_003 + step * 101 + dist.rank())
    texts = [tok.decode(t, skip_special_tokens=True) for t in out.tokens]
    scored = [score(recs[pi], text, cfg.format_reward) for pi, text in zip(out.prompt_index, texts)]
    ids, km, pos, Lp, resp, mask = build_batch(prompts, out.prompt_index, out.tokens, tok.pad_token_id or 0)
    dev = next(policy.parameters()).device
    return Rollout(ids.to(dev), km.to(dev), pos.to(dev), Lp, resp.to(dev), mask.to(dev),
                   torch.tensor([s.total for s in scored], device=dev),
                   torch.tensor([float(s.correct) for s in scored], device=dev), texts)


# ----------------------------------------------------------------------------------------- the loop

def _global_norm(agg: str, mask: torch.Tensor) -> tuple[float, float]:
    """(local, global) normaliser of the aggregation, so that per-rank/minibatch losses add up to the global one."""
    local = float(mask.sum()) if agg == "token_mean" else float(mask.shape[0])
    return local, float(dist.all_sum(torch.tensor(local)).item())


def train_rl(cfg: RLConfig, algo: str = "grpo") -> Path:
    from kernels import policy_loss
    rank, world, dev = dist.init()
    device = dev or pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    src = cfg.resume or cfg.init
    tok = Tokenizer.from_pretrained(src)
    policy = Transformer.from_pretrained(src, device=device)
    ref = None
    if cfg.kl_coef > 0:
        ref = Transformer.from_pretrained(cfg.ref or cfg.init or read_state(Path(src))["config"]["init"], device=device).eval()
        ref.requires_grad_(False)
    critic = None
    if algo == "ppo":
        from minirlvr.value import ValueModel
        critic = ValueModel.from_pretrained(Path(src) / "critic" if cfg.resume else src, device=device)
    records = read_many(cfg.data)
    opt = make_adamw(policy.parameters(), cfg.lr, cfg.weight_decay)
    copt = make_adamw(critic.parameters(), cfg.critic_lr, 0.0) if critic is not None else None
    start = 0
    if cfg.resume:
        state = read_state(Path(cfg.resume))
        load_optimizer(opt, Path(cfg.resume) / "optimizer.safetensors", state["param_groups"])
        if copt is not None:
            load_optimizer(copt, Path(cfg.resume) / "critic" / "optimizer.safetensors", state["critic_param_groups"])
        restore_rng(Path(cfg.resume), state)
        start = state["step"]
    log = MetricsLog(Path(cfg.out) / "metrics.jsonl", resume_step=start if cfg.resume else None, enabled=rank == 0)
    bar = Progress(cfg.steps, start, enabled=cfg.progress and rank == 0, every=1)
    adv_fn = algos.ADVANTAGES[cfg.advantage]

    for step in range(start, cfg.steps):
        t0 = time.time()
        idx = row_batch(len(records), step, cfg.prompts_per_step, cfg.seed)[dist.shard(cfg.prompts_per_step)]
        recs = [records[i] for i in idx.tolist()]

        # 1-2. rollout and rewards
        policy.eval()
        ro = rollout(policy, tok, recs, cfg, step)
        t_gen = time.time() - t0

        # 3. old and reference log-probs (no grad), and values for PPO
        t1 = time.time()
        # One on-policy update (mu = 1, one minibatch) needs no separate "old" forward: old = logp.detach().
        on_policy = algo != "ppo" and not cfg.kl_in_reward and cfg.mu == 1 and cfg.minibatches == 1
        with torch.no_grad(), autocast(device, cfg.bf16):
            old_logp = None if on_policy else sequence_logprobs(policy, ro, cfg.temperature)
            ref_logp = sequence_logprobs(ref, ro, cfg.temperature) if ref is not None else None
            old_values = critic(ro.ids, ro.positions, ro.key_mask)[:, ro.prompt_len - 1:-1] if critic is not None else None
        t_lp = time.time() - t1

        # 4. advantages
        rewards = ro.rewards
        loss_kl = cfg.kl_coef
        if algo == "ppo":
            tok_rewards = algos.kl_penalised_rewards(rewards, old_logp, ref_logp, ro.mask, cfg.kl_coef) if ref is not None \
                else algos.kl_penalised_rewards(rewards, old_logp, old_logp, ro.mask, 0.0)
            adv, returns = algos.gae(tok_rewards, old_values, ro.mask, cfg.gamma, cfg.lam)
            adv = algos.whiten(adv, ro.mask)
            loss_kl = 0.0  # PPO carries the KL in the per-token reward
        else:
            if cfg.kl_in_reward and ref_logp is not None:
                rewards = rewards - cfg.kl_coef * ((old_logp - ref_logp) * ro.mask).sum(1)
                loss_kl = 0.0
            adv = adv_fn(rewards, cfg.group_size)
        mask = ro.mask
        if cfg.filter_zero_variance and algo != "ppo":
            mask = mask * (~algos.zero_variance_groups(ro.rewards, cfg.group_size)).float()[:, None]

        # 5. update: mu epochs x minibatches of the clipped surrogate
        t2 = time.time()
        policy.train()
        R = len(rewards)
        minibatches = global_minibatches(R, cfg.minibatches, cfg.seed * 7919 + step)
        set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac))
        stats_acc: dict[str, float] = {}
        n_updates = 0
        for epoch in range(cfg.mu):
            for mb in minibatches:
                if len(mb) == 0:  # this rank holds no row of this global minibatch: contribute zero gradients
                    apply_update(policy, opt, cfg.grad_clip)
                    if critic is not None:
                        apply_update(critic, copt, cfg.grad_clip)
                    continue
                with autocast(device, cfg.bf16):
                    logp, ent = sequence_logprobs(policy, ro, cfg.temperature, mb, with_entropy=True)
                    if on_policy:
                        old_logp = logp.detach()
                    loss, stats = policy_loss(logp, old_logp if on_policy else old_logp[mb],
                                              ref_logp[mb] if ref_logp is not None else None,
                                              adv[mb], mask[mb], clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                              kl_coef=loss_kl, kl_estimator=cfg.kl_estimator, agg=cfg.agg,
                                              entropy=ent.detach(),
                                              # Dr.GRPO's constant: the generation budget, not this batch's
                                              # padded width (which varies by step, and by rank under torchrun)
                                              norm_len=float(cfg.max_new_tokens))
                local, glob = _global_norm(cfg.agg, mask[mb])
                loss = loss * (local / max(glob, 1e-8))  # this slice's share of the global loss
                check_finite(loss, step)
                loss.backward()
                gnorm = apply_update(policy, opt, cfg.grad_clip)
                if critic is not None:
                    vloss = value_loss(critic(ro.ids[mb], ro.positions[mb], ro.key_mask[mb])[:, ro.prompt_len - 1:-1],
                                       old_values[mb], returns[mb], ro.mask[mb], cfg.value_clip) * cfg.vf_coef
                    vloss = vloss * (local / max(glob, 1e-8))
                    check_finite(vloss, step)
                    vloss.backward()
                    apply_update(critic, copt, cfg.grad_clip)
                    stats = {**stats, "value_loss": vloss.detach()}
                for k, v in {**stats, "loss": loss.detach(), "grad_norm": gnorm}.items():
                    stats_acc[k] = stats_acc.get(k, 0.0) + float(v)
                n_updates += 1
        t_up = time.time() - t2

        # logging: global means over all ranks
        n_tok = float(dist.all_sum(ro.mask.sum()).item())
        g = lambda x: float(dist.all_sum(x.float().sum()).item()) / (R * dist.world_size())
        dt = time.time() - t0
        row = {"step": step, "reward_mean": g(ro.rewards), "reward_std": float(ro.rewards.std()) if R > 1 else 0.0,
               "accuracy": g(ro.correct), "kl": float(dist.all_sum(((old_logp - ref_logp) * ro.mask).sum()).item()) / n_tok
               if ref_logp is not None else 0.0, "response_len": n_tok / (R * dist.world_size()),
               **{k: v / n_updates for k, v in stats_acc.items()},
               "tokens_per_s": n_tok / dt, "time_generate": t_gen, "time_logprob": t_lp, "time_update": t_up, "time_s": dt}
        log.write(row)
        bar.update(step, reward=row["reward_mean"], acc=row["accuracy"], kl=row["kl"])
        last = step + 1 == cfg.steps
        if rank == 0 and (last or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
            save_checkpoint(Path(cfg.out), policy, opt, step + 1, {"stage": algo, **dataclasses.asdict(cfg)}, tok,
                            critic=critic, critic_opt=copt)
    return Path(cfg.out) / "model"


def global_minibatches(local_rows: int, n: int, seed: int) -> list[torch.Tensor]:
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


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """Clipped value loss (PPO2): 0.5 * max((V - R)^2, (V_clipped - R)^2), masked token mean. [R, T] -> scalar."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    return 0.5 * algos.masked_mean(loss, mask)
