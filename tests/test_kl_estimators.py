"""The k1/k2/k3 estimators of KL(pi || ref) (Schulman 2020), through kernels.policy_loss.

On a small categorical distribution everything is exact: a float mask that
weights outcome x by pi(x) turns token_mean into the expectation E_pi[.]
(B=1, one "token" per outcome). Then
  values:     E_pi[k1] = E_pi[k3] = KL(pi||ref) (unbiased); E_pi[k2] != KL (biased)
  gradients:  E_pi[grad k1] = 0, E_pi[grad k2] = grad KL(pi||ref), E_pi[grad k3] = grad KL(ref||pi)
with the sampling distribution held fixed, as in RL where tokens were
sampled before the loss. A Monte Carlo check then samples from pi.
"""

import pytest
import torch

from kernels import KL_ESTIMATORS, LossConfig, policy_loss

V = 12


def distributions(seed=0, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(V, generator=g, dtype=torch.float64) * spread).requires_grad_()
    ref_logp = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64) * spread, -1)
    return theta, ref_logp


def exact_kl(p_log, q_log):
    return (p_log.exp() * (p_log - q_log)).sum()


def expected_kl_term(theta, ref_logp, est):
    """E_{x~pi}[k(x)] via policy_loss with mask = pi (detached) and zero advantages."""
    logp = torch.log_softmax(theta, -1)
    weights = logp.detach().exp()[None]
    loss, stats = policy_loss(logp[None], logp.detach()[None], ref_logp[None],
                              torch.zeros(1, dtype=torch.float64), weights,
                              LossConfig(kl_coef=1.0, kl_estimator=est), compiled=False)
    assert stats["pg_loss"] == 0
    return loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_k3_unbiased_k2_biased(seed):
    theta, ref_logp = distributions(seed)
    logp = torch.log_softmax(theta.detach(), -1)
    kl = exact_kl(logp, ref_logp)
    for est in ["k1", "k3"]:  # unbiased: the expectation is the KL exactly
        torch.testing.assert_close(expected_kl_term(theta, ref_logp, est), kl, atol=1e-12, rtol=1e-12)
    # k2 is biased: 0.5 E[(log pi/ref)^2] = KL + O(|log ratio|^3); far from the KL here ...
    k2 = expected_kl_term(theta, ref_logp, "k2")
    assert abs(k2 - kl) > 0.05 * kl
    # ... but the bias is third order, so it vanishes faster than the KL as ref -> pi
    near = torch.log_softmax(logp + 0.01 * (ref_logp - logp), -1)
    kl_near = exact_kl(logp, near)
    assert abs(expected_kl_term(theta, near, "k2") - kl_near) < 0.02 * kl_near


def test_k3_is_never_negative_k1_can_be():
    theta, ref_logp = distributions(3)
    logp = torch.log_softmax(theta.detach(), -1)
    assert (KL_ESTIMATORS["k3"](logp, ref_logp) >= 0).all()
    assert (KL_ESTIMATORS["k2"](logp, ref_logp) >= 0).all()
    assert (KL_ESTIMATORS["k1"](logp, ref_logp) < 0).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_gradients(seed):
    theta, ref_logp = distributions(seed)
    pi = torch.softmax(theta.detach(), -1)
    ref = ref_logp.exp()
    logp = pi.log()
    kl = exact_kl(logp, ref_logp)
    # closed forms for softmax logits theta
    grad_reverse = pi * (logp - ref_logp - kl)  # d KL(pi||ref) / d theta
    grad_forward = pi - ref                      # d KL(ref||pi) / d theta
    want = {"k1": torch.zeros(V, dtype=torch.float64), "k2": grad_reverse, "k3": grad_forward}
    for est, g in want.items():
        (got,) = torch.autograd.grad(expected_kl_term(theta, ref_logp, est), theta)
        torch.testing.assert_close(got, g, atol=1e-12, rtol=1e-10, msg=lambda m: f"{est}: {m}")


def test_monte_carlo_samples_from_pi():
    # 20,000 tokens sampled from pi, equal weights. Unbiased estimators land within 4 standard
    # errors of the exact KL; k2's bias is many standard errors away (and its sign is known here).
    theta, ref_logp = distributions(4)
    logp_all = torch.log_softmax(theta.detach(), -1)
    kl = exact_kl(logp_all, ref_logp).item()
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(logp_all.exp(), 20_000, replacement=True, generator=g)
    logp, ref = logp_all[x], ref_logp[x]
    for est in ["k1", "k2", "k3"]:
        values = KL_ESTIMATORS[est](logp, ref)
        _, stats = policy_loss(logp[None], logp[None], ref[None], torch.zeros(1, dtype=torch.float64),
                               torch.ones(1, x.numel(), dtype=torch.bool), LossConfig(kl_estimator=est), compiled=False)
        mean, se = stats["kl_mean"].item(), (values.std() / values.numel() ** 0.5).item()
        assert mean == pytest.approx(values.mean().item(), rel=1e-12)
        if est in ("k1", "k3"):
            assert abs(mean - kl) < 4 * se, (est, mean, kl, se)
        else:
            assert abs(mean - kl) > 10 * se, (est, mean, kl, se)
    # when ref is close to pi (as under a KL penalty), k3 has far lower variance than k1, which is
    # why it is the default; far apart, exp(ref - logp) has a heavy tail and that advantage is lost
    near = torch.log_softmax(logp_all + 0.2 * (ref_logp - logp_all), -1)[x]
    assert KL_ESTIMATORS["k3"](logp, near).var() < 0.1 * KL_ESTIMATORS["k1"](logp, near).var()
