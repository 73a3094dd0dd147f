"""The life of a training run, around its loop: start (or resume) it, log it, save it when due, stop it on a signal.

    device, state = start_training(cfg, stage)   # processes, device, seed; --resume; OUT claimed; OUT/config.json
    log = MetricsLog(OUT / "metrics.jsonl", ...) # one JSON line per step (+ TensorBoard); Progress: one status line
    with StopSignal() as signals:                # Ctrl-C/SIGTERM finish the step, then save and stop
        ...
        after_step(cfg, step, save, signals.requested(device))   # save when due; raise Stopped to stop

What a checkpoint holds and how it is written lives in checkpoint.py; train.py turns Stopped into the command
that continues the run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from minirlvr import dist
from minirlvr.checkpoint import CheckpointError, read_state
from minirlvr.config import ConfigError, resume_config, save_config
from minirlvr.optim import pick_device

RUN_FILES = ("config.json", "metrics.jsonl", "samples.jsonl", "model", "state", "tensorboard")


def start_training(cfg, stage: str) -> tuple[torch.device, dict | None]:
    """What every training loop does first: processes, device and seed; on --resume the checkpoint's config and
    state (else the model folders checked); OUT claimed for this run; OUT/config.json. Returns (device, the
    resumed state or None)."""
    dev = dist.init()
    device = pick_device(str(dev) if dev else cfg.device)
    torch.manual_seed(cfg.seed)
    state = resume(cfg, stage) if cfg.resume else None
    for key in ("init", "ref") if state is None else ():
        if getattr(cfg, key, ""):
            model_dir(getattr(cfg, key), key)
    claim_out(cfg, own=state is not None and Path(cfg.out).resolve() == Path(cfg.resume).parent.resolve())
    return device, state


def resume(cfg, stage: str) -> dict:
    """The checkpoint's state, and its config in cfg (resume_config: so a chain of resumes continues the first
    run, and a flag that would fork it is refused)."""
    ckpt = model_dir(cfg.resume, "resume")
    if (ckpt / "model" / "trainer_state.json").is_file():  # --resume OUT means OUT/model
        ckpt = ckpt / "model"
    cfg.resume = str(ckpt)
    state = read_state(ckpt)
    resume_config(cfg, state["config"], str(ckpt / "trainer_state.json"), stage)
    if "out" not in getattr(cfg, "_given", {"out"}):  # the run goes on beside its checkpoint, wherever that is now
        cfg.out = str(ckpt.parent)
    if state["step"] >= cfg.steps:
        raise ConfigError(f"{ckpt}: the checkpoint is at step {state['step']} of {cfg.steps}: nothing to do "
                          f"(--steps N, N > {state['step']}, trains further)")
    before = state["config"].get("steps", cfg.steps)
    if before != cfg.steps and cfg.min_lr_frac < 1 and state["step"] > cfg.warmup and dist.rank() == 0:
        print(f"note: steps {before} -> {cfg.steps} moves the end of the cosine lr decay; the steps before "
              f"{state['step']} followed the {before}-step schedule, so this is not the run --steps {cfg.steps} "
              "makes from the start", file=sys.stderr)
    return state


def claim_out(cfg, own: bool) -> None:
    """A run never writes over another by accident: an OUT holding a run's files is refused unless --overwrite,
    which deletes those files (only those: a launcher's log stays). A resume writes into its own run (own).
    Files of a run that never finished a step (it failed on a bad input after writing config.json, or was
    stopped before its first step) hold nothing to lose: they are replaced, so the corrected command just runs."""
    out = Path(cfg.out)
    found = [] if own else [n for n in RUN_FILES if (out / n).exists()]
    if found and not cfg.overwrite and ran_a_step(out):
        raise ConfigError(f"{out}: holds a run ({', '.join(found)}); --overwrite replaces it"
                          + (f", --resume {out / 'model'} continues it" if "model" in found else ""))
    dist.barrier()  # every rank has looked at OUT before rank 0 changes it
    if dist.rank() == 0:
        for name in found:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")


def ran_a_step(out: Path) -> bool:
    """OUT holds a checkpoint or a logged step (metrics.jsonl gets its first line when step 0 ends)."""
    metrics = out / "metrics.jsonl"
    return (out / "model").exists() or (out / "state").exists() or (metrics.is_file() and metrics.stat().st_size > 0)


def model_dir(path: str, key: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        why = "no such directory" if not p.exists() else "not a model folder (no config.json)"
        raise CheckpointError(f"{p}: {why}; --{key} takes a Hugging Face model folder")
    return p


def save_due(cfg, step: int) -> bool:
    """Rank 0 saves every save_every steps (0: never; -1, the default: a tenth of the run, so that an interrupted
    run loses little) and after the last step."""
    n = max(1, cfg.steps // 10) if cfg.save_every < 0 else cfg.save_every
    return dist.rank() == 0 and (step + 1 == cfg.steps or bool(n and (step + 1) % n == 0))


class Stopped(Exception):
    """The loop stopped before its last step, after saving a checkpoint; train.py prints the message and the
    command that continues the run (with `flags`), and exits with `code`."""

    def __init__(self, message: str, checkpoint: Path, step: int, code: int, flags: str = ""):
        super().__init__(message)
        self.checkpoint, self.step, self.code, self.flags = checkpoint, step, code, flags


class StopSignal:
    """Within `with StopSignal() as signals:`, SIGINT (Ctrl-C) and SIGTERM only set a flag, which the loop
    reads after each step (signals.requested), to save a checkpoint and stop. A second signal a second or more
    later gets the old handler (Ctrl-C: KeyboardInterrupt, SIGTERM: exit), for a user who cannot wait for the
    step to end; one within the second is the same request again (under torchrun a Ctrl-C reaches each worker
    twice: from the terminal, and forwarded by torchrun)."""

    def __enter__(self):
        self.got, self.at, self.old = None, 0.0, {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. a background job's SIGINT stays ignored
                    self.old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.got is None:
            self.got, self.at = signal.Signals(signum).name, time.monotonic()
            if dist.rank() == 0:
                print(f"\n{self.got}: saving a checkpoint after this step (again to stop at once)", file=sys.stderr,
                      flush=True)
        elif time.monotonic() - self.at > 1.0:
            self.__exit__()
            old = self.old[signum]
            old(signum, frame) if callable(old) else os.kill(os.getpid(), signum)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False

    def requested(self, device: torch.device) -> str | None:
        """Why to stop, if any rank got a signal: every rank stops after the same step."""
        anyone = self.got is not None
        if dist.world_size() > 1:
            anyone = float(dist.all_sum(torch.full((), float(anyone), device=device))) > 0
        return f"interrupted ({self.got or 'a signal to another process'})" if anyone else None


def after_step(cfg, step: int, save, stop: str | None = None, code: int = 130, flags: str = "") -> None:
    """Rank 0 calls save() when due and before stopping; a stop reason (a signal, no learning signal) then ends
    the run with Stopped."""
    if dist.rank() == 0 and (stop or save_due(cfg, step)):
        save()
    if stop:
        raise Stopped(stop, Path(cfg.out) / "model", step + 1, code, flags)


def resume_command(stage: str, checkpoint: Path, flags: str = "") -> str:
    launcher = f"torchrun --nproc_per_node {dist.world_size()}" if dist.world_size() > 1 else "python"
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("train.py") else "train.py"
    return " ".join([launcher, shlex.quote(script), stage, "--resume", shlex.quote(str(checkpoint)), flags]).strip()


# ------------------------------------------------------------------------------------- logs

REPORT_TO = ("", "none", "tensorboard")   # values of a loop's --report_to


def check_report_to(value: str) -> None:
    """A config's report_to, refused in one line before any model loads (an unknown value, a missing package)."""
    if value not in REPORT_TO:
        raise ConfigError(f"config: 'report_to' must be one of {list(REPORT_TO)}, got {value!r}")
    if value == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config: 'report_to' is 'tensorboard' but the tensorboard package is missing: "
                          "pip install tensorboard")


