"""minirlvr.theory tested as math: closed forms, naive loops, random instances
(batched: one row per instance), and policy-gradient ascent through kernels.policy_loss."""

import math

import pytest
import torch

from minirlvr import theory as T

f64 = torch.float64


def _instances(K: int, n: int, seed: int, zeros: bool = False):
    """K random (p_ref, g, s) rows [K, n]. Half the g are binary (ties, like verifiable rewards)."""
    gen = torch.Generator().manual_seed(seed)
    scale = 4 * torch.rand(K, 1, generator=gen, dtype=f64)
    logits = scale * torch.randn(K, n, generator=gen, dtype=f64)
    if zeros:  # knock out paths at random, always keeping the first
        drop = torch.rand(K, n, generator=gen) < 0.3
        drop[:, 0] = False
        logits = logits.masked_fill(drop, -math.inf)
    p_ref = torch.softmax(logits, -1)
    g = torch.rand(K, n, generator=gen, dtype=f64)
    g[: K // 2] = g[: K // 2].round()
    s = torch.rand(K, n, generator=gen, dtype=f64)
    return p_ref, g, s, gen


def _random_dist(K: int, n: int, gen, support=None):
    logits = 3 * torch.rand(K, 1, generator=gen, dtype=f64) * torch.randn(K, n, generator=gen, dtype=f64)
    if support is not None:
        logits = logits.masked_fill(~support, -math.inf)
    return torch.softmax(logits, -1)


def fwd_objective(p, p_ref, g, beta):  # what k1-in-reward and k2-in-loss maximise
    return (p * g).sum(-1) - beta * T.kl(p, p_ref)


def rev_objective(p, p_ref, g, beta):  # what k3-in-loss maximises
    return (p * g).sum(-1) - beta * T.kl(p_ref, p)


def _perturbations(p, gen, M: int = 32):
    """M perturbations of each row of p [K, n], within its support: [M, K, n]."""
    K, n = p.shape
    eps = torch.logspace(-3, 0.5, M, dtype=f64).view(M, 1, 1)
    noise = torch.randn(M, K, n, generator=gen, dtype=f64)
    return torch.softmax(torch.log(p) + eps * noise, -1)


# -----------------------------------------------------------------------------
# exact quantities against naive loops


def test_rates_chi2_kl_drift_match_naive_loops():
    p_ref, g, s, gen = _instances(20, 6, seed=1, zeros=True)
    p = _random_dist(20, 6, gen, support=p_ref > 0)
    succ, safe = T.rates(p, g, s)
    c, k, d = T.chi2(p, p_ref), T.kl(p, p_ref), T.drift(p, p_ref, s)
    for i in range(20):
        P, Q, G, S = p[i].tolist(), p_ref[i].tolist(), g[i].tolist(), s[i].tolist()
        assert succ[i].item() == pytest.approx(sum(a * b for a, b in zip(P, G)), abs=1e-14)
        assert safe[i].item() == pytest.approx(sum(a * b for a, b in zip(P, S)), abs=1e-14)
        assert c[i].item() == pytest.approx(sum(a * a / b for a, b in zip(P, Q) if b > 0) - 1, abs=1e-12)
        assert k[i].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(P, Q) if a > 0), abs=1e-12)
        assert d[i].item() == pytest.approx(sum((a - b) * x for a, b, x in zip(P, Q, S)), abs=1e-14)
    # mass outside the support of q: both divergences are infinite
    assert T.chi2([0.5, 0.5], [1.0, 0.0]).item() == math.inf
    assert T.kl([0.5, 0.5], [1.0, 0.0]).item() == math.inf
    assert T.chi2([1.0, 0.0], [0.5, 0.5]).item() == pytest.approx(1.0)


