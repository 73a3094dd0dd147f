"""The GRPO family's advantages as pure functions: group-relative baselines, and the zero-variance filter.

Conventions: a batch of R = P * G responses is laid out prompt-major (rows p*G .. p*G+G-1 are the G samples
of prompt p), as the sampler returns them. (PPO's token-level math, GAE and whitening, lives in ppo.py.)

Adding an estimator: write `def my_adv(rewards: Tensor, group_size: int) -> Tensor` returning [R] and add it to
`ADVANTAGES`. Then `--advantage my_adv` selects it in train.py.
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


# ------------------------------------------------------------------------------- outcome advantages

def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): A_i = (r_i - mean_g) / (std_g + eps), per group.

    rewards [R] with R = P * group_size -> advantages [R]. std is the unbiased sample std, as in the
    DeepSeekMath/TRL implementations; a group with equal rewards gets all-zero advantages.
    """
    r = rewards.view(-1, group_size)
    mean, std = r.mean(1, keepdim=True), r.std(1, keepdim=True)
    return ((r - mean) / (std + eps)).view(-1)


def drgrpo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Dr.GRPO (Liu et al. 2025): A_i = r_i - mean_g, no std scaling. rewards [R] -> [R].

    The other half of Dr.GRPO, no per-sequence length normalisation, is the loss aggregation
    `seq_mean_token_sum_norm` in kernels.policy_loss.
    """
    r = rewards.view(-1, group_size)
    return (r - r.mean(1, keepdim=True)).view(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j, the leave-one-out baseline. [R] -> [R]."""
    G = group_size
    if G < 2:
        raise ValueError("RLOO needs group_size >= 2")
    r = rewards.view(-1, G)
    baseline = (r.sum(1, keepdim=True) - r) / (G - 1)
    return (r - baseline).view(-1)


ADVANTAGES: dict[str, Callable[[Tensor, int], Tensor]] = {"grpo": grpo_advantages, "drgrpo": drgrpo_advantages,
                                                           "rloo": rloo_advantages}


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[R] -> bool [R]: True for rows whose group has identical rewards (no learning signal; DAPO filters them)."""
    r = rewards.view(-1, group_size)
    flat = (r.max(1).values - r.min(1).values) == 0
    return flat.repeat_interleave(group_size)
