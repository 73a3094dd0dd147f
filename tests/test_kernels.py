"""kernels.token_logprobs and kernels.policy_loss against naive and reference implementations.

Most checks run eagerly (compiled=False), the compiled path is checked on a
few cases that share shapes, so that only a handful of graphs get compiled.
Both paths run the same Python function; the compiled cases prove that
Inductor's fused code computes the same numbers.
"""

import itertools
import math
import os
import warnings

import pytest
import torch

import kernels
import kernels._compile
from kernels import LossConfig, policy_loss, token_logprobs

NO_COMPILE = os.environ.get("MINIRLVR_NO_COMPILE", "") not in ("", "0")
COMPILE_MODES = [False, pytest.param(True, marks=pytest.mark.skipif(NO_COMPILE, reason="MINIRLVR_NO_COMPILE"))]
V, H = 300, 16  # every compiled logprob test uses this vocabulary: one forward + one backward graph


def naive_logprobs(hidden, weight, targets, temperature=1.0):
    """The textbook version: full [N,V] log-softmax, gather, entropy."""
    logsm = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    return logsm.gather(1, targets[:, None]).squeeze(1), -(logsm.exp() * logsm).sum(-1)


def make_inputs(n, v=V, h=H, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * scale).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    g_logp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return hidden, weight, targets, g_logp, g_ent


def run(fn, hidden, weight, targets, g_logp, g_ent, **kw):
    """Values and gradients w.r.t. hidden and weight for loss = <g_logp, logp> + <g_ent, entropy>."""
    hidden.grad = weight.grad = None
    logp, ent = fn(hidden, weight, targets, **kw)
    ((logp * g_logp).sum() + (ent * g_ent).sum()).backward()
    return logp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone()


def ours(hidden, weight, targets, **kw):
    return token_logprobs(hidden, weight, targets, return_entropy=True, **kw)


# ----------------------------------------------------------------------------- token_logprobs


@pytest.mark.parametrize("compiled", COMPILE_MODES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_naive_fp32(compiled, temperature):
    # N=37 with chunks of 16: two full chunks and a ragged one. "Within 1e-5" is absolute and
    # relative (grads reach |10| here, where one fp32 ulp is 1e-6); against the naive fp32
    # result and against the float64 truth, which both fp32 versions miss by a few ulp.
    args = make_inputs(37)
    got = run(ours, *args, temperature=temperature, chunk_size=16, compiled=compiled)
    want = run(naive_logprobs, *args, temperature=temperature)
    hidden, weight, targets, g_logp, g_ent = args
    exact = run(naive_logprobs, hidden.detach().double().requires_grad_(),
                weight.detach().double().requires_grad_(), targets, g_logp.double(), g_ent.double(),
                temperature=temperature)
    for name, a, b, c in zip(["logp", "entropy", "grad hidden", "grad weight"], got, want, exact):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} vs naive: {m}")
        torch.testing.assert_close(a.double(), c, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} vs fp64: {m}")


