"""bench/grpo_step.py end to end at toy size: both sides run and do the same work. Needs TRL (the `bench` extra),
so it is skipped in the main .venv and in CI; run it from the bench venv (see the script's docstring)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parents[1]


def test_both_sides_run_and_generate_the_same_tokens():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "grpo_step.py"), "--config", "miniworld",
                          "--data", str(ROOT / "tests" / "fixtures" / "gsm8k_tiny.jsonl"), "--prompts", "2",
                          "--group", "2", "--max-new-tokens", "4", "--warmup", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^(ours|trl) +(.*)$", out.stdout, re.M)}
    assert set(rows) == {"ours", "trl"}
    assert rows["ours"][5] == rows["trl"][5] == "16"  # tokens/step: 2 prompts x 2 samples x 4 tokens, both sides
    assert "TRL / ours" in out.stdout
