"""Code checked by running hidden tests: the caller's side of the sandbox (sandbox.py, which runs the programs).

    run_code(code, tests, timeout=5.0) -> CodeResult(passed, total, pass_rate, status, detail)
    run_codes([(code, tests), ...]) -> [CodeResult, ...]      # many programs, side by side

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
import atexit
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def run_codes(jobs: list[tuple[str, list[str] | str]], timeout: float = 5.0, workers: int = 2) -> list[CodeResult]:
    """run_code of each (code, tests) pair, in order, with the same results; `workers` programs run side by
    side, each in a pooled sandbox (_Sandbox)."""
    if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"run_code: timeout must be a positive number of seconds, got {timeout!r}")
    for code, _ in jobs:
        if not isinstance(code, str):
            raise TypeError(f"run_code: code must be str, got {type(code).__name__}")
    progs = [{"code": extract_code(code), "tests": parse_tests(tests), "timeout": timeout} for code, tests in jobs]
    if workers <= 1 or len(progs) == 1:
        return [_run_pooled(p) for p in progs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_run_pooled, progs))


def _run_pooled(prog: dict) -> CodeResult:
    """One program in an idle sandbox of the pool (a new one if none is idle), which goes back if it lives."""
    for fresh in (False, True):
        try:
            sandbox = _take(fresh)
            out, err, overran = sandbox.run(prog)
        except (OSError, subprocess.SubprocessError) as e:
            return CodeResult(0, len(prog["tests"]), 0.0, "sandbox_error", f"could not run the sandbox: {e}"[:DETAIL_CAP])
        _give(sandbox)
        if out or overran or sandbox.served == 1:
            break        # else a reused sandbox was dead before it took the program: retry once in a new one
    return _summarise(out, err, prog["tests"], overran)


def sandbox_features() -> set[str]:
    """Which containment layers the sandbox gets on this machine, e.g. {"netns", "uid", ...}.

    Full set (as root on Linux >= 5.12): ipcns mountns netns pidns readonly_fs uid.
    """
    out, err, _ = (sandbox := _take(fresh=True)).run({"code": "", "tests": ["pass"], "timeout": 5.0})
    sandbox.close()
    for record in map(json.loads, out.decode("utf-8", "replace").splitlines()):
        if record.get("done"):
            return set(record["features"])
    raise RuntimeError(f"sandbox did not start: {err.decode('utf-8', 'replace')[-500:]}")


class _Sandbox:
    """A sandbox process that serves programs one at a time (a JSON line in; its records and a "done" line out):
    its start-up (~80 ms of CPU: an interpreter, namespaces, a sealed filesystem) is paid once, not per program.
    Each program still runs as in a launch of its own (fresh workers, its own deadline, an emptied workdir);
    one that outlives its deadline (+ _GRACE) or breaks the sandbox takes only this sandbox down with it."""

    def __init__(self, spawner: ThreadPoolExecutor):
        self.workdir, self.served = tempfile.mkdtemp(prefix="minirlvr-sandbox-"), 0
        # Started from one long-lived thread: the launcher dies with the *thread* that started it
        # (PR_SET_PDEATHSIG), and the threads that score rewards come and go.
        self.proc = spawner.submit(
            subprocess.Popen, [sys.executable, "-I", "-S", str(_SANDBOX)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.workdir,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},   # nothing of ours leaks in
            start_new_session=True).result()                      # own process group: one kill stops all
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)

    def run(self, prog: dict) -> tuple[bytes, bytes, bool]:
        """(stdout, stderr, overran) of one program, as a launch of its own would give them."""
        self.served += 1
        job = {**prog, "workdir": self.workdir, "caller_pid": os.getpid()}
        send, out, err = (json.dumps(job) + "\n").encode(), bytearray(), bytearray()
        bufs = {self.proc.stdout.fileno(): out, self.proc.stderr.fileno(): err}
        deadline = time.monotonic() + prog["timeout"] + _GRACE
        while not (out.endswith(b"\n") and out[out.rfind(b"\n", 0, -1) + 1:].startswith(b'{"done"')):
            left = deadline - time.monotonic()
            exited = self.proc.stdout.fileno() not in bufs   # the sandbox exited early
            if exited or left <= 0:
                self.close()                         # whole process group; then what it had written
                return bytes(out + self.proc.stdout.read()), bytes(err + self.proc.stderr.read()), not exited
            readable, writable, _ = select.select(list(bufs), [self.proc.stdin] if send else [], [], left)
            if writable:
                try:
                    send = send[os.write(self.proc.stdin.fileno(), send):]
                except BrokenPipeError:
                    send = b""
            for fd in readable:
                bufs[fd] += (chunk := os.read(fd, 1 << 16))
                if not chunk:
                    del bufs[fd]
        return bytes(out), bytes(err), False

    def close(self, wait: float = 0.0) -> None:
        """Stop the sandbox: at once, or given `wait` seconds to finish by itself on end of input first."""
        self.proc.stdin.close()                      # an idle supervisor exits at end of input
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:            # (an unreaped leader keeps its group alive for killpg)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), True)        # what is left, now that no writer lives
        shutil.rmtree(self.workdir, ignore_errors=True)


_POOL_IDLE = 8                 # idle sandboxes kept (rewards score 8 responses at once by default)
_pool, _pool_lock = {"key": None, "idle": [], "spawner": None}, threading.Lock()


def _take(fresh: bool) -> _Sandbox:
    with _pool_lock:
        if _pool["key"] != (os.getpid(), _SANDBOX):   # a forked child, or a test swapped the program
            close_pool()
            _pool.update(key=(os.getpid(), _SANDBOX), spawner=ThreadPoolExecutor(1, "minirlvr-sandbox"))
        if _pool["idle"] and not fresh:
            return _pool["idle"].pop()
        return _Sandbox(_pool["spawner"])


def _give(sandbox: _Sandbox) -> None:
    with _pool_lock:
        if sandbox.proc.poll() is None and len(_pool["idle"]) < _POOL_IDLE and _pool["key"] == (os.getpid(), _SANDBOX):
            return _pool["idle"].append(sandbox)
    sandbox.close()


@atexit.register
def close_pool() -> None:
    """Stop the idle sandboxes (at exit too), each reaped with its processes; the next run_code starts new ones."""
    while _pool["idle"]:
        sandbox = _pool["idle"].pop()
        if _pool["key"] and _pool["key"][0] == os.getpid():
            sandbox.close(wait=1.0)


def _summarise(out: bytes, err: bytes, tests: list[str], overran: bool) -> CodeResult:
    """Turn one program's JSON lines from the sandbox (its stdout) into a CodeResult."""
    outcomes, problem, done = {}, "", False
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            if record.get("done"):
                done = True
                continue
            i, outcome, message, output = (record[k] for k in ("test", "outcome", "message", "output"))
            if not (isinstance(i, int) and 0 <= i < len(tests)) or outcome not in _SEVERITY + ["pass"]:
                raise ValueError(str(record)[:200])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue                                 # a broken line or record never crashes the caller
        outcomes[i] = outcome
        if outcome != "pass" and not problem:
            problem = f"test {i} ({tests[i][:200]!r}): {outcome}: {message}"
            if output:
                problem += f"\n--- output ---\n{output}"
    done = done or len(outcomes) == len(tests)
    # Tests without a record did not finish: the run overran or the sandbox broke.
    for i in range(len(tests)):
        outcomes.setdefault(i, "timeout" if overran else "sandbox_error")
    if not done and (not problem or not overran):
        why = "the run overran its deadline" if overran else "the sandbox exited early"
        problem = (f"{why}: {err.decode('utf-8', 'replace')[-500:]}\n" + problem).strip()
    passed = sum(outcome == "pass" for outcome in outcomes.values())
    status = next((s for s in _SEVERITY if s in outcomes.values()), "ok")
    return CodeResult(passed, len(tests), passed / len(tests), status, problem[:DETAIL_CAP])
