"""bf16 autocast (`--bf16 true`): how far its log-probs are from fp32's, and that GRPO in bf16 learns as fp32 does.

This CPU has no bf16 matmul units (AVX2 only), so bf16 is slower here, not faster; these tests check that it is
right, which is what a GPU or an AVX-512 BF16 / AMX machine needs."""

import json
from pathlib import Path

import pytest
import torch

from minirlvr import Transformer, generate
from minirlvr.optim import autocast
from minirlvr.rollout import response_logprobs
from minirlvr.sampler import build_batch
from test_train import metrics, rl_args, tiny, train_rl  # noqa: F401 (tiny is a fixture)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "miniworld3-base"


@pytest.mark.skipif(not BASE.exists(), reason="assets/miniworld3-base not built")
def test_bf16_response_logprobs_stay_within_a_bound_of_fp32():
    # The lm_head and every linear layer multiply in bf16 (8-bit mantissa) while kernels.token_logprobs sums
    # and normalises in fp32, so the error per token stays small. Measured on this model: mean 0.0011 nats,
    # max 0.035 over 384 sampled tokens; the bounds are about 4x that.
    torch.manual_seed(0)
    model = Transformer.from_pretrained(BASE).eval()
    prompts = [[1 + (7 * i + j) % 200 for j in range(12 + i)] for i in range(8)]
    out = generate(model, prompts, max_new_tokens=48, temperature=1.0, seed=0)
    batch = build_batch(prompts, out.tokens)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        fp32 = response_logprobs(model, batch)
        with autocast(torch.device("cpu"), True):
            bf16 = response_logprobs(model, batch)
    err = (bf16 - fp32)[mask].abs()
    assert bf16.dtype == torch.float32  # the log-probs themselves come back in fp32
    assert err.max() > 1e-5  # the products really were bf16
    assert err.mean() < 5e-3 and err.max() < 0.15, (err.mean().item(), err.max().item())
    seq = ((bf16 - fp32) * mask).sum(1).abs()  # what a sequence-level ratio (gspo) or k1 sum would see
    assert seq.max() < 0.2, seq.max().item()


def test_grpo_in_bf16_learns_the_tiny_task_as_fp32_does(tiny, tmp_path):
    d, _, _ = tiny
    curves = {}
    for name, extra in (("fp32", []), ("bf16", ["--bf16", "true"])):
        train_rl(rl_args(d, tmp_path / name, "--steps", "12", "--lr", "1e-2", "--kl_coef", "0.05", *extra))
        curves[name] = [r["reward_mean"] for r in metrics(tmp_path / name)]
    first = {k: sum(c[:3]) / 3 for k, c in curves.items()}
    last = {k: sum(c[-3:]) / 3 for k, c in curves.items()}
    assert last["bf16"] > first["bf16"] + 0.15, curves
    # Step 0 samples from the same weights with the same seed: identical rewards. After that bf16's rounding
    # moves the weights a little differently and, now and then, flips a sampled token; the reward (a share
    # of letters, not a 0/1 verdict) follows fp32's step by step: measured within 0.004 at every step.
    assert curves["bf16"][0] == curves["fp32"][0]
    assert max(abs(a - b) for a, b in zip(curves["bf16"], curves["fp32"])) < 0.05, curves
