"""Code checked by running hidden tests: the caller's side of the sandbox (sandbox.py, which runs the programs).

    run_code(code, tests, timeout=5.0) -> CodeResult(passed, total, pass_rate, status, detail)
    run_codes([(code, tests), ...]) -> [CodeResult, ...]      # many programs, fewer sandbox launches

Code is run in the sandbox of `sandbox.py` (a separate, jailed process; see its
docstring for the layers of containment). `run_code` statuses:

    ok             every test passed
    fail           the code loaded, at least one test failed (assertion or exception)
    error          the code did not load: syntax error or exception at top level
    timeout        a test (or the whole run) hit its wall-clock limit
    killed         a test's process was killed: CPU/file-size limit, output limit, signal
    sandbox_error  the sandbox itself could not run the code (never the code's fault)

When several tests misbehave in different ways the most severe wins, in the order
sandbox_error > error > timeout > killed > fail. `pass_rate` is passed / total either way.

`from minirlvr.verifier import run_code` reaches these names too (the public API).
"""

import ast
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"```([^\n`]*)\n(.*?)(?:```|\Z)", re.S)    # info line (language tag), body


def extract_code(response: str) -> str:
    """The code of a response: its last ```python (or ```py) block, else its last fenced block.

    Preferring tagged blocks skips an example-output block shown after the code. A block
    left open at the end (generation ran out of tokens) counts; text without any fence is
    returned unchanged.
    """
    blocks = _FENCE.findall(response)
    python = [body for info, body in blocks if info.strip().lower() in ("python", "python3", "py")]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else response


@dataclass(frozen=True)
class CodeResult:
    passed: int        # tests that passed
    total: int         # tests run (or meant to run)
    pass_rate: float   # passed / total
    status: str        # see the module docstring
    detail: str        # first problem found, with a little of the program's output; <= DETAIL_CAP chars


DETAIL_CAP = 2000
_SANDBOX = Path(__file__).with_name("sandbox.py")
_SEVERITY = ["sandbox_error", "error", "timeout", "killed", "fail"]
_GRACE = 2.0       # seconds the launcher may overrun the deadline (interpreter start-up) before being killed


def parse_tests(tests: list[str] | str) -> list[str]:
    """Validate the hidden tests; a string is split into one test per top-level assert.

    In a string, non-assert statements (setup such as `xs = [1, 2]`) are kept in front of
    every later assert. Our own tests must be valid Python: fail loudly, not score 0.
    """
    if isinstance(tests, str):
        try:
            body = ast.parse(tests).body
        except SyntaxError as e:
            raise ValueError(f"run_code: tests do not parse: {e}") from None
        setup, split = [], []
        for node in body:
            source = ast.get_source_segment(tests, node)
            if isinstance(node, ast.Assert):
                split.append("\n".join(setup + [source]))
            else:
                setup.append(source)
        tests = split
    if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
        raise TypeError("run_code: tests must be a list of str or a str")
    if not tests:
        raise ValueError("run_code: no tests given (a string needs at least one assert)")
    for i, test in enumerate(tests):
        try:
            compile(test, f"<test {i}>", "exec")
        except SyntaxError as e:
            raise ValueError(f"run_code: tests[{i}] does not compile: {e}") from None
    return list(tests)


def run_code(code: str, tests: list[str] | str, timeout: float = 5.0) -> CodeResult:
    """Run `code` (or the last fenced block in it) against `tests` in the sandbox.

    Each test is an independent Python statement run after a fresh load of the code, so
    one failing or hanging test does not stop the others. The whole call returns within
    about `timeout` seconds (plus interpreter start-up) whatever the code does.
    """
    return run_codes([(code, tests)], timeout)[0]