def run_log(cfg, start: int, every: int = 10) -> tuple["MetricsLog", "Progress"]:
    """A loop's OUT/metrics.jsonl (cut back to `start` on --resume) and its progress line, both rank 0's."""
    rank0 = dist.rank() == 0
    return (MetricsLog(Path(cfg.out) / "metrics.jsonl", start if cfg.resume else None, rank0, cfg.report_to),
            Progress(cfg.steps, start, enabled=cfg.progress and rank0, every=every))


class MetricsLog:
    """Appends one JSON line per step. On resume, lines after the resumed step are dropped first, so the
    file reads exactly like an uninterrupted run's; a last line cut short by a kill is dropped too.

    report_to="tensorboard" also writes every numeric field as a scalar to OUT/tensorboard (beside the
    metrics file); metrics.jsonl stays the record of truth."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True, report_to: str = ""):
        self.path, self.enabled, self.tb = Path(path), enabled, None
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
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Progress:
    """`step 12/200 | loss 1.234 | 3.1 it/s | ETA 1m02s`, rewritten in place on a terminal, one line per
    `every` steps otherwise (so logs stay readable). When a step takes more than a second the rate reads
    `4.2 s/step`, which is what a user compares between runs. `unit` names what is counted ("prompt")."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 10, unit: str = "step"):
        self.total, self.start, self.enabled, self.every, self.unit = total, start, enabled, every, unit
        self.t0, self.tty = time.time(), sys.stderr.isatty()

    def update(self, step: int, **shown) -> None:
        if not self.enabled:
            return
        rate = (step + 1 - self.start) / max(1e-9, time.time() - self.t0)
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
