"""python -m minirlvr.plot: training curves from metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minirlvr.plot import main, moving_average, panels_for, run_names

ROOT = Path(__file__).resolve().parents[1]


def run_dir(path: Path, rows) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RL = [{"step": s, "reward_mean": s / 10, "accuracy": s / 10, "kl": 0.01 * s, "entropy_mean": 1.0 - s / 20,
       "response_len": 40 + s, "loss": 0.1} for s in range(6)]


def test_rl_run_gets_the_five_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = run_dir(tmp_path / "grpo", RL)
    assert main([str(run)]) == 0
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "reward_mean, accuracy, kl, entropy_mean, response_len" in capsys.readouterr().out


def test_several_runs_and_an_sft_run(tmp_path):
    pytest.importorskip("matplotlib")
    a = run_dir(tmp_path / "a" / "seed0", RL)
    b = run_dir(tmp_path / "b" / "seed0", RL[:3])
    out = tmp_path / "cmp.png"
    assert main([str(a), str(b / "metrics.jsonl"), "--out", str(out), "--smooth", "3"]) == 0 and out.exists()
    sft = run_dir(tmp_path / "sft", [{"step": s, "loss": 2.0 - s / 10} for s in range(4)])
    assert panels_for({"sft": [{"step": 0, "loss": 1.0}]}) == [("loss", "loss")]
    assert main([str(sft)]) == 0 and (sft / "curves.png").exists()


def test_names_tell_runs_apart():
    assert run_names(["x/a/seed0", "x/b/seed0/metrics.jsonl"]) == ["a/seed0", "b/seed0"]
    assert run_names(["runs/grpo", "runs/ppo"]) == ["grpo", "ppo"]


def test_moving_average():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([1.0, 5.0], 1) == [1.0, 5.0]


def test_not_a_metrics_file_is_one_line(tmp_path):
    rows = tmp_path / "eval.jsonl"
    rows.write_text('{"set": "math", "id": "math/0"}\n')
    p = subprocess.run([sys.executable, "-m", "minirlvr.plot", str(rows)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {rows}:1: not a metrics row (no integer 'step'); give " \
                                                     "a run folder or its metrics.jsonl"
    p = subprocess.run([sys.executable, "-m", "minirlvr.plot", str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "nope/metrics.jsonl" not in p.stderr and "nope: data file not found" in p.stderr
