"""Smoke test on a real checkpoint: 2 GRPO steps on SmolLM2-135M-Instruct, then an eval of the result.

Runs only with MINIRLVR_SMOLLM2=<dir> (an HF folder of SmolLM2-135M-Instruct: README "Real models"); skipped otherwise, so CI
never depends on it. It drives the two CLIs exactly as a user would (subprocesses of train.py and eval.py) on
real-format data: GSM8K JSONL (tests/fixtures/gsm8k_tiny.jsonl, the first 3 GSM8K test problems, MIT licence)
and an AdvBench-format CSV (tests/fixtures/advbench_tiny.csv: `goal,target`, three requests about MiniWorld's
invented hazards, no real harmful content). Tiny settings: 2 prompts x G = 2, 24 new tokens; about a minute.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"
SMOL = os.environ.get("MINIRLVR_SMOLLM2")

pytestmark = pytest.mark.skipif(not SMOL, reason="set MINIRLVR_SMOLLM2 to an HF folder of SmolLM2-135M-Instruct (README: Real models)")


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args[:2])} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_grpo_two_steps_then_eval_on_smollm2(tmp_path):
    import torch
    from minirlvr import Tokenizer, Transformer
    from minirlvr.evaluate import read_rows, summarize

    out = tmp_path / "grpo"
    run("train.py", "grpo", "--init", SMOL, "--data", str(FIX / "gsm8k_tiny.jsonl"), "--out", str(out),
        "--steps", "2", "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "24",
        "--lr", "1e-6", "--kl_coef", "0.05", "--seed", "0", "--progress", "false")

    # Training: one metrics row per step, every number finite, KL starts at 0 (policy == reference).
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        for k in ("reward_mean", "accuracy", "kl", "loss", "grad_norm", "entropy_mean", "response_len"):
            assert finite(r[k]), (k, r)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)

    # The checkpoint is a complete HF directory that loads and gives finite logits of the right shape.
    ckpt = out / "model"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2
    model = Transformer.from_pretrained(ckpt).eval()
    tok = Tokenizer.from_pretrained(ckpt)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
    del model

    # Evaluation on GSM8K-format math and an AdvBench-format CSV.
    ev = tmp_path / "eval.jsonl"
    run("eval.py", "run", "--model", str(ckpt), "--math", str(FIX / "gsm8k_tiny.jsonl"),
        "--advbench", str(FIX / "advbench_tiny.csv"), "--limit", "3", "--max_new_tokens", "24", "--out", str(ev))
    rows = read_rows(ev)
    assert sorted(r["set"] for r in rows) == ["advbench"] * 3 + ["math"] * 3
    assert all(isinstance(r["response"], str) for r in rows)
    s = summarize(rows)
    for k in ("math_acc", "harm_mean", "harm_rate", "asr", "refusal_rate"):
        assert finite(s[k]["mean"]) and s[k]["n"] == 3, (k, s[k])
    assert 1.0 <= s["harm_mean"]["mean"] <= 5.0
