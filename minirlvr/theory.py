"""
Theory of paper 1 on finite path sets: Gibbs tilt, chi-squared drift bound,
and the fixed points that the KL estimators of `kernels.policy_loss` lead to.

Provenance. Cho et al. (arXiv 2511.21050) state the results below in their
abstract; we did not have the paper's proofs, so the statements here are
reconstructed with standard derivations:
  - Thm. 1 (Gibbs variational principle). Over distributions p on paths,
        max_p  E_p[g] - beta * KL(p || p_ref)
    is attained at the Gibbs tilt p*(r) = p_ref(r) exp(g(r)/beta) / Z, and its
    value is beta * log E_{p_ref}[exp(g/beta)].
  - Thm. 2 (Cauchy-Schwarz). With w = p/p_ref and E_ref[w] = 1,
        E_p[s] - E_ref[s] = Cov_ref(s, w)
        |Cov_ref(s, w)| <= sqrt(Var_ref(s) * Var_ref(w)) = sqrt(Var_ref(s) * chi2(p || p_ref)),
    with equality iff s is affine in w on the support of p_ref.
  - Prop. 2. For s in [0, 1], Var_ref(s) <= 1/4 (Popoviciu), so the drift is at
    most 0.5 * sqrt(chi2).
  - Prop. 1 (invariance). A given p has zero drift iff Cov_ref(s, w) = 0. The
    Gibbs tilt has zero drift for *every* beta iff E_ref[s | g] does not depend
    on g on the support of p_ref (e.g. s constant there): the drift is
    sum_v P_ref(g=v) h(v) exp(v/beta) / Z with h(v) = E_ref[s | g=v] - E_ref[s],
    and exponentials with distinct rates are linearly independent.

Which KL a training loss optimises depends on the estimator (see kernels/):
with on-policy samples, k1 in the reward and k2 in the loss both have the
gradient of KL(p || p_ref), so they lead to the Gibbs tilt; k3 in the loss,
exp(ref - logp) - (ref - logp) - 1, has gradient sum_r (p - p_ref) d logp_r,
which is that of KL(p_ref || p). Its fixed point `k3_fixed_point` maximises
E_p[g] - beta * KL(p_ref || p) and has no closed form: p_r = beta p_ref(r) / (lam - g(r)).

Conventions: every distribution is a float64 tensor whose last dimension
indexes paths, shape [..., n]; leading dimensions are independent instances
(so thousands of instances are one batched call). Inputs may be tensors,
numpy arrays or lists. Results have shape [...].
"""

import math

import torch

Tensor = torch.Tensor


