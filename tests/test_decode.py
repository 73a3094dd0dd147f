"""The fast decode path (generate(fast=True), sampler.decode_step): each step, forward and sampling, one graph
compiled by torch.compile with dynamic shapes. Against the default path: the same greedy tokens and log-probs up to
rounding, the same sampled tokens given the same random draws (compiled and eager draw the same stream), stop
tokens, token limits and dropped rows, groups, and a clean fallback when compiling fails.

Compiling is opt-in (MINIRLVR_COMPILE_DECODE=1 sets sampler.COMPILE). The eager tests run with sampler.COMPILE off
(cheap); the compiled ones turn it on and compile a few graphs (tens of seconds each
on a loaded 2-core machine, once per process and model shape)."""

import os

import pytest
import torch

import kernels
from minirlvr import Transformer, generate
from minirlvr import sampler
# one_thread: test_sampler's autouse fixture, one torch thread for this module too
from test_sampler import MODELS, V, Calls, cut, full_forward_logprobs, one_thread, ragged_prompts, tiny  # noqa: F401

MINIWORLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "miniworld3-base")


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setattr(sampler, "COMPILE", False)


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(sampler, "COMPILE", True)


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return tiny(**MODELS[request.param])


@pytest.fixture(scope="module")
def miniworld():
    return Transformer.from_pretrained(MINIWORLD).eval()


def same_greedy(m, prompts, n, device="cpu"):
    default = generate(m, prompts, max_new_tokens=n)
    fast = generate(m, prompts, max_new_tokens=n, fast=True)
    assert fast.tokens == default.tokens
    torch.testing.assert_close(fast.logprobs_tensor, default.logprobs_tensor, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- eager

def test_eager_fast_greedy_equals_default(model, eager):
    same_greedy(model, ragged_prompts(1, (6, 2, 11, 1, 4)), 12)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (8, 0.8)])
def test_eager_fast_samples_with_the_model_s_logprobs(model, eager, top_k, top_p):
    prompts = ragged_prompts(2, (3, 8, 1))
    out = generate(model, prompts, max_new_tokens=14, temperature=1.0, top_k=top_k, top_p=top_p, seed=3,
                   num_samples=3, fast=True)
    again = generate(model, prompts, max_new_tokens=14, temperature=1.0, top_k=top_k, top_p=top_p, seed=3,
                     num_samples=3, fast=True)
    assert out.tokens == again.tokens and out.logprobs == again.logprobs
    if top_k == 0:  # untruncated: the log-probs are the full softmax's, as a cache-free forward computes them
        for r, (toks, lps) in enumerate(zip(out.tokens, out.logprobs)):
            ref = full_forward_logprobs(model, prompts[out.prompt_index[r]], toks, 1.0)
            torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), ref, atol=1e-5, rtol=0)


def test_eager_fast_stops_drops_rows_and_respects_the_limit(model, eager, monkeypatch):
    prompts = ragged_prompts(9, (3, 3, 5, 2, 4, 6))
    free = generate(model, prompts, max_new_tokens=12).tokens
    stop = {free[0][1], free[1][1], free[2][2]}
    calls = Calls(monkeypatch)
    out = generate(model, prompts, max_new_tokens=12, stop_ids=stop, fast=True)
    expected = [cut(row, stop) for row in free]
    assert out.tokens == expected
    n_live = [sum(len(e) > t for e in expected) for t in range(12)]
    assert calls.steps[2:] == [n_live[2]] * (len(calls.steps) - 2), "finished rows are dropped from the cache"
    for n in (1, 5):
        assert generate(model, prompts, max_new_tokens=n, stop_ids=stop, fast=True).tokens == \
            [cut(f, stop, n) for f in free]


def test_groups_equal_repeated_prompts(model, eager):
    prompts = ragged_prompts(8, (5, 2, 7))
    grouped = generate(model, prompts, max_new_tokens=9, temperature=1.0, seed=4, num_samples=3, fast=True)
    flat = generate(model, [p for p in prompts for _ in range(3)], max_new_tokens=9, temperature=1.0, seed=4,
                    fast=True)
    assert grouped.tokens == flat.tokens
    torch.testing.assert_close(grouped.logprobs_tensor, flat.logprobs_tensor, atol=1e-5, rtol=0)


def test_a_failing_compile_falls_back_to_eager(model, monkeypatch):
    def broken(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no C++ compiler"), None)
    prompts = ragged_prompts(3, (4, 2))
    monkeypatch.setattr(sampler, "COMPILE", False)
    reference = generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=1, fast=True)
    monkeypatch.setattr(sampler, "COMPILE", True)
    monkeypatch.setattr(sampler._compiled_step, "_compiled_fn", broken)
    monkeypatch.setattr(kernels, "_compile_broken", False)  # the process-wide switch, restored after the test
    with pytest.warns(UserWarning, match="torch.compile failed"):
        out = generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=1, fast=True)
    assert out.tokens == reference.tokens and not kernels.want_compile(None)


# ----------------------------------------------------------------------------------------- compiled

def test_compiled_greedy_equals_default_on_miniworld_and_a_gqa_model(miniworld, compiled):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, miniworld.config.vocab_size, (n,), generator=g).tolist() for n in (7, 1, 20, 12)]
    same_greedy(miniworld, prompts, 24)
    same_greedy(miniworld, prompts[:3], 10)  # other batch and cache sizes: the same (dynamic-shape) graph
    same_greedy(tiny("llama", num_key_value_heads=2), ragged_prompts(5, (4, 9, 1)), 10)


def test_compiled_samples_equal_eager_draws_on_miniworld(miniworld, compiled, monkeypatch):
    """The compiled step and the eager one take the same uniform numbers: the same tokens, log-probs up to rounding,
    with stop tokens ending rows (and rows dropped) along the way."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, miniworld.config.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 3)]
    kw = dict(max_new_tokens=20, temperature=1.0, seed=7, num_samples=8, stop_ids=list(range(0, 40)))
    compiled = generate(miniworld, prompts, fast=True, **kw)
    monkeypatch.setattr(sampler, "COMPILE", False)
    eager = generate(miniworld, prompts, fast=True, **kw)
    assert compiled.tokens == eager.tokens
    torch.testing.assert_close(compiled.logprobs_tensor, eager.logprobs_tensor, atol=1e-5, rtol=0)
    assert any(len(t) < 20 for t in eager.tokens), "test data: some rows should stop early"
    for r, (toks, lps) in enumerate(zip(compiled.tokens, compiled.logprobs)):
        ref = full_forward_logprobs(miniworld, prompts[compiled.prompt_index[r]], toks, 1.0)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), ref, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_greedy_on_cuda(miniworld, compiled):
    m = Transformer.from_pretrained(MINIWORLD, device="cuda").eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, m.config.vocab_size, (n,), generator=g).tolist() for n in (7, 1, 20)]
    default = generate(m, prompts, max_new_tokens=16)
    fast = generate(m, prompts, max_new_tokens=16, fast=True)
    assert fast.tokens == default.tokens
    torch.testing.assert_close(fast.logprobs_tensor, default.logprobs_tensor, atol=1e-4, rtol=0)
