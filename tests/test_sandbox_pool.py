"""The pool of persistent sandboxes behind run_code/run_codes: the same verdicts as one sandbox launch per
program whatever the programs do to their workers, no carry-over from one program to the next, and no process
left behind when the pool closes or its owner dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from minirlvr import code_verifier
from minirlvr.code_verifier import extract_code, parse_tests, run_codes

ROOT = Path(__file__).resolve().parents[1]
SUM_EVENS = "```python\ndef sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n```"
TESTS = ["assert sum_evens([2, 3]) == 2", "assert sum_evens([]) == 0", "assert sum_evens([4, 4]) == 8"]
MIX = [
    ("correct", SUM_EVENS),
    ("wrong", "def sum_evens(xs):\n    return sum(xs)"),
    ("raises", "def sum_evens(xs):\n    raise ValueError('no')"),
    ("raises at load", "raise SystemExit(3)"),
    ("syntax error", "def sum_evens(xs:\n    return 0"),
    ("loops in one test", "def sum_evens(xs):\n    while xs == []:\n        pass\n    return sum(x for x in xs if x % 2 == 0)"),
    ("loops at load", "while True:\n    pass"),
    ("memory", "def sum_evens(xs):\n    block = bytearray(3 << 30)\n    return len(block)"),
    ("os._exit", "import os\ndef sum_evens(xs):\n    os._exit(0)"),
    ("kills itself", "import os, signal\ndef sum_evens(xs):\n    os.kill(os.getpid(), signal.SIGKILL)"),
    ("kills its group", "import os, signal\ndef sum_evens(xs):\n    os.killpg(0, signal.SIGKILL)"),
    ("kills its parent", "import os, signal\ndef sum_evens(xs):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                         "    return sum(x for x in xs if x % 2 == 0)"),
    ("correct after all that", SUM_EVENS),
]


def one_launch(code: str, tests, timeout: float):
    """The scorer before the pool: a sandbox started for this one program and stopped after it."""
    prog = {"code": extract_code(code), "tests": parse_tests(tests), "timeout": timeout}
    sandbox = code_verifier._take(fresh=True)
    try:
        out, err, overran = sandbox.run(prog)
    finally:
        sandbox.close()
    return code_verifier._summarise(out, err, prog["tests"], overran)


def verdict(r):
    return r.passed, r.total, r.status


def test_pool_gives_the_verdicts_of_one_launch_per_program():
    """Each program of the mix, run twice through two pooled sandboxes (so every sandbox serves programs that
    came after crashing, looping, memory-hungry and worker-killing ones), gets its one-launch verdict."""
    jobs = [(code, TESTS) for _, code in MIX] * 2
    pooled = run_codes(jobs, timeout=1.5, workers=2)
    alone = [one_launch(code, TESTS, 1.5) for _, code in MIX]
    for (name, _), a, p, q in zip(MIX, alone, pooled, pooled[len(MIX):]):
        assert verdict(p) == verdict(a) == verdict(q), (name, a, p, q)
    assert [verdict(r)[2] for r in alone[:3]] == ["ok", "fail", "fail"]
    assert verdict(pooled[-1]) == (3, 3, "ok")
    assert len(code_verifier._pool["idle"]) <= code_verifier._POOL_IDLE


def test_timed_out_program_does_not_affect_the_next():
    """One sandbox, one program after another: a program that hangs (to the supervisor's deadline, or past the
    caller's, which kills that sandbox) leaves the next ones their whole time and a working sandbox."""
    hang = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"
    rs = run_codes([(hang, TESTS), (SUM_EVENS, TESTS), (hang, TESTS), (SUM_EVENS, TESTS)], timeout=1.0, workers=1)
    assert [verdict(r) for r in rs] == [(0, 3, "timeout"), (3, 3, "ok")] * 2
    grace = code_verifier._GRACE
    code_verifier._GRACE = -0.5               # the caller's deadline comes first: it kills the sandbox
    try:
        sandbox = code_verifier._take(fresh=False)
        code_verifier._give(sandbox)
        r = run_codes([(hang, TESTS[:1])], timeout=1.0, workers=1)[0]   # one test: the whole 1.0 s
    finally:
        code_verifier._GRACE = grace
    assert r.status == "timeout" and sandbox.proc.poll() is not None
    assert verdict(run_codes([(SUM_EVENS, TESTS)], workers=1)[0]) == (3, 3, "ok")


def _descendants(pids: list[int]) -> set[int]:
    """The live processes under `pids` (by parent pid, transitively), `pids` included."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found, todo = set(), [p for p in pids if p in parents]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += [c for c, pp in parents.items() if pp == p and c not in found]
    return found


def _gone(pids: list[int], within: float = 3.0) -> bool:
    give_up = time.monotonic() + within
    while _descendants(pids) and time.monotonic() < give_up:
        time.sleep(0.05)
    return not _descendants(pids)


def test_pool_shuts_down_cleanly():
    run_codes([(SUM_EVENS, TESTS)] * 6, workers=3)
    idle = list(code_verifier._pool["idle"])
    pids = [s.proc.pid for s in idle]
    assert len(pids) >= 2 and len(_descendants(pids)) >= 2 * len(pids)   # launcher + supervisor each
    code_verifier.close_pool()
    assert _gone(pids) and not any(Path(s.workdir).exists() for s in idle)
    assert verdict(run_codes([(SUM_EVENS, TESTS)])[0]) == (3, 3, "ok")  # the next call starts a new pool


def test_no_sandbox_outlives_its_owner():
    """A process that used the pool and exits normally, or is SIGKILLed, leaves no sandbox behind."""
    script = ("import os, sys, time\nfrom minirlvr import code_verifier as cv\n"
              "cv.run_codes([('def f():\\n    return 1', ['assert f() == 1'])] * 4, workers=2)\n"
              "print(' '.join(str(s.proc.pid) for s in cv._pool['idle']), flush=True)\n"
              "time.sleep(60) if sys.argv[1] == 'hang' else None\n")
    for how in ("exit", "hang"):
        proc = subprocess.Popen([sys.executable, "-c", script, how], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids
        if how == "hang":
            assert _descendants(pids)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone(pids), how
