"""kernels.policy_loss against token-by-token references written from the papers' formulas, closed forms,
and the slicing rule (micro-batches and ranks add up to the whole batch)."""

import itertools
import math
import os

import pytest
import torch

import kernels
from kernels import LossConfig, policy_loss

NO_COMPILE = os.environ.get("MINIRLVR_NO_COMPILE", "") not in ("", "0")


def reference_policy_loss(logp, old, ref, adv, mask, cfg: LossConfig):
    """Token by token, written from the papers' formulas (min() of the surrogates, not max() of losses)."""
    B, T = logp.shape
    w = mask.double()
    lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
    rows = []
    for b in range(B):
        n = sum(float(w[b, t] > 0) for t in range(T))
        # GSPO: s_b = (pi(y_b) / pi_old(y_b)) ** (1 / |y_b|), the geometric mean of the token ratios
        log_s = sum(w[b, t] * (logp[b, t].detach() - old[b, t]) for t in range(T)) / max(1.0, float(w[b].sum()))
        row = []
        for t in range(T):
            a = adv[b] if adv.dim() == 1 else adv[b, t]
            r = torch.exp(logp[b, t] - old[b, t])
            if cfg.loss == "ppo_clip":
                x = -torch.min(r * a, torch.clamp(r, lo, hi) * a)
            elif cfg.loss == "cispo":  # REINFORCE weighted by the clipped, constant ratio
                x = -torch.clamp(r.detach(), lo, hi) * a * logp[b, t]
            else:  # gspo, token form: value s_b, gradient s_b * grad log pi_t
                s_bt = torch.exp(log_s) * torch.exp(logp[b, t] - logp[b, t].detach())
                x = -torch.min(s_bt * a, torch.clamp(s_bt, lo, hi) * a)
            if ref is not None:
                log_ratio = logp[b, t] - ref[b, t]  # log pi/ref
                kl = {"k1": log_ratio, "k2": log_ratio**2 / 2,
                      "k3": torch.exp(-log_ratio) - 1 + log_ratio}[cfg.kl_estimator]
                x = x + cfg.kl_coef * kl
            row.append(x)
        rows.append(torch.stack(row))
    x = torch.stack(rows)
    responses = [b for b in range(B) if w[b].sum() > 0]
    if cfg.agg == "token_mean":
        return (x * w).sum() / w.sum()
    if cfg.agg == "seq_mean_token_mean":
        return torch.stack([(x[b] * w[b]).sum() / w[b].sum() for b in responses]).mean()
    return torch.stack([(x[b] * w[b]).sum() / (cfg.norm_len or T) for b in responses]).mean()