@pytest.mark.parametrize("compiled", COMPILE_MODES)
@pytest.mark.parametrize("n,chunk_size", [(1, 16), (16, 16), (33, 16), (5, 1), (20, 1024)])
def test_chunk_boundaries(compiled, n, chunk_size):
    # exact multiple, ragged tail, one row, one row per chunk, chunk larger than N
    args = make_inputs(n, seed=n)
    got = run(ours, *args, chunk_size=chunk_size, compiled=compiled)
    want = run(naive_logprobs, *args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    # small shapes, a ragged chunk, a temperature and ignored positions; both outputs differentiated
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 10, -100, 4, 4, -100, 7])

    def f(h, w):
        return token_logprobs(h, w, targets, temperature=0.8, return_entropy=True,
                              chunk_size=2, compiled=False)
    assert f(hidden, weight)[0].dtype == torch.float64
    assert torch.autograd.gradcheck(f, (hidden, weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("compiled", COMPILE_MODES)
def test_entropy_peaked_and_flat(compiled):
    # very peaked rows (large logits) are where lse - sum(p z) would cancel; compare to float64
    hidden, weight, targets, g_logp, g_ent = make_inputs(24, scale=8.0, seed=3)
    with torch.no_grad():
        hidden[:4] = 0.0  # flat rows: entropy = log V exactly
    _, ent = token_logprobs(hidden, weight, targets, return_entropy=True, chunk_size=16, compiled=compiled)
    _, want = naive_logprobs(hidden.double(), weight.double(), targets)
    torch.testing.assert_close(ent.double(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[:4], torch.full((4,), math.log(V)), atol=1e-5, rtol=0)
    assert want[4:].min() < 0.1  # the test really covers peaked rows


def test_bf16_inputs():
    # Matmuls and softmax run in fp32 on the bf16 values, so the result equals fp32 math on
    # the same (bf16-rounded) numbers to 1e-5; the grads come back in bf16 (8-bit mantissa),
    # so they match to bf16 rounding, rtol 2**-7. A bf16 naive is far worse (logits rounded).
    h16, w16, targets, g_logp, g_ent = make_inputs(40, dtype=torch.bfloat16, seed=4)
    got = run(ours, h16, w16, targets, g_logp, g_ent, chunk_size=16, compiled=False)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16
    h32 = h16.detach().float().requires_grad_()
    w32 = w16.detach().float().requires_grad_()
    want = run(naive_logprobs, h32, w32, targets, g_logp, g_ent)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    for a, b in zip(got[2:], want[2:]):
        torch.testing.assert_close(a.float(), b, atol=1e-6, rtol=2**-7)
    naive16 = naive_logprobs(h16.detach(), w16.detach(), targets)[0].float()
    assert (naive16 - want[0]).abs().max() > 10 * (got[0] - want[0]).abs().max()


def test_ignore_index():
    hidden, weight, targets, g_logp, g_ent = make_inputs(30, seed=5)
    targets[[0, 7, 8, 29]] = -100
    keep = targets != -100
    logp, ent, gh, gw = run(ours, hidden, weight, targets, g_logp, g_ent, chunk_size=8, compiled=False)
    assert (logp[~keep] == 0).all() and (ent[~keep] == 0).all() and (gh[~keep] == 0).all()
    # the kept positions behave exactly as if the ignored rows had never been there
    h2 = hidden.detach()[keep].requires_grad_()
    want = run(naive_logprobs, h2, weight, targets[keep], g_logp[keep], g_ent[keep])
    torch.testing.assert_close(logp[keep], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[keep], want[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(gh[keep], want[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, want[3], atol=1e-5, rtol=1e-5)
    # a custom ignore_index, and everything ignored
    t7 = torch.where(keep, targets, torch.tensor(7_000))
    torch.testing.assert_close(token_logprobs(hidden, weight, t7, ignore_index=7_000, compiled=False),
                               logp, atol=0, rtol=0)
    out = token_logprobs(hidden, weight, torch.full((30,), -100), compiled=False)
    out.sum().backward()
    assert (out == 0).all() and out.shape == (30,)


def test_only_one_chunk_of_logits_exists():
    # Record every tensor that the eager forward + backward creates: none may be as large as
    # [N, V]; the largest is one chunk of logits. The naive version does create [N, V].
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    n, chunk = 64, 16
    args = make_inputs(n, seed=6)
    with Largest() as mode:
        run(ours, *args, chunk_size=chunk, compiled=False)
    assert mode.largest == chunk * V
    with Largest() as mode:
        run(naive_logprobs, *args)
    assert mode.largest == n * V


def test_weight_without_grad_and_hidden_without_grad():
    hidden, weight, targets, g_logp, _ = make_inputs(10, seed=7)
    frozen = weight.detach()
    token_logprobs(hidden, frozen, targets, chunk_size=4, compiled=False).mul(g_logp).sum().backward()
    want = hidden.grad.clone()
    hidden.grad = None
    naive_logprobs(hidden, frozen, targets)[0].mul(g_logp).sum().backward()
    torch.testing.assert_close(want, hidden.grad, atol=1e-5, rtol=1e-5)
    token_logprobs(hidden.detach(), weight, targets, compiled=False).mul(g_logp).sum().backward()
    assert weight.grad is not None and hidden.grad is not None


def test_autocast_multiplies_in_bf16_and_sums_in_fp32():
    # Under bf16 autocast the lm_head products are bf16 (as nn.Linear's would be) but the logits, the softmax
    # and every sum stay fp32: the result equals fp32 math on the bf16-rounded inputs, not bf16 logits.
    hidden, weight, targets, g_logp, g_ent = make_inputs(40, seed=8)
    h16 = hidden.detach().bfloat16().float().requires_grad_()
    w16 = weight.detach().bfloat16().float().requires_grad_()
    want = run(naive_logprobs, h16, w16, targets, g_logp, g_ent)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(ours, hidden, weight, targets, g_logp, g_ent, chunk_size=16, compiled=False)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    exact = run(naive_logprobs, hidden, weight, targets, g_logp, g_ent)
    assert (got[0] - exact[0]).abs().max() > 1e-4  # the products really were bf16


def test_bad_inputs_fail_fast():
    hidden, weight, targets, _, _ = make_inputs(4)
    with pytest.raises(ValueError, match="targets must be in"):
        token_logprobs(hidden, weight, torch.tensor([0, 1, V, 2]), compiled=False)
    with pytest.raises(ValueError, match="shape mismatch"):
        token_logprobs(hidden, weight[:, :3], targets, compiled=False)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0, compiled=False)


def test_compile_switch(monkeypatch):
    # the env var forces eager even when compile is requested
    monkeypatch.setenv("MINIRLVR_NO_COMPILE", "1")
    assert not kernels._compile.want_compile(True) and not kernels._compile.want_compile(None)
    monkeypatch.delenv("MINIRLVR_NO_COMPILE")
    assert kernels._compile.want_compile(True) and not kernels._compile.want_compile(False)

    # compiled=None: a failing compile warns once, falls back to eager, and stays eager
    def compile_fails_with(err):
        def fake_compile(fn, **kw):
            def run_it(*a):
                raise err
            return run_it
        return fake_compile
    failed = torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler here"), None)
    monkeypatch.setattr(kernels._compile, "_compile_broken", False)
    monkeypatch.setattr(torch, "compile", compile_fails_with(failed))
    fresh = kernels._compile.MaybeCompiled(lambda x: x + 1)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert fresh(None, torch.tensor(1.0)) == 2
    assert not kernels._compile.want_compile(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh(None, torch.tensor(2.0)) == 3  # no second warning, no second attempt
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed):  # compiled=True does not hide the error
        kernels._compile.MaybeCompiled(lambda x: x)(True, torch.tensor(1.0))


def test_errors_of_the_computation_are_not_compile_failures(monkeypatch):
    # B7: out of memory (or any error of the computation) must propagate and leave compilation on,
    # not switch the process to eager for good
    def oom_compile(fn, **kw):
        def run_it(*a):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run_it
    monkeypatch.setattr(kernels._compile, "_compile_broken", False)
    monkeypatch.setattr(torch, "compile", oom_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(torch.OutOfMemoryError):
            kernels._compile.MaybeCompiled(lambda x: x + 1)(None, torch.tensor(1.0))
    assert kernels._compile.want_compile(None)


# ----------------------------------------------------------------------------- policy_loss


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