def test_bad_input_fails_fast_naming_the_field():
    with pytest.raises(ValueError, match="p_ref must sum to 1"):
        T.gibbs_tilt([0.5, 0.6], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="p_ref must be finite and non-negative"):
        T.gibbs_tilt([1.5, -0.5], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="g has shape"):
        T.gibbs_tilt([0.5, 0.5], [0.0, 1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="s contains NaN"):
        T.rates([0.5, 0.5], [0.0, 1.0], [0.0, math.nan])
    with pytest.raises(ValueError, match="beta"):
        T.k3_fixed_point([0.5, 0.5], [0.0, 1.0], -1.0)
    with pytest.raises(ValueError, match="sampled_from"):
        T.chi2_from_logratios([0.0], [0.0], sampled_from="q")


# -----------------------------------------------------------------------------
# the drift bound (Thm. 2, Prop. 2)


def test_drift_bound_holds_on_thousands_of_random_instances():
    p_ref, g, s, gen = _instances(4000, 8, seed=2, zeros=True)
    beta = torch.logspace(-2, 1, 4000, dtype=f64)
    # half arbitrary distributions on the support, half Gibbs tilts (the policies the theory is about)
    p = torch.cat([_random_dist(2000, 8, gen, support=p_ref[:2000] > 0),
                   T.gibbs_tilt(p_ref[2000:], g[2000:], beta[2000:])])
    d, bound, worst = T.drift(p, p_ref, s), T.drift_bound(p, p_ref, s), T.worst_case_bound(p, p_ref)
    assert (d.abs() <= bound * (1 + 1e-12) + 1e-15).all()
    assert (bound <= worst * (1 + 1e-12) + 1e-15).all()
    # the drift is exactly Cov_ref(s, p/p_ref), computed naively
    w = torch.where(p_ref > 0, p / p_ref, 0.0)
    cov = (p_ref * s * w).sum(-1) - (p_ref * s).sum(-1) * (p_ref * w).sum(-1)
    torch.testing.assert_close(d, cov, rtol=0, atol=1e-13)
    # and the bound is informative, not vacuous: typical |drift|/bound is well inside (0, 1)
    moved = bound > 1e-12  # a single-path support cannot drift
    assert moved.sum() > 3000
    ratio = d[moved].abs() / bound[moved]
    assert 0.05 < ratio.median().item() < 0.95


def test_drift_bound_is_tight_when_s_is_affine_in_the_ratio():
    p_ref, g, s, gen = _instances(2000, 7, seed=3)
    p = _random_dist(2000, 7, gen)
    w = p / p_ref
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    sign = torch.where(torch.rand(2000, 1, generator=gen) < 0.5, 1.0, -1.0).to(f64)
    s_aff = 0.5 + sign * 0.5 * (w - lo) / (hi - lo) * torch.rand(2000, 1, generator=gen, dtype=f64)
    assert ((s_aff >= 0) & (s_aff <= 1)).all()
    d, bound = T.drift(p, p_ref, s_aff), T.drift_bound(p, p_ref, s_aff)
    torch.testing.assert_close(d.abs(), bound, rtol=1e-9, atol=1e-14)
    assert torch.equal(d > 0, sign.squeeze(-1) > 0)  # s increasing in w drifts up
    # random s is not tight, so the check above could fail
    assert (T.drift(p, p_ref, s).abs() < 0.99 * T.drift_bound(p, p_ref, s)).float().mean() > 0.95


def test_worst_case_bound_is_tight_for_a_half_split_indicator():
    # p_ref puts mass 1/2 on A; p scales A by (1+e) and B by (1-e); s = 1 on A.
    for eps in (1e-3, 0.1, 0.5, 0.9):
        p_ref = torch.tensor([0.2, 0.3, 0.1, 0.4], dtype=f64)
        on_a = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=f64)
        p = p_ref * (1 + eps * (2 * on_a - 1))
        assert T.drift(p, p_ref, on_a).item() == pytest.approx(eps / 2, rel=1e-12)
        assert T.worst_case_bound(p, p_ref).item() == pytest.approx(eps / 2, rel=1e-12)
        assert T.drift_bound(p, p_ref, on_a).item() == pytest.approx(eps / 2, rel=1e-12)


