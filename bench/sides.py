"""What the benchmarks that time this code against another share (grpo_phases.py, eval.py, grpo_step.py):
a git revision unpacked to a temporary folder, and each side run as a child process that prints its measurements
as one line `RESULT <json>` on stdout."""

import io
import json
import subprocess
import sys
import tarfile
import tempfile


def checkout(root: str, rev: str) -> str:
    """`git archive rev` of the repository at root, unpacked to a new temporary folder; its path."""
    base = tempfile.mkdtemp(prefix="bench_baseline_")
    archive = subprocess.run(["git", "-C", root, "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as t:
        t.extractall(base, filter="data")
    return base


def result(stdout: str):
    """The JSON of a child's `RESULT ` line."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])


def run_side(name: str, cmd: list[str], code: str, env: dict):
    """Run one side's child with `code` as its working directory; its RESULT, or exit naming the side."""
    out = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return result(out.stdout)
