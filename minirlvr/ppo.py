"""PPO: the GRPO loop (grpo.py) with a learned critic instead of a group baseline.

What PPO adds, all in this file:
    critic        a separate copy of the policy's trunk with a scalar head, V(prefix) per response token
    advantages    per-token rewards (the score on the last token, -kl_coef * (log pi - log ref) on every token),
                  GAE over the critic's values, whitened over the whole batch of every rank
    value loss    PPO2's clipped value loss, one critic optimiser step per policy step

Choice: a separate critic initialised from the policy (as in InstructGPT and verl), not a value head on the
policy's trunk: a second forward/backward, but the value loss never pulls on the policy's weights, so how far
the policy moves from the reference stays a question of the policy loss and the KL alone (the drift studied).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import save_file

from minirlvr import dist
from minirlvr.checkpoint import load_optimizer, read_tensors
from minirlvr.config import ConfigError, check
from minirlvr.grpo import (GRPOConfig, by_micro_batch, finish_step, frozen_logprobs, global_minibatches, loss_config,
                           micro_batches, policy_step, start_run, step_rollout)
from minirlvr.model import Transformer
from minirlvr.optim import apply_update, autocast, check_finite, lr_at, make_adamw, set_lr
from minirlvr.run import StopSignal
from minirlvr.sampler import Batch

Tensor = torch.Tensor


@dataclass
class PPOConfig(GRPOConfig):
    out: str = "runs/ppo"          # run folder: model/, state/ (with the critic), metrics.jsonl, samples.jsonl
    gamma: float = 1.0             # discount over response tokens
    lam: float = 0.95              # GAE lambda
    vf_coef: float = 0.5           # weight of the value loss
    value_clip: float = 0.2        # clip of the value change per update (PPO2)
    critic_lr: float = 1e-4        # the critic's learning rate (AdamW, constant)
    min_group_size = 1             # not a field: the critic is the baseline, no group is needed

    def validate(self):
        super().validate()
        check([("gamma", self.gamma, 0 <= self.gamma <= 1, "must be in [0, 1]"),
               ("lam", self.lam, 0 <= self.lam <= 1, "must be in [0, 1]"),
               ("vf_coef", self.vf_coef, self.vf_coef >= 0, "must be >= 0"),
               ("value_clip", self.value_clip, self.value_clip > 0, "must be > 0"),
               ("critic_lr", self.critic_lr, self.critic_lr >= 0, "must be >= 0")])
        for key in ("advantage", "filter_zero_variance", "kl_in_reward"):  # GRPO's, meaningless here
            if getattr(self, key) != getattr(GRPOConfig, key):
                raise ConfigError(f"config: {key!r} has no effect in PPO (critic advantages, KL in the reward)")


# ------------------------------------------------------------------------------------- the critic

class Critic(nn.Module):
    """V(prefix): the policy's trunk (its own copy) with a scalar head in place of lm_head."""

    def __init__(self, trunk: Transformer):
        super().__init__()
        self.trunk = trunk
        if not trunk.config.tie_word_embeddings:  # tied, lm_head.weight *is* the input embedding: keep it trained
            trunk.lm_head.requires_grad_(False)  # unused: the head below replaces it
        self.value_head = nn.Linear(trunk.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: the first advantages are the returns
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: Tensor, positions: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """ids [B, T] -> values [B, T] (float32)."""
        h = self.trunk(ids, positions=positions, key_mask=key_mask, return_hidden=True)
        return self.value_head(h).squeeze(-1).float()

    @classmethod
    def from_pretrained(cls, path, device=None) -> "Critic":
        path = Path(path)
        critic = cls(Transformer.from_pretrained(path, device=device))
        head = path / "value_head.safetensors"
        if head.is_file():  # absent when initialising from a policy checkpoint
            t = read_tensors(head, ("weight", "bias"))
            critic.value_head.load_state_dict({k: t[k] for k in ("weight", "bias")})
        return critic.to(device) if device is not None else critic

    def save_pretrained(self, path) -> None:
        self.trunk.save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(Path(path) / "value_head.safetensors"))


def response_values(critic: Critic, batch: Batch, rows: slice | Tensor = slice(None)) -> Tensor:
    """V of the prefix before each response token [r, T], aligned with response_logprobs."""
    sub = batch.rows(rows)
    return critic(sub.ids, sub.positions, sub.key_mask)[:, sub.prompt_len - 1:-1]


# ------------------------------------------------------------------------------------- the math