# -----------------------------------------------------------------------------
# the Gibbs tilt (Thm. 1)


def test_gibbs_tilt_closed_form_and_variational_value():
    p_ref, g, _, _ = _instances(500, 6, seed=4, zeros=True)
    beta = torch.logspace(-1, 1, 500, dtype=f64)
    tilt = T.gibbs_tilt(p_ref, g, beta)
    naive = p_ref * torch.exp(g / beta[:, None])
    torch.testing.assert_close(tilt, naive / naive.sum(-1, keepdim=True), rtol=1e-12, atol=1e-15)
    # Gibbs variational principle: the maximum value is beta log E_ref exp(g/beta)
    value = beta * torch.log((p_ref * torch.exp(g / beta[:, None])).sum(-1))
    torch.testing.assert_close(fwd_objective(tilt, p_ref, g, beta), value, rtol=1e-12, atol=1e-12)
    # closed-form chi2 of the tilt: E_ref[e^{2g/b}] / E_ref[e^{g/b}]^2 - 1
    e1 = (p_ref * torch.exp(g / beta[:, None])).sum(-1)
    e2 = (p_ref * torch.exp(2 * g / beta[:, None])).sum(-1)
    torch.testing.assert_close(T.chi2(tilt, p_ref), e2 / e1**2 - 1, rtol=1e-9, atol=1e-14)
    # one beta for all rows, and a single 1-D instance, agree with the batched call
    torch.testing.assert_close(T.gibbs_tilt(p_ref, g, 0.5), T.gibbs_tilt(p_ref, g, torch.full((500,), 0.5)))
    torch.testing.assert_close(T.gibbs_tilt(p_ref[7].tolist(), g[7].numpy(), beta[7].item()), tilt[7])


def test_gibbs_tilt_beats_random_perturbations_and_the_k3_fixed_point():
    p_ref, g, _, gen = _instances(1000, 6, seed=5)
    beta = torch.logspace(-1.5, 0.5, 1000, dtype=f64)
    tilt = T.gibbs_tilt(p_ref, g, beta)
    best = fwd_objective(tilt, p_ref, g, beta)
    others = fwd_objective(_perturbations(tilt, gen), p_ref, g, beta)  # [M, K]
    assert (others <= best + 1e-12).all()
    assert (others < best - 1e-9).float().mean() > 0.9  # the perturbations are not all negligible
    # the k3 fixed point is a different distribution, and worse on this objective
    k3 = T.k3_fixed_point(p_ref, g, beta)
    assert (fwd_objective(k3, p_ref, g, beta) <= best + 1e-12).all()


def test_gibbs_tilt_limits():
    p_ref, g, _, _ = _instances(300, 6, seed=6, zeros=True)
    # beta -> inf: p_ref, at rate O(1/beta); inf itself is exact
    for beta in (1e3, 1e6):
        assert (T.gibbs_tilt(p_ref, g, beta) - p_ref).abs().max() < 2 / beta
    torch.testing.assert_close(T.gibbs_tilt(p_ref, g, math.inf), p_ref, rtol=1e-14, atol=0)
    # beta -> 0: p_ref conditioned on the argmax of g over its support (ties kept in p_ref's proportions)
    g_max = torch.where(p_ref > 0, g, -1.0).amax(-1, keepdim=True)
    limit = p_ref * (g == g_max)
    limit = limit / limit.sum(-1, keepdim=True)
    assert ((limit > 0).sum(-1) > 1).sum() > 50  # many instances have ties
    torch.testing.assert_close(T.gibbs_tilt(p_ref, g, 0.0), limit, rtol=1e-14, atol=0)
    for beta in (1e-3, 1e-300):
        tilt = T.gibbs_tilt(p_ref, g, beta)
        assert torch.isfinite(tilt).all()
        gap = torch.where((g < g_max) & (p_ref > 0), g_max - g, 1.0).amin(-1)
        ok = gap > 50 * beta  # off-argmax mass is at most exp(-gap/beta)/P_ref(argmax)
        torch.testing.assert_close(tilt[ok], limit[ok], rtol=0, atol=1e-12)
    # uniform p_ref: uniform over the tied maximisers
    torch.testing.assert_close(T.gibbs_tilt([0.25] * 4, [1.0, 0.0, 1.0, 1.0], 0.0),
                               torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=f64))
    # a higher reward off the support of p_ref is never reached
    assert T.gibbs_tilt([0.5, 0.5, 0.0], [0.0, 0.5, 1.0], 1e-3)[2].item() == 0.0


