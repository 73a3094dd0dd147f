"""kernels.token_logprobs against the naive log-softmax, float64 and gradcheck; the compile switch.

Most checks run eagerly (compiled=False), the compiled path is checked on a
few cases that share shapes, so that only a handful of graphs get compiled.
Both paths run the same Python function; the compiled cases prove that
Inductor's fused code computes the same numbers.
"""

import math
import os
import warnings

import pytest
import torch

import kernels
import kernels
from kernels import token_logprobs

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
    assert not kernels.want_compile(True) and not kernels.want_compile(None)
    monkeypatch.delenv("MINIRLVR_NO_COMPILE")
    assert kernels.want_compile(True) and not kernels.want_compile(False)

    # compiled=None: a failing compile warns once, falls back to eager, and stays eager
    def compile_fails_with(err):
        def fake_compile(fn, **kw):
            def run_it(*a):
                raise err
            return run_it
        return fake_compile
    failed = torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler here"), None)
    monkeypatch.setattr(kernels, "_compile_broken", False)
    monkeypatch.setattr(torch, "compile", compile_fails_with(failed))
    fresh = kernels.MaybeCompiled(lambda x: x + 1)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert fresh(None, torch.tensor(1.0)) == 2
    assert not kernels.want_compile(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh(None, torch.tensor(2.0)) == 3  # no second warning, no second attempt
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed):  # compiled=True does not hide the error
        kernels.MaybeCompiled(lambda x: x)(True, torch.tensor(1.0))


def test_errors_of_the_computation_are_not_compile_failures(monkeypatch):
    # B7: out of memory (or any error of the computation) must propagate and leave compilation on,
    # not switch the process to eager for good
    def oom_compile(fn, **kw):
        def run_it(*a):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run_it
    monkeypatch.setattr(kernels, "_compile_broken", False)
    monkeypatch.setattr(torch, "compile", oom_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(torch.OutOfMemoryError):
            kernels.MaybeCompiled(lambda x: x + 1)(None, torch.tensor(1.0))
    assert kernels.want_compile(None)