def run_codes(jobs: list[tuple[str, list[str] | str]], timeout: float = 5.0, workers: int = 2,
              per_launch: int = 32) -> list[CodeResult]:
    """run_code of each (code, tests) pair, in order, with the same results for a fraction of the CPU.

    Starting a sandbox (an interpreter, namespaces, a sealed filesystem) costs ~80 ms of CPU, several times
    what a MiniWorld program's tests cost; here up to `per_launch` programs share one launch, each still
    getting its own deadline of `timeout` seconds and a fresh worker per test, and `workers` launches run
    side by side (threads waiting on their sandbox processes).
    """
    if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"run_code: timeout must be a positive number of seconds, got {timeout!r}")
    for code, _ in jobs:
        if not isinstance(code, str):
            raise TypeError(f"run_code: code must be str, got {type(code).__name__}")
    progs = [{"code": extract_code(code), "tests": parse_tests(tests), "timeout": timeout} for code, tests in jobs]
    chunks = [progs[i:i + per_launch] for i in range(0, len(progs), per_launch)]
    if workers <= 1 or len(chunks) == 1:
        return [r for chunk in chunks for r in _run_launch(chunk)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for rs in pool.map(_run_launch, chunks) for r in rs]


def _run_launch(progs: list[dict]) -> list[CodeResult]:
    """One sandbox launch over `progs`; a launch that cannot start is a sandbox_error for each."""
    try:
        out, err, overran = _launch(progs)
    except (OSError, subprocess.SubprocessError) as e:
        return [CodeResult(0, len(p["tests"]), 0.0, "sandbox_error", f"could not run the sandbox: {e}"[:DETAIL_CAP])
                for p in progs]
    records, done = [], False
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue                                 # a broken line never crashes the caller
        if isinstance(record, dict) and record.get("done"):
            done = True
        elif isinstance(record, dict):
            records.append(record)
    return [_summarise([r for r in records if r.get("job", 0) == j], err, p["tests"], overran, done)
            for j, p in enumerate(progs)]


def sandbox_features() -> set[str]:
    """Which containment layers the sandbox gets on this machine, e.g. {"netns", "uid", ...}.

    Full set (as root on Linux >= 5.12): ipcns mountns netns pidns readonly_fs uid.
    """
    out, err, _ = _launch([{"code": "", "tests": ["pass"], "timeout": 5.0}])
    for line in out.decode("utf-8", "replace").splitlines():
        record = json.loads(line)
        if record.get("done"):
            return set(record["features"])
    raise RuntimeError(f"sandbox did not start: {err.decode('utf-8', 'replace')[-500:]}")


def _launch(progs: list[dict]) -> tuple[bytes, bytes, bool]:
    """Run the sandbox program on a batch of programs; returns (stdout, stderr, overran)."""
    timeout = sum(p["timeout"] for p in progs)
    workdir = tempfile.mkdtemp(prefix="minirlvr-sandbox-")
    try:
        job = {"jobs": progs, "workdir": workdir, "caller_pid": os.getpid()}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_SANDBOX)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},   # nothing of ours leaks in
            start_new_session=True)                               # own process group: one kill stops all
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=timeout + _GRACE)
            return out, err, False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate(timeout=5.0)
            return out, err, True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _summarise(records: list[dict], err: bytes, tests: list[str], overran: bool, done: bool) -> CodeResult:
    """Turn one program's JSON records from the sandbox into a CodeResult."""
    outcomes, problem = {}, ""
    for record in records:
        try:
            i, outcome, message, output = (record[k] for k in ("test", "outcome", "message", "output"))
            if not (isinstance(i, int) and 0 <= i < len(tests)) or outcome not in _SEVERITY + ["pass"]:
                raise ValueError(str(record)[:200])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue                                 # a broken record never crashes the caller
        outcomes[i] = outcome
        if outcome != "pass" and not problem:
            problem = f"test {i} ({tests[i][:200]!r}): {outcome}: {message}"
            if output:
                problem += f"\n--- output ---\n{output}"
    done = done or len(outcomes) == len(tests)     # a program of a batch is done once all its tests are in
    # Tests without a record did not finish: the run overran or the sandbox broke.
    for i in range(len(tests)):
        outcomes.setdefault(i, "timeout" if overran else "sandbox_error")
    if not done:
        if not problem or not overran:
            why = "the run overran its deadline" if overran else "the sandbox exited early"
            problem = (f"{why}: {err.decode('utf-8', 'replace')[-500:]}\n" + problem).strip()
    passed = sum(outcome == "pass" for outcome in outcomes.values())
    total = len(tests)
    bad = [s for s in _SEVERITY if s in outcomes.values()]
    status = bad[0] if bad else "ok"
    return CodeResult(passed, total, passed / total, status, problem[:DETAIL_CAP])
