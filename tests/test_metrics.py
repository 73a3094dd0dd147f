"""metrics.jsonl on resume, the TensorBoard mirror (optional extra) and the progress line."""

import io
import json
import sys
import time

import pytest

from minirlvr.data import DataError
from minirlvr.run import MetricsLog, Progress, fmt_rate


def rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_resume_drops_later_steps_and_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(4):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    with path.open("a") as f:
        f.write('{"step": 4, "lo')                                   # killed mid-write
    MetricsLog(path, resume_step=2)
    assert [r["step"] for r in rows(path)] == [0, 1]


def test_resume_refuses_a_broken_line_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a metrics row"):
        MetricsLog(path, resume_step=1)


def test_report_to_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="tensorboard"):
        MetricsLog(tmp_path / "m.jsonl", report_to="wandb")


def test_tensorboard_mirrors_numeric_fields(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = MetricsLog(tmp_path / "metrics.jsonl", report_to="tensorboard")
    for step in range(3):
        log.write({"step": step, "reward_mean": 0.5 * step, "kl": 0.01, "note": "text is skipped", "ok": True})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["kl", "reward_mean"]
    assert [(e.step, e.value) for e in acc.Scalars("reward_mean")] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [0, 1, 2]   # the JSONL is still written


def test_tensorboard_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsLog(tmp_path / "metrics.jsonl", report_to="tensorboard")


def test_rate_reads_seconds_per_step_when_a_step_is_slow():
    assert fmt_rate(3.1) == "3.10 it/s"
    assert fmt_rate(1.0) == "1.00 it/s"
    assert fmt_rate(0.25) == "4.0 s/step"
    assert fmt_rate(0.5, unit="prompt") == "2.0 s/prompt"


def test_progress_line(monkeypatch):
    clock = iter([100.0, 110.0, 120.0])                              # 10 s per step
    monkeypatch.setattr(time, "time", lambda: next(clock))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = Progress(3, every=1)
    bar.update(0, loss=0.5)
    bar.update(1, loss=0.25)
    first, second = err.getvalue().splitlines()
    assert first == "step 1/3 | loss 0.5 | 10.0 s/step | ETA 0m20s"
    assert second == "step 2/3 | loss 0.25 | 10.0 s/step | ETA 0m10s"