def loss_inputs(B=4, T=6, seed=0, adv_per_token=False, float_mask=False):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp.detach() + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) if adv_per_token else \
        torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    mask[-1] = False  # an empty sequence (all padding, or filtered out)
    if float_mask:
        mask = mask * torch.rand(B, T, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask


OPTIONS = list(itertools.product(list(kernels.POLICY_LOSSES), ["k1", "k2", "k3"], list(kernels.AGGREGATORS),
                                 [False, True], [False, True], [(0.2, 0.2), (0.2, 0.28)]))


@pytest.mark.parametrize("loss,est,agg,adv_per_token,float_mask,clip", OPTIONS)
def test_policy_loss_matches_token_by_token_reference(loss, est, agg, adv_per_token, float_mask, clip):
    logp, old, ref, adv, mask = loss_inputs(seed=len(est) + len(agg) + len(loss), adv_per_token=adv_per_token,
                                            float_mask=float_mask)
    cfg = LossConfig(loss=loss, clip_low=clip[0], clip_high=clip[1], kl_coef=0.3, kl_estimator=est, agg=agg,
                     norm_len=8 if agg == "seq_mean_token_sum_norm" else None)
    got, stats = policy_loss(logp, old, ref, adv, mask, cfg, compiled=False)
    (grad,) = torch.autograd.grad(got, logp)
    want = reference_policy_loss(logp, old, ref, adv, mask, cfg)
    (want_grad,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, want_grad, atol=1e-12, rtol=1e-12)
    # statistics, token-weighted by the mask
    w = mask.double()
    r = torch.exp(logp.detach() - old)
    if loss == "gspo":
        r = torch.exp((w * (logp.detach() - old)).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)).expand_as(r)
    a = adv[:, None].expand_as(r) if adv.dim() == 1 else adv
    low, high = (r < 1 - clip[0]).double(), (r > 1 + clip[1]).double()
    if loss != "cispo":  # where the clip zeroes the gradient: only on the side the advantage pushes towards
        low, high = low * (a < 0), high * (a > 0)
    d = ref - logp.detach()
    kl = {"k1": -d, "k2": d**2 / 2, "k3": d.exp() - d - 1}[est]
    for key, x in [("clip_frac_low", low), ("clip_frac_high", high), ("ratio_mean", r), ("kl_mean", kl)]:
        torch.testing.assert_close(stats[key], (x * w).sum() / w.sum(), atol=1e-12, rtol=0)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_gspo_and_cispo_differ_from_ppo_clip_where_they_should():
    # One response, two tokens, A = +1: token 0 far above the clip, token 1 below it.
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.5, -0.2]], dtype=torch.float64)  # token ratios e^0.5, e^-0.2
    adv, mask = torch.ones(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool)
    grads = {}
    for name in kernels.POLICY_LOSSES:
        loss, stats = policy_loss(logp, old, None, adv, mask, LossConfig(loss=name), compiled=False)
        (grads[name],) = torch.autograd.grad(loss, logp)
    # ppo_clip drops token 0 (clipped, no gradient) and pushes token 1 by its ratio
    assert grads["ppo_clip"][0, 0] == 0 and grads["ppo_clip"][0, 1] == pytest.approx(-math.exp(-0.2) / 2)
    # cispo keeps token 0, with its weight capped at 1 + clip_high
    assert grads["cispo"][0, 0] == pytest.approx(-1.2 / 2) and grads["cispo"][0, 1] == pytest.approx(-math.exp(-0.2) / 2)
    # gspo: one ratio for the response, exp(mean(0.5, -0.2)) = e^0.15, inside the clip: both tokens pushed by it
    torch.testing.assert_close(grads["gspo"], torch.full((1, 2), -math.exp(0.15) / 2, dtype=torch.float64))


# (A, ratio, clip_low, clip_high) -> (loss, d loss / d logp, clipped low, clipped high); T=1
ANALYTIC = [
    (+1.0, 1.5, 0.2, 0.2, -1.2, 0.0, 0, 1),    # good token pushed too far up: clipped, no gradient
    (+1.0, 0.5, 0.2, 0.2, -0.5, -0.5, 0, 0),   # good token below the trust region: still pushed up
    (-1.0, 0.5, 0.2, 0.2, 0.8, 0.0, 1, 0),     # bad token pushed too far down: clipped
    (-1.0, 1.5, 0.2, 0.2, 1.5, 1.5, 0, 0),     # bad token above: still pushed down
    (+1.0, 1.25, 0.2, 0.28, -1.25, -1.25, 0, 0),  # clip-higher (DAPO) leaves room up to 1.28 ...
    (+1.0, 1.25, 0.2, 0.2, -1.2, 0.0, 0, 1),   # ... which the symmetric clip would have cut
    (-1.0, 0.75, 0.2, 0.28, 0.8, 0.0, 1, 0),   # the lower bound is unchanged by clip-higher
    (+2.0, 1.0, 0.2, 0.2, -2.0, -2.0, 0, 0),   # on-policy: plain policy gradient
    (0.0, 3.0, 0.2, 0.2, 0.0, 0.0, 0, 0),      # zero advantage: nothing, not counted as clipped
]


@pytest.mark.parametrize("adv,ratio,clip_low,clip_high,loss,grad,low,high", ANALYTIC)
def test_ppo_clip_analytic(adv, ratio, clip_low, clip_high, loss, grad, low, high):
    logp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    old = logp.detach() - math.log(ratio)
    got, stats = policy_loss(logp, old, None, torch.tensor([adv], dtype=torch.float64),
                             torch.ones(1, 1, dtype=torch.bool), LossConfig(clip_low=clip_low, clip_high=clip_high),
                             compiled=False)
    got.backward()
    assert got.item() == pytest.approx(loss, abs=1e-12)
    assert logp.grad.item() == pytest.approx(grad, abs=1e-12)
    assert (stats["clip_frac_low"].item(), stats["clip_frac_high"].item()) == (low, high)
    assert stats["ratio_mean"].item() == pytest.approx(ratio)
    assert "kl_mean" not in stats


