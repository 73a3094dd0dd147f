"""metrics.jsonl (one JSON object per step), an optional TensorBoard mirror, and a one-line progress display
with rate and ETA."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

REPORT_TO = ("", "none", "tensorboard")   # values of a loop's --report_to


def check_report_to(value: str) -> None:
    """A config's report_to, refused in one line before any model loads (an unknown value, a missing package)."""
    from minirlvr.config import ConfigError
    if value not in REPORT_TO:
        raise ConfigError(f"config: 'report_to' must be one of {list(REPORT_TO)}, got {value!r}")
    if value == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config: 'report_to' is 'tensorboard' but the tensorboard package is missing: "
                          "pip install tensorboard")


class MetricsLog:
    """Appends one JSON line per step. On resume, lines after the resumed step are dropped first, so the
    file reads exactly like an uninterrupted run's; a last line cut short by a kill is dropped too.

    report_to="tensorboard" also writes every numeric field as a scalar to OUT/tensorboard (beside the
    metrics file); metrics.jsonl stays the record of truth."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True, report_to: str = ""):
        self.path, self.enabled = Path(path), enabled
        self.tb = None
        if report_to not in REPORT_TO:
            raise ValueError(f"report_to must be one of {', '.join(r or repr(r) for r in REPORT_TO)}, got {report_to!r}")
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [l for l in _complete_rows(self.path) if json.loads(l)["step"] < resume_step]
            self.path.write_text("".join(l + "\n" for l in keep))
        if report_to == "tensorboard":
            self.tb = TensorBoardWriter(self.path.parent / "tensorboard", purge_step=resume_step)

    def write(self, row: dict) -> None:
        if self.enabled:
            clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")
            if self.tb is not None:
                self.tb.write(clean)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _complete_rows(path: Path) -> list[str]:
    """The lines of a metrics file; a last line that is not valid JSON (the process was killed while
    writing it) is dropped, a bad line anywhere else is an error naming the file and line."""
    lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    for i, line in enumerate(lines):
        try:
            json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if i == len(lines) - 1:
                return lines[:-1]
            from minirlvr.data import DataError
            raise DataError(f"{path}:{i + 1}: not a metrics row (invalid JSON or no 'step')") from None
    return lines


class TensorBoardWriter:
    """Numeric fields of each metrics row as TensorBoard scalars (tensorboard is an optional extra:
    pip install tensorboard; then `tensorboard --logdir OUT/tensorboard`)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--report_to tensorboard needs the tensorboard package: pip install tensorboard") from None
        # purge_step: on resume TensorBoard hides the events a crashed run wrote after the checkpoint
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Progress:
    """`step 12/200 | loss 1.234 | 3.1 it/s | ETA 1m02s`, rewritten in place on a terminal, one line per
    `every` steps otherwise (so logs stay readable). When a step takes more than a second the rate reads
    `4.2 s/step`, which is what a user compares between runs. `unit` names what is counted ("prompt")."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 10, unit: str = "step"):
        self.total, self.start, self.enabled, self.every, self.unit = total, start, enabled, every, unit
        self.t0 = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, **shown) -> None:
        if not self.enabled:
            return
        done = step + 1 - self.start
        rate = done / max(1e-9, time.time() - self.t0)
        eta = (self.total - step - 1) / rate if rate > 0 else math.inf
        parts = [f"{self.unit} {step + 1}/{self.total}"] + [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in shown.items()]
        line = " | ".join(parts + [fmt_rate(rate, self.unit), f"ETA {fmt_seconds(eta)}"])
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160))
            if step + 1 == self.total:
                sys.stderr.write("\n")
        elif (step + 1) % self.every == 0 or step + 1 == self.total or step == self.start:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def fmt_rate(per_second: float, unit: str = "step") -> str:
    """'3.10 it/s' for fast work, '4.2 s/step' once one unit takes more than a second."""
    if per_second >= 1 or per_second <= 0:
        return f"{per_second:.2f} it/s"
    return f"{1 / per_second:.1f} s/{unit}"


def fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
