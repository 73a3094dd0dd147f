"""The GRPO family's advantages (algos.py) against loops and closed forms."""

import math

import pytest
import torch

from minirlvr import algos


def _loop_grpo(rewards, G, eps=1e-6):
    out = []
    for p in range(len(rewards) // G):
        grp = [float(x) for x in rewards[p * G:(p + 1) * G]]
        m = sum(grp) / G
        s = math.sqrt(sum((x - m) ** 2 for x in grp) / (G - 1))
        out += [(x - m) / (s + eps) for x in grp]
    return torch.tensor(out)


def _loop_rloo(rewards, G):
    out = []
    for p in range(len(rewards) // G):
        grp = [float(x) for x in rewards[p * G:(p + 1) * G]]
        out += [x - (sum(grp) - x) / (G - 1) for x in grp]
    return torch.tensor(out)


@pytest.mark.parametrize("G", [2, 4, 8])
def test_group_advantages_vectorised_equal_loops(G):
    g = torch.Generator().manual_seed(G)
    rewards = torch.randint(0, 2, (5 * G,), generator=g).float() + 0.1 * torch.randn(5 * G, generator=g)
    torch.testing.assert_close(algos.grpo_advantages(rewards, G), _loop_grpo(rewards, G))
    torch.testing.assert_close(algos.rloo_advantages(rewards, G), _loop_rloo(rewards, G))
    dr = algos.drgrpo_advantages(rewards, G).view(-1, G)
    torch.testing.assert_close(dr, rewards.view(-1, G) - rewards.view(-1, G).mean(1, keepdim=True))
    # RLOO is the mean-centred advantage scaled by G/(G-1)
    torch.testing.assert_close(algos.rloo_advantages(rewards, G), dr.view(-1) * G / (G - 1))


def test_equal_rewards_give_zero_advantage_and_are_filtered():
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0])
    for fn in algos.ADVANTAGES.values():
        a = fn(rewards, 4)
        assert (a[:4] == 0).all() and (a[4:] != 0).all()
    assert algos.zero_variance_groups(rewards, 4).tolist() == [True] * 4 + [False] * 4