# -----------------------------------------------------------------------------
# invariance (Prop. 1)


def test_invariance_cases_have_zero_drift():
    betas = torch.logspace(-2, 2, 9, dtype=f64)[:, None]  # [9, 1]: every beta for each instance
    p_ref, g, s, gen = _instances(400, 8, seed=7, zeros=True)
    # (a) s constant on the support (anything off it)
    s_const = torch.where(p_ref > 0, torch.rand(400, 1, generator=gen, dtype=f64), s)
    # (b) s mean-independent of g: g takes 4 levels on pairs of paths, and within each level s is
    #     c +/- a spread that cancels under p_ref
    g_pair = torch.rand(400, 4, generator=gen, dtype=f64).repeat_interleave(2, -1)
    p_pair = torch.softmax(torch.randn(400, 8, generator=gen, dtype=f64), -1)
    c = 0.5
    u = 0.3 * torch.rand(400, 4, generator=gen, dtype=f64)
    a, b = p_pair[:, 0::2], p_pair[:, 1::2]
    s_ind = torch.stack([c + u * b / (a + b), c - u * a / (a + b)], -1).flatten(-2)  # E[s | level] = c
    for P, G, S in [(p_ref, g, s_const), (p_pair, g_pair, s_ind)]:
        assert T.is_safety_invariant(P, G, S).all()
        tilts = T.gibbs_tilt(P, G, betas.expand(-1, 400))  # [9, 400, 8]
        assert T.drift(tilts, P.expand_as(tilts), S.expand_as(tilts)).abs().max() < 1e-14
    # (c) one given p: s orthogonal to w - 1 under p_ref has zero drift although chi2 > 0
    p = _random_dist(400, 8, gen)
    p_ref = torch.softmax(torch.randn(400, 8, generator=gen, dtype=f64), -1)
    w = p / p_ref
    v = torch.randn(400, 8, generator=gen, dtype=f64)
    v = v - (p_ref * v).sum(-1, keepdim=True)  # E_ref v = 0
    wc = w - 1
    v = v - (p_ref * v * wc).sum(-1, keepdim=True) / (p_ref * wc * wc).sum(-1, keepdim=True) * wc
    s_orth = 0.5 + 0.4 * v / v.abs().amax(-1, keepdim=True)
    assert T.drift(p, p_ref, s_orth).abs().max() < 1e-14
    assert (T.chi2(p, p_ref) > 1e-3).all()


def test_non_invariant_cases_do_drift():
    p_ref, g, s, _ = _instances(400, 8, seed=8)
    g = g + 1e-3 * torch.arange(8, dtype=f64)  # distinct levels, so random s is not mean-independent
    assert not T.is_safety_invariant(p_ref, g, s).any()
    betas = torch.logspace(-2, 2, 9, dtype=f64)[:, None]
    tilts = T.gibbs_tilt(p_ref, g, betas.expand(-1, 400))
    biggest = T.drift(tilts, p_ref.expand_as(tilts), s.expand_as(tilts)).abs().amax(0)
    assert (biggest > 1e-6).all()
    # constant s off the support is not enough: what counts is the support
    assert not T.is_safety_invariant([0.5, 0.5, 0.0], [0.0, 1.0, 1.0], [0.2, 0.3, 0.3]).item()
    assert T.is_safety_invariant([0.5, 0.5, 0.0], [0.0, 1.0, 1.0], [0.3, 0.3, 0.9]).item()


