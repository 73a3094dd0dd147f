"""run_code: normal behaviour, statuses, and adversarial code that must be contained.

Every attack is bounded *in the test code itself* (a fork bomb of at most 300 forks, a
3 GB allocation, 4 GB of output, signals that are harmless if they land) so that a
missing protection makes the test fail instead of harming the machine.
"""

import os
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minirlvr import code_verifier, sandbox
from minirlvr.verifier import DETAIL_CAP, CodeResult, run_code, sandbox_features

ROOT = os.geteuid() == 0
FULL = {"ipcns", "mountns", "netns", "pidns", "readonly_fs", "uid"}


def _uid_in(detail: str) -> int:
    """The sandbox uid reported by a deliberately failing `assert False, os.getuid()`."""
    return int(re.search(r"AssertionError: \(?(?:\d+, )?(\d+)\)?", detail).group(1))


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ValueError):
            continue
        match = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if match and int(match.group(1)) == uid:
            pids.append(int(entry))
    return pids


# ---------------------------------------------------------------- normal behaviour

SUM_EVENS = "```python\ndef sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n```"


def test_passing_code():
    r = run_code(SUM_EVENS, ["assert sum_evens([1, 2, 4]) == 6", "assert sum_evens([]) == 0"])
    assert r == CodeResult(2, 2, 1.0, "ok", "")


def test_each_test_counts_separately():
    r = run_code(SUM_EVENS, ["assert sum_evens([1, 2, 4]) == 7",    # wrong expectation
                             "assert sum_evens([2]) == 2",
                             "assert undefined_name()",               # NameError, still just one failure
                             "assert sum_evens([3]) == 0"])
    assert (r.passed, r.total, r.pass_rate, r.status) == (2, 4, 0.5, "fail")
    assert "test 0" in r.detail and "AssertionError" in r.detail


def test_tests_as_a_string_with_setup():
    tests = "xs = [1, 2, 3, 4]\nassert sum_evens(xs) == 6\nxs.append(10)\nassert sum_evens(xs) == 16\n"
    assert run_code(SUM_EVENS, tests).status == "ok"
    assert run_code(SUM_EVENS, "xs = [2]\nassert sum_evens(xs) == 3").passed == 0


def test_bad_tests_fail_fast():
    with pytest.raises(ValueError):
        run_code(SUM_EVENS, [])
    with pytest.raises(ValueError):
        run_code(SUM_EVENS, ["assert ("])                  # our own tests must compile
    with pytest.raises(TypeError):
        run_code(SUM_EVENS, [1])
    with pytest.raises(ValueError):
        run_code(SUM_EVENS, ["assert True"], timeout=0)


@pytest.mark.parametrize("code, status, needle", [
    ("def f(:\n    pass", "error", "SyntaxError"),
    ("raise RuntimeError('boom')\ndef f(): return 1", "error", "boom (solution.py line 1)"),
    ("import os\nos._exit(0)", "fail", "without a result"),        # exiting early does not pass
    ("import sys\nsys.exit(0)", "error", "SystemExit"),
    ("def f():\n    import os\n    os._exit(0)", "fail", "without a result"),
    ("def f():\n    return 1 / 0", "fail", "ZeroDivisionError: division by zero (solution.py line 2)"),
])
def test_statuses(code, status, needle):
    r = run_code(code, ["assert f() == 1", "assert f() == 1"])
    assert r.passed == 0 and r.total == 2 and r.status == status
    assert needle in r.detail


def test_output_is_reported_for_failures():
    r = run_code("print('hello from the solution')\ndef f(): return 2", ["assert f() == 1"])
    assert "hello from the solution" in r.detail


def test_files_inside_workdir_work_and_workdir_is_removed():
    code = "import os\ndef roundtrip():\n    open('note.txt', 'w').write('hi')\n    return open('note.txt').read()"
    assert run_code(code, ["assert roundtrip() == 'hi'"]).status == "ok"
    r = run_code("import os", ["assert False, os.getcwd()"])
    workdir = re.search(r"AssertionError: (\S+)", r.detail).group(1)
    assert Path(workdir).name.startswith("minirlvr-sandbox-")
    assert not Path(workdir).exists() or os.listdir(workdir) == []   # a pooled sandbox's: emptied after each program
    code_verifier.close_pool()
    assert not Path(workdir).exists()