def _f64(name: str, x) -> Tensor:
    """Converts to float64 and fails fast on NaN (inf is allowed: log-probs of impossible paths)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 0:
        raise ValueError(f"theory: {name} must have a path dimension, got a scalar")
    if torch.isnan(t).any():
        raise ValueError(f"theory: {name} contains NaN")
    return t


def _dist(name: str, p) -> Tensor:
    """A probability vector [..., n]: non-negative, finite, sums to 1."""
    t = _f64(name, p)
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"theory: {name} must be finite and non-negative")
    err = (t.sum(-1) - 1).abs().max().item()
    if err > 1e-6:
        raise ValueError(f"theory: {name} must sum to 1 over its last dim (off by {err:.3g})")
    return t


def _values(name: str, x, like: Tensor) -> Tensor:
    """A finite function on paths, same shape as the distribution `like`."""
    t = _f64(name, x)
    if not torch.isfinite(t).all():
        raise ValueError(f"theory: {name} must be finite")
    if t.shape != like.shape:
        raise ValueError(f"theory: {name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    return t


def _beta(beta, like: Tensor) -> Tensor:
    """beta as a float or one per instance ([...], broadcast against the instances); returned as [..., 1]."""
    b = torch.as_tensor(beta, dtype=torch.float64, device=like.device)
    if torch.isnan(b).any() or (b < 0).any():
        raise ValueError("theory: beta must be >= 0 (0 and inf are the limits)")
    return b.unsqueeze(-1)


# -----------------------------------------------------------------------------
# Exact quantities on a finite path set


def rates(p, g, s) -> tuple[Tensor, Tensor]:
    """Success and safety rates (paper 1, Cor. 1): (sum p*g, sum p*s), each [...]."""
    p = _dist("p", p)
    g, s = _values("g", g, p), _values("s", s, p)
    return (p * g).sum(-1), (p * s).sum(-1)


def kl(p, q) -> Tensor:
    """KL(p || q) = sum p log(p/q) [...], with 0 log 0 = 0 and +inf if p has mass where q has none."""
    p, q = _dist("p", p), _dist("q", q)
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def chi2(p, q) -> Tensor:
    """chi2(p || q) = sum p^2/q - 1 [...]; +inf if p has mass where q has none.

    Computed as sum (p-q)^2/q, equal when both sum to 1, which is non-negative
    and keeps its relative accuracy when p is close to q (large beta).
    """
    p, q = _dist("p", p), _dist("q", q)
    inf = torch.full_like(p, math.inf)
    return torch.where(q > 0, (p - q) ** 2 / q.clamp_min(1e-300), torch.where(p > 0, inf, 0.0)).sum(-1)


def drift(p, p_ref, s) -> Tensor:
    """Signed safety drift E_p[s] - E_ref[s] [...]. Equals Cov_ref(s, p/p_ref) when p << p_ref."""
    p, p_ref = _dist("p", p), _dist("p_ref", p_ref)
    s = _values("s", s, p)
    return (p * s).sum(-1) - (p_ref * s).sum(-1)


def variance(p, s) -> Tensor:
    """Var_p(s) [...], two-pass so it stays >= 0."""
    p = _dist("p", p)
    s = _values("s", s, p)
    mean = (p * s).sum(-1, keepdim=True)
    return (p * (s - mean) ** 2).sum(-1)


def drift_bound(p, p_ref, s) -> Tensor:
    """sqrt(Var_ref(s) * chi2(p || p_ref)) >= |drift(p, p_ref, s)| (Thm. 2) [...].

    Tight iff s is affine in p/p_ref on the support of p_ref.
    """
    return torch.sqrt(variance(p_ref, s) * chi2(p, p_ref))


def worst_case_bound(p, p_ref) -> Tensor:
    """0.5 * sqrt(chi2(p || p_ref)) [...]: the drift bound for any s with values in [0, 1] (Prop. 2).

    Tight when s in {0, 1} splits p_ref in halves and is affine in p/p_ref.
    """
    return 0.5 * torch.sqrt(chi2(p, p_ref))


def is_safety_invariant(p_ref, g, s, atol: float = 1e-12) -> Tensor:
    """True where the Gibbs tilt leaves safety unchanged for every beta (Prop. 1) [...] (bool).

    The condition, necessary and sufficient, is that E_ref[s | g] is the same
    for every reward level g that p_ref can reach; s constant on the support of
    p_ref is the simplest case. Levels are exact float equality of g.
    """
    p_ref = _dist("p_ref", p_ref)
    g, s = _values("g", g, p_ref), _values("s", s, p_ref)
    same = (g.unsqueeze(-1) == g.unsqueeze(-2)).to(torch.float64)  # [..., n, n]: same level
    level_mass = (same * p_ref.unsqueeze(-2)).sum(-1)  # [..., n]: P_ref(g = g_i)
    level_s = (same * (p_ref * s).unsqueeze(-2)).sum(-1)  # [..., n]: E_ref[s 1{g = g_i}]
    cond_mean = level_s / level_mass.clamp_min(1e-300)
    mean = (p_ref * s).sum(-1, keepdim=True)
    off = torch.where(p_ref > 0, (cond_mean - mean).abs(), 0.0)
    return (off <= atol).all(-1)


# -----------------------------------------------------------------------------
# Fixed points of the KL-regularised objectives


def _support_max(p_ref: Tensor, g: Tensor) -> Tensor:
    """max of g over the support of p_ref, [..., 1]."""
    return torch.where(p_ref > 0, g, -math.inf).amax(-1, keepdim=True)


def gibbs_tilt(p_ref, g, beta) -> Tensor:
    """argmax_p E_p[g] - beta * KL(p || p_ref) = p_ref exp(g/beta) / Z (Thm. 1), [..., n].

    beta: float or [...]. Stable for tiny beta: we exponentiate (g - g_max)/beta <= 0
    in log space, with g_max taken over the support of p_ref. The limits are
    exact: beta = inf gives p_ref; beta = 0 gives p_ref conditioned on the
    argmax set of g (proportional to p_ref among tied maximisers, not uniform).
    """
    p_ref = _dist("p_ref", p_ref)
    g, b = _values("g", g, p_ref), _beta(beta, p_ref)
    gap = g - _support_max(p_ref, g)  # <= 0 on the support
    # 0/0 at the maximisers when beta = 0: their exponent is 0 in the limit.
    z = torch.where(gap == 0, torch.zeros_like(gap), gap / b)
    # Off the support the logit is -inf whatever g is (also avoids -inf + inf there).
    logits = torch.where(p_ref > 0, torch.log(p_ref) + z, -math.inf)
    return torch.softmax(logits, dim=-1)


def k3_fixed_point(p_ref, g, beta, iters: int = 100) -> Tensor:
    """argmax_p E_p[g] - beta * KL(p_ref || p) over the simplex, [..., n].

    This is where policy-gradient ascent with the k3 estimator in the loss
    converges. Stationarity with multiplier lam gives p_r = beta p_ref(r)/(lam - g(r)),
    lam > g_max. We write lam = g_max + delta: f(delta) = sum_r beta p_ref(r)/(delta + g_max - g(r))
    decreases from inf to 0, and f(beta * P_ref(argmax)) >= 1 >= f(beta), so
    bisection of log(delta) on that bracket finds the unique root (all in log
    space, so tiny beta keeps full relative precision). Limits as gibbs_tilt.

    Paths with p_ref = 0 get p = 0, which is optimal only while their g is at
    most lam; otherwise the reverse KL does not hold the optimum on the support
    of p_ref and we raise.
    """
    p_ref = _dist("p_ref", p_ref)
    g, b = _values("g", g, p_ref), _beta(beta, p_ref)
    g_max = _support_max(p_ref, g)
    on_max = (g == g_max) & (p_ref > 0)
    log_b, log_pref = torch.log(b), torch.log(p_ref)
    # -inf on the maximisers; the nan of off-support paths above g_max is masked
    log_gap = torch.where(p_ref > 0, torch.log(g_max - g), math.inf)

    def log_p(log_delta: Tensor) -> Tensor:  # log of beta p_ref / (delta + gap), unnormalised
        return log_b + log_pref - torch.logaddexp(log_delta, log_gap)

    lo = log_b + torch.log((p_ref * on_max).sum(-1, keepdim=True))  # f(lo) >= 1
    hi = log_b.clone()  # f(hi) <= 1
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_much = torch.logsumexp(log_p(mid), dim=-1, keepdim=True) > 0  # f(mid) > 1: delta larger
        lo, hi = torch.where(too_much, mid, lo), torch.where(too_much, hi, mid)
    log_delta = 0.5 * (lo + hi)
    p = torch.softmax(log_p(log_delta), dim=-1)  # removes the last bit of root error

    lam = g_max + torch.exp(log_delta)
    if ((p_ref == 0) & (g > lam) & torch.isfinite(lam) & (b > 0)).any():
        raise ValueError("theory: k3_fixed_point: p_ref is 0 on a path whose g exceeds the multiplier; "
                         "the optimum then leaves the support of p_ref (drop those paths)")
    # The limits, where the bisection bracket degenerates.
    return torch.where(torch.isinf(b), p_ref, torch.where(b == 0, gibbs_tilt(p_ref, g, 0.0), p))


# -----------------------------------------------------------------------------
# Estimators from samples, for checking the bound on a trained model
#
# logp, logp_ref [..., N]: sequence log-probs (sums of token log-probs) of N
# sampled paths under the trained policy p and the reference p_ref; s [..., N]
# their safety scores. The ratio w = p/p_ref = exp(logp - logp_ref) (overflow
# to inf beyond a log-ratio of ~709 is honest: the estimate is then useless).
# sampled_from="p": paths drawn from p (the trained model's own samples; needs
#   p > 0 wherever p_ref > 0, true for any softmax policy).
# sampled_from="ref": paths drawn from p_ref.


def _sample_inputs(logp, logp_ref, sampled_from: str) -> tuple[Tensor, Tensor]:
    if sampled_from not in ("p", "ref"):
        raise ValueError(f"theory: sampled_from must be 'p' or 'ref', got {sampled_from!r}")
    logp, logp_ref = _f64("logp", logp), _f64("logp_ref", logp_ref)
    if logp.shape != logp_ref.shape:
        raise ValueError(f"theory: logp {tuple(logp.shape)} and logp_ref {tuple(logp_ref.shape)} differ in shape")
    return logp, logp_ref


def chi2_from_logratios(logp, logp_ref, sampled_from: str = "p") -> Tensor:
    """Unbiased estimate of chi2(p || p_ref) [...] from N samples [..., N].

    From p:   chi2 = E_p[w] - 1,     estimate mean(w) - 1.
    From ref: chi2 = E_ref[w^2] - 1, estimate mean(w^2) - 1.
    Unbiased, hence it can come out negative when p is close to p_ref; both are
    heavy-tailed when p is far from p_ref, so report N and a CI alongside.
    """
    logp, logp_ref = _sample_inputs(logp, logp_ref, sampled_from)
    log_w = logp - logp_ref
    return torch.exp(2 * log_w if sampled_from == "ref" else log_w).mean(-1) - 1


def drift_from_logratios(logp, logp_ref, s, sampled_from: str = "p") -> Tensor:
    """Unbiased estimate of the drift E_p[s] - E_ref[s] [...] from N samples [..., N].

    From p:   E_p[s (1 - 1/w)], estimate mean(s * (1 - p_ref/p)).
    From ref: E_ref[s (w - 1)], estimate mean(s * (w - 1)).
    """
    logp, logp_ref = _sample_inputs(logp, logp_ref, sampled_from)
    s = _values("s", s, logp)
    log_w = logp - logp_ref
    factor = -torch.expm1(-log_w) if sampled_from == "p" else torch.expm1(log_w)
    return (s * factor).mean(-1)


def drift_bound_from_logratios(logp, logp_ref, s, sampled_from: str = "p") -> Tensor:
    """Estimate of drift_bound = sqrt(Var_ref(s) * chi2) [...] from N samples [..., N].

    Consistent but not unbiased (a square root of a product of estimates).
    chi2 is the unbiased estimate above, clipped at 0. Var_ref(s) is the
    unbiased sample variance for samples from ref, and for samples from p the
    self-normalised importance-weighted variance with weights p_ref/p (which
    stays >= 0; needs N >= 2 either way).
    """
    logp, logp_ref = _sample_inputs(logp, logp_ref, sampled_from)
    s = _values("s", s, logp)
    if s.shape[-1] < 2:
        raise ValueError("theory: drift_bound_from_logratios needs at least 2 samples")
    if sampled_from == "ref":
        var = s.var(-1, correction=1)
    else:
        v = torch.softmax(logp_ref - logp, dim=-1)  # self-normalised weights 1/w
        mean = (v * s).sum(-1, keepdim=True)
        var = (v * (s - mean) ** 2).sum(-1)
    c = chi2_from_logratios(logp, logp_ref, sampled_from).clamp_min(0)
    return torch.sqrt(var * c)
