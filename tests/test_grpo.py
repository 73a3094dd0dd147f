"""The GRPO update step: micro-batching (and the zero-variance filter with per-response averaging) leaves the
update of a minibatch unchanged; the loop's pieces line up with the rollout's layout."""

import copy

import pytest
import torch

from minirlvr.grpo import GRPOConfig, loss_config, micro_batches, policy_step
from minirlvr.model import ModelConfig, Transformer
from minirlvr.rollout import response_logprobs
from minirlvr.sampler import build_batch


def setup(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (3, 5, 2, 4, 6, 3)]
    responses = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (4, 1, 6, 3, 5, 2)]
    batch = build_batch(prompts, responses)
    with torch.no_grad():
        old = response_logprobs(model, batch) + 0.1 * torch.randn(batch.response_mask.shape, generator=g)
        ref = response_logprobs(model, batch) - 0.1 * torch.randn(batch.response_mask.shape, generator=g)
    return model, batch, old, ref, torch.randn(6, generator=g)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("loss", ["ppo_clip", "gspo"])
def test_micro_batches_give_the_update_of_the_whole_minibatch(agg, loss):
    model, batch, old, ref, adv = setup()
    mask = batch.response_mask.clone()
    mask[[1, 4]] = 0.0  # two responses filtered out (zero-variance groups): B3's setting
    cfg = GRPOConfig(init="m", data=["d"], agg=agg, loss=loss, kl_coef=0.1, grad_clip=0.0)
    rows = torch.tensor([0, 2, 1, 5, 4])  # a minibatch, in shuffled order
    updated, stats = [], []
    for micro in (0, 2, 1):  # whole, pairs, one row at a time
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)  # the update is minus the gradient: compare those
        stats.append(policy_step(m, opt, batch, rows, old.clone(), ref, adv, mask,
                                 GRPOConfig(**{**vars(cfg), "micro_batch_size": micro}), loss_config(cfg, 0.1), 0,
                                 on_policy=False))
        updated.append(m.state_dict())
    for other in updated[1:]:
        for k in updated[0]:
            torch.testing.assert_close(other[k], updated[0][k], atol=2e-6, rtol=1e-5, msg=k)
    for other in stats[1:]:
        for k in ("loss", "pg_loss", "kl_loss", "ratio_mean", "clip_frac", "kl_mean", "entropy_mean"):
            assert other[k] == pytest.approx(stats[0][k], rel=1e-5, abs=1e-6), k


def test_on_policy_step_records_the_old_logprobs():
    model, batch, _, ref, adv = setup(1)
    cfg = GRPOConfig(init="m", data=["d"], micro_batch_size=4)
    old = torch.zeros_like(batch.response_mask)
    s = policy_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, torch.arange(6), old, ref, adv,
                    batch.response_mask, cfg, loss_config(cfg, 0.05), 0, on_policy=True)
    with torch.no_grad():
        torch.testing.assert_close(old, response_logprobs(model, batch), atol=1e-6, rtol=0)
    assert s["ratio_mean"] == pytest.approx(1.0) and s["clip_frac"] == 0.0


def test_micro_batches_split_rows():
    rows = torch.arange(7)
    assert [r.tolist() for r in micro_batches(rows, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [r.tolist() for r in micro_batches(rows, 0)] == [list(range(7))]
    assert micro_batches(rows[:0], 3) == []


@pytest.mark.parametrize("micro", [0, 4])
def test_on_policy_update_equals_the_update_with_a_separate_old_pass(micro):
    """One epoch, one minibatch: old = logp.detach() of the update's own forward (no no-grad "old" pass) makes the
    update the separate pass makes: ratio exactly 1, the same loss, statistics and gradients up to rounding."""
    model, batch, _, ref, adv = setup(2)
    cfg = GRPOConfig(init="m", data=["d"], micro_batch_size=micro, grad_clip=0.0)
    out = []
    for on_policy in (True, False):
        m = copy.deepcopy(model)
        with torch.no_grad():
            old = torch.zeros_like(batch.response_mask) if on_policy else response_logprobs(m, batch)
        stats = policy_step(m, torch.optim.SGD(m.parameters(), lr=1.0), batch, torch.arange(6), old, ref, adv,
                            batch.response_mask, cfg, loss_config(cfg, 0.05), 0, on_policy=on_policy)
        out.append((stats, m.state_dict()))
    (s1, w1), (s0, w0) = out
    # every token's ratio is exp(logp - logp.detach()) = 1 exactly; their masked mean rounds in fp32
    assert s1["ratio_mean"] == pytest.approx(1.0, abs=1e-7) and s1["clip_frac"] == 0.0
    for k in ("loss", "pg_loss", "kl_loss", "ratio_mean", "kl_mean", "entropy_mean"):
        assert s1[k] == pytest.approx(s0[k], rel=1e-6, abs=1e-7), k
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=1e-6, rtol=1e-6, msg=k)