def test_extreme_log_ratios_stay_finite():
    # B7: a token the policy has all but ruled out (log pi = -95 where ref and old gave it -1)
    logp = torch.tensor([[-95.0, -1.0]], requires_grad=True)
    old = ref = torch.tensor([[-1.0, -95.0]])
    for name in kernels.POLICY_LOSSES:
        for est in kernels.KL_ESTIMATORS:
            loss, stats = policy_loss(logp, old, ref, torch.tensor([1.0]), torch.ones(1, 2),
                                      LossConfig(loss=name, kl_coef=0.1, kl_estimator=est), compiled=False)
            (g,) = torch.autograd.grad(loss, logp)
            assert torch.isfinite(loss) and torch.isfinite(g).all(), (name, est)
            assert all(torch.isfinite(v) for v in stats.values()), (name, est)
    assert torch.isfinite(kernels.KL_ESTIMATORS["k3"](torch.tensor(-95.0), torch.tensor(-1.0)))


def test_policy_loss_gradient_only_into_logp():
    logp, old, ref, adv, mask = loss_inputs(seed=11)
    old, ref, adv = old.requires_grad_(), ref.requires_grad_(), adv.requires_grad_()
    for name in kernels.POLICY_LOSSES:
        loss, _ = policy_loss(logp, old, ref, adv, mask, LossConfig(loss=name, kl_coef=0.1), compiled=False)
        loss.backward()
        assert logp.grad is not None and old.grad is None and ref.grad is None and adv.grad is None


@pytest.mark.parametrize("agg", list(kernels.AGGREGATORS))
def test_slices_with_the_global_unit_count_add_up_to_the_whole(agg):
    # B3: split a batch (micro-batches, ranks) into slices; each passes the whole batch's units, and the
    # slices' losses and gradients add up to the unsplit ones, also with fully masked (filtered) rows.
    logp, old, ref, adv, mask = loss_inputs(B=6, T=5, seed=12)
    mask[1] = False  # a second filtered row, in the first slice
    cfg = LossConfig(kl_coef=0.1, agg=agg, norm_len=7)
    whole, _ = policy_loss(logp, old, ref, adv, mask, cfg, compiled=False)
    (want,) = torch.autograd.grad(whole, logp)
    units = kernels.loss_units(mask, agg)
    total, grad = 0.0, torch.zeros_like(logp)
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part, _ = policy_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], cfg, units=units, compiled=False)
        total = total + part
        grad += torch.autograd.grad(part, logp)[0]
    torch.testing.assert_close(total, whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=1e-12)
    if agg != "token_mean":  # every response with tokens weighs the same, the filtered ones nothing
        assert units.item() == 4