def kl_penalised_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """KL-in-reward shaping (Ziegler et al. 2019; InstructGPT): per-token rewards [R, T].

    r_t = -kl_coef * (logp_t - ref_logp_t) on every response token (the k1 estimator of KL(pi||ref)), plus
    the sequence score [R] on the last response token. Masked positions are 0.
    """
    m = mask.to(logp.dtype)
    rewards = -kl_coef * (logp - ref_logp) * m
    last = (mask.long().sum(1) - 1).clamp(min=0)  # response tokens are contiguous from the left
    rewards[torch.arange(len(score)), last] += score.to(rewards.dtype)
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    rewards, values, mask: [R, T]; the episode ends after the last masked token (its next value is 0).
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1}
    Returns (advantages [R, T], returns = advantages + values [R, T]), both 0 where mask is 0. Values at masked
    positions never influence the result (the next value is taken as 0 past the last real token).
    """
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    adv = torch.zeros_like(rewards)
    next_adv = next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # At padding keep carrying zeros, so a trailing pad never feeds into the last real token.
        adv[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        next_adv, next_value = adv[:, t], values[:, t]
    return adv, (adv + values) * m


def whiten(x: Tensor, mask: Tensor, all_sum: Callable[[Tensor], Tensor] = lambda t: t, eps: float = 1e-8) -> Tensor:
    """x [R, T] shifted and scaled to zero mean and unit variance over the masked entries, 0 elsewhere.

    all_sum sums a tensor over data-parallel ranks (dist.all_sum), so that the moments are those of the
    global batch: N processes then whiten exactly as one process would.
    """
    m = mask.to(x.dtype)
    count = all_sum(m.sum()).clamp(min=1)
    mean = all_sum((x * m).sum()) / count
    var = all_sum(((x - mean) ** 2 * m).sum()) / count
    return (x - mean) * torch.rsqrt(var + eps) * m


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float,
               units: Tensor | None = None) -> Tensor:
    """Clipped value loss (PPO2): 0.5 * max((V - R)^2, (V_clipped - R)^2), summed over masked tokens [R, T] and
    divided by `units` (the token count of the whole minibatch; default: this mask's)."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    m = mask.to(loss.dtype)
    return 0.5 * ((loss * m).sum() / (m.sum() if units is None else units).clamp(min=1))


# ------------------------------------------------------------------------------------- the loop

def train_ppo(cfg: PPOConfig) -> Path:
    run = start_run(cfg, "ppo")
    policy, ref, opt, device = run.policy, run.ref, run.opt, run.device
    # the critic is training state, not part of the model a user uploads: OUT/state/step_N/critic
    critic = Critic.from_pretrained(run.state["dir"] / "critic" if run.state else cfg.init, device=device)
    critic_opt = make_adamw(critic.parameters(), cfg.critic_lr, 0.0)
    if run.state is not None:
        load_optimizer(critic_opt, run.state["dir"] / "critic" / "optimizer.safetensors",
                       run.state["critic_param_groups"])
    lcfg = loss_config(cfg, 0.0)  # the KL is in the per-token reward, not in the loss

    with StopSignal() as signals, closing(run.log), closing(run.samples):  # as train_grpo
        for step in range(run.start, cfg.steps):
            t0 = time.time()
            # 1. rollout
            ro = step_rollout(run, cfg, step)
            batch, mask = ro.batch, ro.batch.response_mask
            t_gen = time.time() - t0

            # 2. old and reference log-probs, and the critic's values, no grad
            with torch.no_grad(), autocast(device, cfg.bf16):
                old_logp = frozen_logprobs(policy, batch, cfg)
                ref_logp = frozen_logprobs(ref, batch, cfg) if ref is not None else None
                old_values = by_micro_batch(lambda rows: response_values(critic, batch, rows), batch, cfg)
            t_lp = time.time() - t0 - t_gen

            # 3. advantages: GAE over KL-penalised per-token rewards, whitened over all ranks
            token_rewards = kl_penalised_rewards(ro.rewards, old_logp, old_logp if ref_logp is None else ref_logp, mask,
                                                 cfg.kl_coef if ref_logp is not None else 0.0)
            advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask, dist.all_sum)

            # 4. update: per minibatch one policy step, then one critic step
            policy.train()
            set_lr(opt, lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac))
            stats = []
            for epoch in range(cfg.mu):
                for rows in global_minibatches(len(ro.rewards), cfg.minibatches, cfg.seed * 7919 + step):
                    s = policy_step(policy, opt, batch, rows, old_logp, ref_logp, advantages, mask, cfg, lcfg, step,
                                    False)
                    s["value_loss"] = critic_step(critic, critic_opt, batch, rows, old_values, returns, mask, cfg, step)
                    stats.append(s)
            t_up = time.time() - t0 - t_gen - t_lp
            finish_step(run, cfg, step, ro, old_logp, ref_logp, stats, (time.time() - t0, t_gen, t_lp, t_up), "ppo",
                        signals.requested(device), critic=critic, critic_opt=critic_opt)
    return Path(cfg.out) / "model"


def critic_step(critic: Critic, opt, batch: Batch, rows: Tensor, old_values: Tensor, returns: Tensor,
                mask: Tensor, cfg: PPOConfig, step: int) -> float:
    """One critic optimiser step on the minibatch `rows`, accumulated over micro-batches (as policy_step)."""
    rows = rows.to(mask.device)
    units = dist.all_sum(mask[rows].sum())
    total = 0.0
    for micro in micro_batches(rows, cfg.micro_batch_size):
        with autocast(mask.device, cfg.bf16):
            values = response_values(critic, batch, micro)
        loss = value_loss(values, old_values[micro], returns[micro], mask[micro], cfg.value_clip, units) * cfg.vf_coef
        check_finite(loss, step)
        loss.backward()
        total += float(loss)
    apply_update(critic, opt, cfg.grad_clip)
    return total