# -----------------------------------------------------------------------------
# the k3 fixed point: argmax E_p[g] - beta KL(p_ref || p)


def test_k3_fixed_point_two_paths_closed_form():
    # g = (1, 0), p_ref = (a, 1-a): beta a/(lam-1) + beta (1-a)/lam = 1, a quadratic in lam
    for a in (1e-3, 0.3, 0.5, 0.9):
        for beta in (1e-3, 0.1, 0.7, 5.0, 1e3):
            lam = ((1 + beta) + math.sqrt((1 + beta) ** 2 - 4 * beta * (1 - a))) / 2
            p1 = T.k3_fixed_point([a, 1 - a], [1.0, 0.0], beta)[0].item()
            assert p1 == pytest.approx(beta * a / (lam - 1), rel=1e-10)


def test_k3_fixed_point_is_stationary_and_optimal():
    p_ref, g, _, gen = _instances(1000, 6, seed=9)
    beta = torch.logspace(-2, 1, 1000, dtype=f64)
    k3 = T.k3_fixed_point(p_ref, g, beta)
    # KKT: g + beta p_ref/p is the same multiplier lam on every path
    lam = g + beta[:, None] * p_ref / k3
    torch.testing.assert_close(lam, lam[:, :1].expand_as(lam), rtol=1e-9, atol=0)
    best = rev_objective(k3, p_ref, g, beta)
    others = rev_objective(_perturbations(k3, gen), p_ref, g, beta)
    assert (others <= best + 1e-12).all()
    assert (others < best - 1e-9).float().mean() > 0.9
    tilt = T.gibbs_tilt(p_ref, g, beta)
    assert (rev_objective(tilt, p_ref, g, beta) <= best + 1e-12).all()
    # the two fixed points genuinely differ, which the policy-gradient test relies on
    assert (0.5 * (tilt - k3).abs().sum(-1) > 0.1).sum() > 50
    # batched == one instance at a time
    torch.testing.assert_close(T.k3_fixed_point(p_ref[3], g[3], beta[3].item()), k3[3], rtol=1e-12, atol=0)


def test_k3_fixed_point_limits_and_support():
    p_ref, g, _, _ = _instances(300, 6, seed=10, zeros=True)
    g = torch.where(p_ref > 0, g, -1.0)  # nothing to gain off the support (see the last check)
    limit = T.gibbs_tilt(p_ref, g, 0.0)
    torch.testing.assert_close(T.k3_fixed_point(p_ref, g, 0.0), limit, rtol=0, atol=0)
    torch.testing.assert_close(T.k3_fixed_point(p_ref, g, math.inf), p_ref, rtol=0, atol=0)
    # reverse KL keeps mass ~ beta p_ref/gap off the argmax, so the approach to the limit is O(beta)
    assert (T.k3_fixed_point(p_ref, g, 1e-9) - limit).abs().max() < 1e-6
    for beta in (1e3, 1e6):
        assert (T.k3_fixed_point(p_ref, g, beta) - p_ref).abs().max() < 2 / beta
    assert torch.isfinite(T.k3_fixed_point(p_ref, g, 1e-300)).all()
    # a zero-mass path whose reward is below the multiplier stays at 0 ...
    assert T.k3_fixed_point([0.5, 0.5, 0.0], [1.0, 0.0, 0.5], 0.3)[2].item() == 0.0
    # ... one above it would take mass for free under KL(p_ref || p): refused
    with pytest.raises(ValueError, match="leaves the support"):
        T.k3_fixed_point([0.5, 0.5, 0.0], [1.0, 0.0, 2.0], 0.3)


# -----------------------------------------------------------------------------
# estimators from samples