def test_stdlib_imports_on_demand():
    code = ("import statistics, fractions, datetime, textwrap, json\nfrom typing import List\n"
            "def f(xs: List[int]) -> str:\n    return json.dumps([statistics.mean(xs), str(fractions.Fraction(1, 3))])")
    assert run_code(code, ["assert f([1, 2, 3]) == '[2, \"1/3\"]'"]).status == "ok"


@pytest.mark.skipif(not ROOT, reason="unprivileged, the sandbox runs as the caller and may read the caller's files")
def test_private_files_stay_private():
    private = Path(tempfile.mkdtemp(prefix="minirlvr-test-private-"))   # mode 700, like a home
    (private / "key").write_text("hunter2")
    try:
        code = f"def peek():\n    try:\n        return open({str(private / 'key')!r}).read()\n    except OSError:\n        return None"
        r = run_code(code, ["assert peek() is None"])
    finally:
        (private / "key").unlink()
        private.rmdir()
    assert r.status == "ok", r.detail


def test_sandbox_has_every_layer_when_root():
    features = sandbox_features()
    if ROOT:
        assert features == FULL
    else:
        pytest.skip(f"not root: sandbox layers here are {sorted(features)}")


def test_concurrent_calls():
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: run_code(SUM_EVENS, [f"assert sum_evens([{2 * k}]) == {2 * k}"]), range(8)))
    assert all(r.status == "ok" for r in results)


def test_run_codes_gives_what_run_code_gives_one_by_one():
    """A batch runs two programs at a time, in pooled sandboxes that serve one program after another, yet
    each program gets the result it gets alone, in order, including one that loops until its deadline."""
    jobs = [(SUM_EVENS, ["assert sum_evens([2, 3]) == 2"]), (SUM_EVENS, ["assert sum_evens([2]) == 3"]),
            ("def f(:", ["assert f() == 1"]), ("while True:\n    pass", ["assert True"]),
            ("def f():\n    return 1", ["assert f() == 1", "assert f() == 2"]), (SUM_EVENS, "assert sum_evens([]) == 0")]
    batch = code_verifier.run_codes(jobs, timeout=1.0)
    alone = [run_code(code, tests, timeout=1.0) for code, tests in jobs]
    assert [(r.passed, r.total, r.status) for r in batch] == [(r.passed, r.total, r.status) for r in alone]
    assert [r.status for r in batch] == ["ok", "fail", "error", "timeout", "fail", "ok"]


def test_programs_of_one_sandbox_do_not_see_each_other():
    """The workdir is emptied after each program, whatever it left there (files, a locked-down directory):
    with workers=1 the second program runs in the pooled sandbox the first one used."""
    leave = ("import os\nos.makedirs('d/e')\nopen('d/e/note', 'w').write('x')\nopen('note', 'w').write('x')\n"
             "os.chmod('d', 0)\ndef f():\n    return 1")
    look = "import os\ndef seen():\n    return sorted(os.listdir('.'))"
    rs = code_verifier.run_codes([(leave, ["assert f() == 1"]), (look, ["assert seen() == []"])], workers=1)
    assert [r.status for r in rs] == ["ok", "ok"], rs[1].detail


def test_broken_sandbox_program_is_a_sandbox_error(tmp_path, monkeypatch):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setattr(code_verifier, "_SANDBOX", script)
    r = run_code(SUM_EVENS, ["assert True", "assert True"])
    assert (r.passed, r.total, r.status) == (0, 2, "sandbox_error")


def test_garbled_sandbox_output_does_not_crash_the_caller(tmp_path, monkeypatch):
    lines = ['{"test": 99, "outcome": "pass", "message": "", "output": ""}', '{"test": 0}', "not json", "[1]",
             '{"test": 0, "outcome": "pwned", "message": "", "output": ""}',
             '{"test": 0, "outcome": "pass", "message": "", "output": ""}', '{"done": true, "features": []}']
    script = tmp_path / "garbles.py"
    script.write_text(f"print({chr(10).join(lines)!r})\n")
    monkeypatch.setattr(code_verifier, "_SANDBOX", script)
    r = run_code(SUM_EVENS, ["assert True", "assert True"])
    assert (r.passed, r.total, r.status) == (1, 2, "sandbox_error")      # test 1 never reported


