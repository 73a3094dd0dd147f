"""PPO's math (GAE, whitening, KL-in-reward, value loss) against hand computations and closed forms, and its
critic (B5: a tied model's critic keeps training its embedding)."""

import pytest
import torch

from minirlvr.model import ModelConfig, Transformer
from minirlvr.ppo import Critic, gae, kl_penalised_rewards, value_loss, whiten


def test_gae_closed_form_terminal_reward():
    # rewards [0,0,0,1], V = 0, gamma .9, lambda .95: A_t = (gamma*lambda)^(3-t), returns = A.
    r = torch.tensor([[0.0, 0, 0, 1]])
    adv, ret = gae(r, torch.zeros(1, 4), torch.ones(1, 4), gamma=0.9, lam=0.95)
    expected = torch.tensor([[(0.9 * 0.95) ** k for k in (3, 2, 1, 0)]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected)


def test_gae_with_values_matches_explicit_sum():
    # A_t = sum_k (g*l)^k delta_{t+k}, delta_t = r_t + g V_{t+1} - V_t, V_T = 0.
    g, l = 0.9, 0.95
    r = torch.tensor([[0.0, 0, 0, 1]])
    v = torch.tensor([[0.5, -0.2, 0.3, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 4), gamma=g, lam=l)
    vn = torch.cat([v, torch.zeros(1, 1)], 1)
    delta = [r[0, t] + g * vn[0, t + 1] - vn[0, t] for t in range(4)]
    expected = [sum((g * l) ** k * delta[t + k] for k in range(4 - t)) for t in range(4)]
    torch.testing.assert_close(adv[0], torch.tensor(expected))
    torch.testing.assert_close(ret, adv + v)
    # lambda = 1: returns are the discounted reward-to-go (Monte Carlo), whatever the values.
    _, ret1 = gae(r, v, torch.ones(1, 4), gamma=g, lam=1.0)
    torch.testing.assert_close(ret1[0], torch.tensor([g ** 3, g ** 2, g, 1.0]))


def test_gae_ignores_values_and_rewards_at_masked_positions():
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    r = torch.randn(2, 5)
    v = torch.randn(2, 5)
    a1, ret1 = gae(r, v, mask, 0.9, 0.95)
    v2, r2 = v.clone(), r.clone()
    v2[0, 3:] = 1e6
    r2[0, 3:] = -1e6
    a2, ret2 = gae(r2, v2, mask, 0.9, 0.95)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(ret1, ret2)
    assert (a1[0, 3:] == 0).all()
    # the truncated row equals the same row computed alone with length 3
    a3, _ = gae(r[:1, :3], v[:1, :3], torch.ones(1, 3), 0.9, 0.95)
    torch.testing.assert_close(a1[0, :3], a3[0])


def test_whiten_masked():
    x = torch.tensor([[1.0, 2, 3, 100], [4, 5, 6, -100]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert abs(vals.mean().item()) < 1e-6
    assert abs(vals.pow(2).mean().item() - 1) < 1e-4
    assert (w[:, 3] == 0).all()


def test_whiten_over_ranks_equals_whiten_of_the_whole_batch():
    # B4: two ranks holding halves of a batch, with the moments summed over both, whiten exactly as one
    # process holding the whole batch (per-rank moments would not: the halves differ a lot here).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g) + torch.tensor([[3.0]] * 3 + [[-3.0]] * 3)
    mask = torch.rand(6, 5, generator=g) > 0.3
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    ranks = [None, None]
    for r in range(2):
        other = halves[1 - r]
        calls = iter([other[1].float().sum(), (other[0] * other[1]).sum(), None])

        def all_sum(t, calls=calls, other=other):  # adds the other rank's part of each sum, in call order
            part = next(calls)
            if part is None:  # the variance: the other rank's squared deviations from the global mean
                mean = (x * mask).sum() / mask.sum()
                part = ((other[0] - mean) ** 2 * other[1]).sum()
            return t + part
        ranks[r] = whiten(*halves[r], all_sum)
    torch.testing.assert_close(torch.cat(ranks), whiten(x, mask), atol=1e-6, rtol=0)
    assert (whiten(x[:3], mask[:3]) - whiten(x, mask)[:3]).abs().max() > 0.5  # per-rank whitening differs


def test_kl_penalised_rewards():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    r = kl_penalised_rewards(torch.tensor([2.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 0.1, 2.0, 0.0]]))


def test_value_loss_clips_and_divides_by_the_given_units():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    # token 0: V moved 0.5 from old, clipped to 0.2 -> max((1-2)^2, (0.7-2)^2) = 1.69; token 1: (0-1)^2 = 1
    assert value_loss(v, old, ret, mask, clip=0.2).item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert value_loss(v, old, ret, mask, clip=0.2, units=torch.tensor(4.0)).item() == pytest.approx(0.5 * 2.69 / 4)


def test_critic_of_a_tied_model_trains_its_embedding():
    # B5: with tied embeddings lm_head.weight *is* embed_tokens.weight; freezing the unused lm_head froze the
    # critic's input embedding too. Untied, the unused lm_head stays out of the optimiser.
    for tied in (True, False):
        cfg = ModelConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
        critic = Critic(Transformer(cfg))
        critic.value_head.weight.data.fill_(0.1)
        critic(torch.tensor([[1, 2, 3]])).sum().backward()
        emb = critic.trunk.model.embed_tokens.weight
        assert emb.requires_grad and emb.grad is not None and emb.grad.abs().sum() > 0
        assert critic.trunk.lm_head.weight.requires_grad == tied