def test_sample_estimators_are_exactly_unbiased():
    # Expectation of a one-sample estimate = sum over paths of q(path) * estimate(path).
    p_ref, g, s, _ = _instances(300, 7, seed=11)
    p = T.gibbs_tilt(p_ref, g, torch.logspace(-1, 1, 300, dtype=f64))
    lp, lr, ss = torch.log(p)[..., None], torch.log(p_ref)[..., None], s[..., None]  # [K, n, 1]
    for q, src in [(p, "p"), (p_ref, "ref")]:
        e_chi2 = (q * T.chi2_from_logratios(lp, lr, sampled_from=src)).sum(-1)
        e_drift = (q * T.drift_from_logratios(lp, lr, ss, sampled_from=src)).sum(-1)
        torch.testing.assert_close(e_chi2, T.chi2(p, p_ref), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(e_drift, T.drift(p, p_ref, s), rtol=1e-9, atol=1e-12)


def test_sample_estimators_converge_on_monte_carlo_samples():
    p_ref, g, s, gen = _instances(16, 10, seed=12)
    p = T.gibbs_tilt(p_ref, g, 0.5)
    N = 40_000
    for q, src in [(p, "p"), (p_ref, "ref")]:
        idx = torch.multinomial(q, N, replacement=True, generator=gen)  # [K, N] sampled paths
        lp, lr, ss = torch.log(p).gather(-1, idx), torch.log(p_ref).gather(-1, idx), s.gather(-1, idx)
        c_hat = T.chi2_from_logratios(lp, lr, sampled_from=src)
        # 5 standard errors from the per-sample spread
        se = torch.exp((lp - lr) * (1 if src == "p" else 2)).std(-1) / math.sqrt(N)
        assert ((c_hat - T.chi2(p, p_ref)).abs() < 5 * se).all()
        d_hat = T.drift_from_logratios(lp, lr, ss, sampled_from=src)
        assert ((d_hat - T.drift(p, p_ref, s)).abs() < 0.02).all()
        b_hat = T.drift_bound_from_logratios(lp, lr, ss, sampled_from=src)
        torch.testing.assert_close(b_hat, T.drift_bound(p, p_ref, s), rtol=0.1, atol=0.01)


# -----------------------------------------------------------------------------
# link to the algorithms: exact policy-gradient ascent on a tabular softmax bandit
#
# Each path r of each instance is one "sequence" of length 1 with logp_r = log_softmax(theta)_r,
# old_logp = logp.detach() (on-policy: ratio 1, inside any clip range) and the float mask
# p_r.detach(), so token_mean = sum_r p_r * surrogate_r is the exact expectation over p of the
# per-sample loss, and its gradient is the exact expected policy gradient.


def _reference_policy_loss(logp, old_logp, ref_logp, advantages, mask, kl_coef=0.0, kl_estimator="k3", **_):
    """The per-token PPO surrogate plus KL term, written out (on-policy, so no clipping matters)."""
    d = ref_logp - logp
    k = {"k1": -d, "k2": 0.5 * d**2, "k3": torch.exp(d) - d - 1}[kl_estimator]
    per_token = -torch.exp(logp - old_logp) * advantages.unsqueeze(-1) + kl_coef * k
    return (per_token * mask).sum() / mask.sum(), {}


def _ascend(loss_fn, p_ref, g, beta: float, kl: str, steps: int = 1000):
    """Natural-gradient ascent on theta [K, n] until the policy gradient vanishes; returns softmax(theta).

    kl: "k1_reward" puts -beta*(logp - ref) into the (detached) advantage; "k1"/"k2"/"k3" put
    kl_coef=beta times that estimator into the loss. The gradient comes from loss_fn alone; we
    only divide it by p, which is the Fisher-preconditioned (natural) gradient of a softmax policy
    (F = diag(p) - p p^T and the gradient sums to 0). That has the same fixed points as plain
    gradient ascent and needs ~10x fewer steps where p has small entries.
    """
    K, n = p_ref.shape
    ref = torch.log(p_ref)
    theta = ref.clone()  # start at the reference policy, as fine-tuning does
    for _ in range(steps):
        theta.requires_grad_(True)
        logp = torch.log_softmax(theta, -1)
        if kl == "k1_reward":
            adv, kl_coef, est = g - beta * (logp.detach() - ref), 0.0, "k1"
        else:
            adv, kl_coef, est = g, beta, kl
        col = logp.reshape(K * n, 1)
        loss, _ = loss_fn(col, col.detach(), ref.reshape(K * n, 1), adv.reshape(K * n),
                          logp.detach().exp().reshape(K * n, 1), kl_coef=kl_coef, kl_estimator=est)
        # token_mean divides by sum(mask) = K; undo it so each instance gets its own full gradient
        (grad,) = torch.autograd.grad(K * loss, theta)
        natural = grad / logp.detach().exp()
        theta = (theta - 0.5 / beta * natural).detach()  # step 1/beta would solve k1/k2 in one step
        if natural.abs().max() < 1e-10:
            break
    return torch.softmax(theta, -1), natural.abs().max().item()


def _separated_instances(beta: float, count: int = 8):
    """Random instances on which the Gibbs tilt and the k3 fixed point are far apart (TV > 0.1)."""
    gen = torch.Generator().manual_seed(13)
    p_ref = torch.softmax(torch.randn(256, 5, generator=gen, dtype=f64), -1)
    g = torch.rand(256, 5, generator=gen, dtype=f64)
    tilt, k3 = T.gibbs_tilt(p_ref, g, beta), T.k3_fixed_point(p_ref, g, beta)
    keep = torch.nonzero(0.5 * (tilt - k3).abs().sum(-1) > 0.1).flatten()[:count]
    assert len(keep) == count
    return p_ref[keep], g[keep], tilt[keep], k3[keep]


def _check_fixed_points(loss_fn, atol: float):
    beta = 0.3
    p_ref, g, tilt, k3 = _separated_instances(beta)
    tv = lambda a, b: 0.5 * (a - b).abs().sum(-1)  # noqa: E731
    for kl, own, other in [("k2", tilt, k3), ("k1_reward", tilt, k3), ("k3", k3, tilt)]:
        p, grad_norm = _ascend(loss_fn, p_ref, g, beta, kl)
        assert grad_norm < 1e-8, f"{kl}: not converged ({grad_norm:.2e})"
        assert tv(p, own).max() < atol, f"{kl}: {tv(p, own).max():.2e} from its fixed point"
        assert tv(p, other).min() > 0.1, f"{kl}: too close to the other fixed point"
    # k1 *in the loss* has zero expected gradient (sum_r p_r d logp_r = 0): no regularisation at all
    theta = (torch.log(tilt) + 0.0).requires_grad_(True)
    logp = torch.log_softmax(theta, -1).reshape(-1, 1)
    loss, _ = loss_fn(logp, logp.detach(), torch.log(p_ref).reshape(-1, 1), torch.zeros(logp.shape[0], dtype=f64),
                      logp.detach().exp(), kl_coef=beta, kl_estimator="k1")
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.abs().max() < 1e-6


def test_exact_policy_gradient_reaches_the_theory_fixed_points_reference_surrogate():
    _check_fixed_points(_reference_policy_loss, atol=1e-9)


def test_exact_policy_gradient_reaches_the_theory_fixed_points_kernels_policy_loss():
    try:
        from kernels import LossConfig, policy_loss
    except ImportError as e:
        pytest.skip(f"kernels.policy_loss is not available yet ({e})")

    def loss_fn(logp, old_logp, ref_logp, advantages, mask, kl_coef, kl_estimator):
        return policy_loss(logp, old_logp, ref_logp, advantages, mask,
                           LossConfig(kl_coef=kl_coef, kl_estimator=kl_estimator, agg="token_mean"))

    # policy_loss keeps float64, so the fixed points are reached as tightly as with the reference
    _check_fixed_points(loss_fn, atol=1e-9)