def test_hung_sandbox_program_is_killed_by_the_caller(tmp_path, monkeypatch):
    """The caller's own deadline: even a launcher that never returns is stopped, whole group."""
    marker = tmp_path / "child.pid"
    script = tmp_path / "hangs.py"
    script.write_text(f"import os, time\nif os.fork() == 0:\n    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
                      "time.sleep(60)\n")
    monkeypatch.setattr(code_verifier, "_SANDBOX", script)
    t0 = time.monotonic()
    r = run_code(SUM_EVENS, ["assert True"], timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + code_verifier._GRACE + 1.5
    assert r.status == "timeout" and r.passed == 0
    child = int(marker.read_text())
    time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


# ---------------------------------------------------------------- time

def test_infinite_loop_in_one_test_does_not_stop_the_others():
    code = "def f(x):\n    while x == 2:\n        pass\n    return x"
    t0 = time.monotonic()
    r = run_code(code, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"], timeout=1.5)
    assert time.monotonic() - t0 < 1.5 + 1.0
    assert (r.passed, r.total, r.status) == (2, 3, "timeout")
    assert "test 1" in r.detail


def test_infinite_loop_at_top_level():
    t0 = time.monotonic()
    r = run_code("while True:\n    pass", ["assert True"] * 4, timeout=1.0)
    assert time.monotonic() - t0 < 1.0 + 1.0
    assert (r.passed, r.status) == (0, "timeout")


def test_code_that_ignores_signals_is_still_stopped():
    code = ("import signal, time\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\ndef f():\n    time.sleep(60)")
    t0 = time.monotonic()
    r = run_code(code, ["f()"], timeout=1.0)
    assert time.monotonic() - t0 < 2.0 and r.status == "timeout"


# ---------------------------------------------------------------- processes

FORK_BOMB = """
import os, time
def bomb():
    n = 0
    for _ in range(300):                # bounded here, so a missing limit fails the test harmlessly
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        n += 1
    return n
"""


def test_fork_bomb_is_capped_and_cleaned_up():
    t0 = time.monotonic()
    r = run_code(FORK_BOMB, ["assert False, (bomb(), os.getuid())"], timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    forks = int(re.search(r"AssertionError: \((\d+), ", r.detail).group(1))
    assert forks < sandbox.MAX_PROCS, r.detail       # RLIMIT_NPROC binds, even when we are root
    if ROOT:                                          # the sandbox uid is its own: nothing of it is left
        assert _processes_of(_uid_in(r.detail)) == []


def test_daemonised_child_does_not_survive():
    code = ("import os, time\ndef escape():\n    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            time.sleep(20)\n        os._exit(0)\n"
            "    os.wait()\n    return os.getuid()")
    r = run_code(code, ["assert False, escape()"], timeout=3.0)
    uid = _uid_in(r.detail)
    if ROOT:
        assert uid != os.getuid()
        assert _processes_of(uid) == []


def test_killing_its_parent():
    """The worker's parent is the supervisor, pid 1 of the sandbox's pid namespace. The test
    process must not even receive a (harmless) signal, and the supervisor must survive
    every attempt to run the next test."""
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: received.append(1))
    try:
        code = (f"import os, signal\ndef attack():\n    hits = []\n"
                f"    for pid, sig in ((os.getppid(), signal.SIGKILL), ({os.getpid()}, signal.SIGUSR1),\n"
                f"                     (1, signal.SIGKILL)):\n"
                f"        try:\n            os.kill(pid, sig)\n            hits.append(pid)\n"
                f"        except OSError:\n            pass\n    return hits\n")
        r = run_code(code, ["attack()", "os.killpg(0, signal.SIGKILL)", "os.killpg(os.getpgid(0), signal.SIGKILL)",
                            "assert True"], timeout=5.0)
        if ROOT:   # as another uid every attempt is refused (unprivileged, init just ignores them)
            assert run_code(code, ["assert attack() == []"]).status == "ok"
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert received == []
    assert (r.passed, r.total, r.status) == (2, 4, "killed"), r.detail   # the killpg tests killed themselves


# ---------------------------------------------------------------- memory, files, output

def test_memory_bomb():
    code = "def bomb():\n    block = bytearray(3 << 30)\n    return len(block)"
    t0 = time.monotonic()
    r = run_code(code, ["assert bomb() == 3 << 30"], timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert r.passed == 0 and "MemoryError" in r.detail


def test_writing_outside_the_workdir():
    tag = uuid.uuid4().hex
    open_dir = Path(tempfile.mkdtemp(prefix="minirlvr-test-open-"))
    open_dir.chmod(0o777)                                      # only the sandbox can stop this one
    targets = [open_dir / f"a-{tag}", Path(tempfile.gettempdir()) / f"minirlvr-escape-{tag}",
               Path("/var/tmp") / f"minirlvr-escape-{tag}", Path("/dev/shm") / f"minirlvr-escape-{tag}"]
    code = ("import os\ndef escape(paths):\n    ok = []\n    for p in paths:\n        try:\n"
            "            with open(p, 'w') as f:\n                f.write('x')\n            ok.append(p)\n"
            "        except OSError:\n            pass\n    return ok\n")
    relative = f"../minirlvr-escape-rel-{tag}"
    try:
        r = run_code(code, [f"assert escape({[str(t) for t in targets]!r}) == []",
                            f"assert escape([{relative!r}]) == []",
                            f"os.symlink({str(targets[0])!r}, 'link')\nassert escape(['link']) == []"])
        appeared = [t for t in targets + [Path(tempfile.gettempdir()) / relative[3:]] if t.exists()]
        assert appeared == []
        assert r.status == "ok", r.detail
    finally:
        for t in targets + [Path(tempfile.gettempdir()) / relative[3:]]:
            t.unlink(missing_ok=True)
        open_dir.rmdir()


def test_file_size_limit():
    code = "def big():\n    with open('big.bin', 'wb') as f:\n        f.write(bytes(64 << 20))"
    r = run_code(code, ["big()"], timeout=5.0)
    assert r.passed == 0 and r.status in ("fail", "killed")


def test_printing_gigabytes():
    code = "import sys\ndef spam():\n    line = 'x' * (1 << 20)\n    for _ in range(4096):\n        sys.stdout.write(line)"
    raw = "import os\ndef spam():\n    block = b'y' * (1 << 20)\n    for _ in range(4096):\n        os.write(1, block)"
    for program in (code, raw):
        t0 = time.monotonic()
        r = run_code(program, ["spam()"], timeout=10.0)
        assert time.monotonic() - t0 < 5.0
        assert r.status == "killed" and "output limit" in r.detail
        assert len(r.detail) <= DETAIL_CAP


# ---------------------------------------------------------------- environment and network

def test_parent_environment_is_invisible(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("MINIRLVR_TEST_SECRET", secret)
    code = (f"import os\nSECRET = {secret!r}\ndef leaks():\n"
            f"    found = [k for k, v in os.environ.items() if SECRET in v or 'MINIRLVR' in k]\n"
            f"    for pid in [p for p in os.listdir('/proc') if p.isdigit()] + [{str(os.getpid())!r}]:\n"
            f"        try:\n            data = open('/proc/' + pid + '/environ', 'rb').read()\n"
            f"        except OSError:\n            continue\n"
            f"        if SECRET.encode() in data:\n            found.append(pid)\n    return found\n")
    r = run_code(code, ["assert leaks() == []", "assert set(os.environ) <= {'PATH', 'LC_ALL'}"])
    assert r.status == "ok", r.detail


def test_no_network():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    code = f"""
import ctypes
def python_connect():
    try:
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=1)
        return True
    except Exception:
        return False

def raw_connect():              # below Python's socket module: only the network namespace stops this
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)   # AF_INET, SOCK_STREAM
    if fd < 0:
        return False
    addr = (ctypes.c_ubyte * 16)(2, 0, {port >> 8}, {port & 255}, 127, 0, 0, 1)
    return libc.connect(fd, addr, 16) == 0

def audit_hook_blocks():     # the socket layer that also works unprivileged
    import sys
    try:
        sys.audit("socket.connect", None, ("127.0.0.1", {port}))
    except PermissionError:
        return True
    return False

def interfaces():
    return [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
"""
    tests = ["assert not python_connect()", "assert not raw_connect()", "assert audit_hook_blocks()"]
    if ROOT:
        tests.append("assert interfaces() == ['lo']")
    try:
        r = run_code(code, tests, timeout=5.0)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()                              # nobody connected
    finally:
        listener.close()
    assert r.status == "ok", r.detail