def test_policy_loss_masks_and_aggregators():
    logp, old, ref, adv, mask = loss_inputs(B=3, T=5, seed=9)
    # a bool mask and the same mask as 0/1 floats give identical results
    for agg in kernels.AGGREGATORS:
        a, sa = policy_loss(logp, old, ref, adv, mask, LossConfig(kl_coef=0.1, agg=agg), compiled=False)
        b, sb = policy_loss(logp, old, ref, adv, mask.double(), LossConfig(kl_coef=0.1, agg=agg), compiled=False)
        assert a.item() == b.item() and all(sa[k].item() == sb[k].item() for k in sa)
    # scaling float weights leaves the means unchanged and scales Dr.GRPO's sum
    w = mask * torch.rand(3, 5, dtype=torch.float64)
    for agg, factor in [("token_mean", 1.0), ("seq_mean_token_mean", 1.0), ("seq_mean_token_sum_norm", 3.0)]:
        a, _ = policy_loss(logp, old, ref, adv, w, LossConfig(kl_coef=0.1, agg=agg), compiled=False)
        b, _ = policy_loss(logp, old, ref, adv, 3 * w, LossConfig(kl_coef=0.1, agg=agg), compiled=False)
        torch.testing.assert_close(b, factor * a, atol=1e-12, rtol=1e-12)
    # Dr.GRPO: token sums over a constant, default T
    x, _ = policy_loss(logp, old, None, adv, mask, LossConfig(agg="seq_mean_token_sum_norm"), compiled=False)
    y, _ = policy_loss(logp, old, None, adv, mask, LossConfig(agg="seq_mean_token_sum_norm", norm_len=10),
                       compiled=False)
    torch.testing.assert_close(y, x / 2, atol=1e-12, rtol=1e-12)
    # an all-empty mask gives a zero loss and zero gradient, never NaN
    for agg in kernels.AGGREGATORS:
        loss, stats = policy_loss(logp, old, ref, adv, torch.zeros(3, 5, dtype=torch.bool),
                                  LossConfig(kl_coef=0.1, agg=agg), compiled=False)
        (g,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0 and (g == 0).all() and not any(v.isnan() for v in stats.values())


def test_policy_loss_entropy_kl_coef_and_errors():
    logp, old, ref, adv, mask = loss_inputs(seed=10)
    ent = torch.rand(4, 6, dtype=torch.float64)
    l0, s0 = policy_loss(logp, old, ref, adv, mask, LossConfig(kl_coef=0.0), entropy=ent, compiled=False)
    l1, s1 = policy_loss(logp, old, ref, adv, mask, LossConfig(kl_coef=0.5), entropy=ent, compiled=False)
    w = mask.double()
    torch.testing.assert_close(s0["entropy_mean"], (ent * w).sum() / w.sum(), atol=1e-12, rtol=0)
    torch.testing.assert_close(l1, l0 + 0.5 * s0["kl_loss"], atol=1e-12, rtol=1e-12)
    assert s0["pg_loss"].item() == pytest.approx(l0.item())
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, old, None, adv, mask, LossConfig(kl_coef=0.1), compiled=False)
    with pytest.raises(ValueError, match=r"unknown kl_estimator 'k4'.*'k1', 'k2', 'k3'"):
        policy_loss(logp, old, ref, adv, mask, LossConfig(kl_estimator="k4"), compiled=False)
    with pytest.raises(ValueError, match="unknown agg"):
        policy_loss(logp, old, ref, adv, mask, LossConfig(agg="sum"), compiled=False)
    with pytest.raises(ValueError, match=r"unknown loss 'ppo'.*'cispo', 'gspo', 'ppo_clip'"):
        policy_loss(logp, old, ref, adv, mask, LossConfig(loss="ppo"), compiled=False)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, old, ref, adv[:2], mask, compiled=False)
    with pytest.raises(ValueError, match="mask must have"):
        policy_loss(logp, old, ref, adv, mask[:, :3], compiled=False)


@pytest.mark.skipif(NO_COMPILE, reason="MINIRLVR_NO_COMPILE")
def test_policy_loss_compiled_equals_eager():
    for seed, (B, T) in enumerate([(4, 6), (3, 9), (5, 7)]):  # shapes vary: one dynamic graph
        logp, old, ref, adv, mask = loss_inputs(B=B, T=T, seed=seed, float_mask=True)
        logp32 = logp.detach().float().requires_grad_()
        out = []
        for compiled in [True, False]:
            loss, stats = policy_loss(logp32, old.float(), ref.float(), adv.float(), mask.float(),
                                      LossConfig(clip_high=0.28, kl_coef=0.1, kl_estimator="k3"), compiled=compiled)
            (g,) = torch.autograd.grad(loss, logp32)
            out.append((loss, g, stats))
        (l1, g1, s1), (l2, g2, s2) = out
        torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(g1, g2, atol=1e-7, rtol=1e-6)
        for k in s1:
            torch.testing.assert_close(s1[k], s2[k], atol=1e-6, rtol=1e-6)


def test_the_readme_loss_example_plugs_in(monkeypatch):
    from kernels.policy_loss import TokenLoss, log_ratio

    def reinforce(logp, old_logp, adv, mask, cfg):
        ratio = torch.exp(log_ratio(logp, old_logp))
        never = torch.zeros_like(mask, dtype=torch.bool)
        return TokenLoss(-adv * ratio, ratio.detach(), never, never)
    monkeypatch.setitem(kernels.POLICY_LOSSES, "reinforce", reinforce)
    logp, old, ref, adv, mask = loss_inputs(seed=13)
    loss, stats = policy_loss(logp, old, None, adv, mask, LossConfig(loss="reinforce"), compiled=False)
    w = mask.double()
    want = (-adv[:, None] * torch.exp(logp - old) * w).sum() / w.sum()
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)
    assert stats["clip_frac"] == 0
