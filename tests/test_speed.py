"""The speed paths behind `fast` (GRPOConfig.fast, eval.py --fast) compute what the default paths compute, up to
rounding: the packed log-prob forward against the padded one (values, entropies, gradients; groups cut and
sharing rows), the inverse-CDF draw
against the distribution, and fast generation's log-probs against a full forward."""

import dataclasses

import pytest
import torch

from minirlvr import generate
from minirlvr.rollout import pack_units, packed_hidden, response_logprobs
from minirlvr.sampler import build_batch, sample
# one_thread: test_sampler's autouse fixture, one torch thread for this module too
from test_sampler import V, full_forward_logprobs, one_thread, ragged_prompts, tiny  # noqa: F401


def grouped_batch(seed: int = 0, G: int = 3):
    """Three ragged prompts x G ragged responses (one of them empty), prompt-major as a rollout lays them out."""
    g = torch.Generator().manual_seed(seed)
    prompts = ragged_prompts(seed, (4, 9, 1))
    rows = [p for p in prompts for _ in range(G)]
    lengths = [int(n) for n in torch.randint(1, 8, (len(rows),), generator=g)]
    lengths[1] = 0
    responses = [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]
    return build_batch(rows, responses, pad_id=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("rows", [slice(None), torch.tensor([8, 0, 4, 5, 2])])  # all rows; a micro-batch across groups
def test_packed_logprobs_equal_padded(kind, rows):
    m = tiny(kind, num_key_value_heads=1 if kind == "qwen2" else 2).double()
    batch = grouped_batch()
    out = {}
    for pack in (False, True):
        m.zero_grad()
        logp, ent = response_logprobs(m, dataclasses.replace(batch, pack=pack), 0.7, rows, with_entropy=True)
        weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
        ((logp + 0.3 * ent) * weights).sum().backward()
        out[pack] = logp.detach(), ent.detach(), [p.grad.clone() for p in m.parameters()]
    (lp0, e0, g0), (lp1, e1, g1) = out[False], out[True]
    assert (lp0 != 0).sum() == (batch.rows(rows).response_mask != 0).sum()  # the test means something
    torch.testing.assert_close(lp1, lp0, atol=1e-10, rtol=0)
    torch.testing.assert_close(e1, e0, atol=1e-10, rtol=0)
    for a, b in zip(g1, g0):  # RMSNorm computes in fp32 whatever the dtype, so the sums of a shared prompt's
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # gradients round at fp32 level


def test_packing_computes_one_forward_no_wider_than_one_group_per_row():
    m = tiny()
    batch = grouped_batch(G=4)
    seen = []
    forward = m.forward
    m.forward = lambda ids, **kw: (seen.append(tuple(ids.shape)), forward(ids, **kw))[1]
    hidden, row, col = packed_hidden(m, batch)
    prompt_tokens = batch.key_mask[:, :batch.prompt_len].sum(1)
    n_resp = int(batch.response_mask.sum())
    group_len = [int(prompt_tokens[4 * u]) + int(batch.response_mask[4 * u:4 * u + 4].sum()) for u in range(3)]
    (rows, S), = seen  # one forward ...
    assert rows * S <= 3 * max(group_len)  # ... over no more tokens than one group per row would take
    assert hidden.shape[0] == n_resp == len(row) == len(col)


def uneven_batch(seed: int = 0):
    """Four 2-token prompts x 4 responses, one group much longer than the others: the packer cuts the long group
    into four units of 12 tokens and puts two short groups in one row (6 rows x 12 slots, not 2 x 42)."""
    g = torch.Generator().manual_seed(seed)
    prompts = ragged_prompts(seed, (2, 2, 2, 2))
    rows = [p for p in prompts for _ in range(4)]
    lengths = [10] * 4 + [1] * 12
    lengths[5] = 0
    responses = [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]
    return build_batch(rows, responses, pad_id=0)


def test_pack_units_cuts_long_groups_and_shares_rows():
    batch = uneven_batch()
    plen = batch.key_mask[:, :batch.prompt_len].sum(1).tolist()
    rlen = batch.response_mask.sum(1).long().tolist()
    groups = [(plen[4 * u], rlen[4 * u:4 * u + 4]) for u in range(4)]
    S, rows = pack_units(groups)
    units = sorted(unit for r in rows for unit in r)
    for g, (p, rs) in enumerate(groups):  # every response once, in order, each unit within S tokens
        mine = [(lo, hi) for gg, lo, hi in units if gg == g]
        assert [k for lo, hi in mine for k in range(lo, hi)] == list(range(len(rs)))
        assert all(p + sum(rs[lo:hi]) <= S for lo, hi in mine)
    for r in rows:
        assert sum(groups[g][0] + sum(groups[g][1][lo:hi]) for g, lo, hi in r) <= S
    assert len(rows) * S < len(groups) * max(p + sum(rs) for p, rs in groups)  # fewer slots than a group per row
    assert len(units) > len(groups) and any(len(r) > 1 for r in rows)  # the test means something: cut and shared
    for p, rs in [(3, [0, 0]), (4, [7]), (2, [1, 1, 1])]:  # edge cases: empty responses, one response
        S, rows = pack_units([(p, rs)])
        assert sorted(k for r in rows for _, lo, hi in r for k in range(lo, hi)) == list(range(len(rs)))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_logprobs_equal_padded_when_groups_are_cut_and_share_rows(kind):
    m = tiny(kind, num_key_value_heads=1 if kind == "qwen2" else 2).double()
    batch = uneven_batch()
    out = {}
    for pack in (False, True):
        m.zero_grad()
        logp, ent = response_logprobs(m, dataclasses.replace(batch, pack=pack), 0.7, with_entropy=True)
        weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
        ((logp + 0.3 * ent) * weights).sum().backward()
        out[pack] = logp.detach(), ent.detach(), [p.grad.clone() for p in m.parameters()]
    (lp0, e0, g0), (lp1, e1, g1) = out[False], out[True]
    torch.testing.assert_close(lp1, lp0, atol=1e-10, rtol=0)
    torch.testing.assert_close(e1, e0, atol=1e-10, rtol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fast_sample_follows_the_distribution_and_never_draws_a_filtered_token():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -3.0]]).expand(40000, 6)
    g = torch.Generator().manual_seed(0)
    tokens, lps = sample(logits, 0.8, 4, 1.0, g, fast=True)  # top-4: tokens 3 and 5 are out
    probs = torch.zeros(6)
    keep = torch.tensor([0, 1, 2, 4])
    probs[keep] = (logits[0, keep] / 0.8).softmax(-1)
    freq = torch.bincount(tokens, minlength=6).double() / len(tokens)
    assert freq[3] == 0 and freq[5] == 0
    assert (freq - probs).abs().max() < 0.01  # 4+ binomial standard deviations
    torch.testing.assert_close(lps, probs.log()[tokens], atol=1e-6, rtol=0)


def test_fast_generate_is_reproducible_and_its_logprobs_are_the_model_s():
    m = tiny()
    prompts = ragged_prompts(2, (3, 8, 1))
    a = generate(m, prompts, max_new_tokens=12, temperature=0.9, seed=3, num_samples=2, fast=True)
    b = generate(m, prompts, max_new_tokens=12, temperature=0.9, seed=3, num_samples=2, fast=True)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    for r, (toks, lps) in enumerate(zip(a.tokens, a.logprobs)):
        ref = full_forward_logprobs(m, prompts[a.prompt_index[r]], toks, 0.9)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), ref, atol=1e-5, rtol=0)
