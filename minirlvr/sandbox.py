"""The jail that runs model-written code. Started (and kept, in a pool) by `code_verifier.run_code` as

    python -I -S minirlvr/sandbox.py      (a program per JSON line on stdin; per test a JSON line on
                                           stdout, then a "done" line per program; ends at end of input)

It imports only the standard library (and jail.py beside it: the namespaces and the
sealed filesystem) and is never imported by the trainer: starting
a bare interpreter (-I: no environment, user site or cwd on sys.path; -S: no
site-packages) costs ~10 ms, importing torch would cost seconds.

Process tree and what each layer buys:

    caller ──Popen──► launcher (root)             unshares net, mount, pid and ipc namespaces
                        └─fork─► supervisor         pid 1 of the new pid namespace: when it dies the
                                   │                kernel kills everything inside; seals the filesystem
                                   └─fork per test─► worker: rlimits, unprivileged uid, runs code + 1 test

- Network: a fresh network namespace has only a loopback device that is down, so
  nothing outside is reachable, even through ctypes or raw syscalls. On top of that an
  audit hook makes every `socket.*` operation raise (this layer also works unprivileged).
- Filesystem: every mount is remounted read-only in the private mount namespace except
  the working directory, a fresh temporary dir owned by the sandbox uid. If the stdlib
  sits in a private directory (/root/.pyenv here) only the stdlib is made visible.
- Processes: each sandbox gets its own uid (UID_BASE + launcher pid, never a real
  account) so RLIMIT_NPROC, which does not bind root, caps a fork bomb, and the worker
  cannot signal, ptrace or read /proc/<pid>/environ of anything outside. A fresh /proc
  shows only the sandbox's own processes; getppid() is the supervisor, which is root.
- Time: each test gets a share of the remaining wall clock (remaining / tests left),
  then the supervisor SIGKILLs every process in the namespace; RLIMIT_CPU backs it up.
  The caller independently kills the whole process group if the launcher overruns.
- Output: stdout+stderr go to a pipe; the first OUTPUT_KEEP bytes are kept and a worker
  writing more than OUTPUT_KILL bytes is killed.

Without root, the launcher tries the same namespaces inside a new user namespace (no
uid switch); if even that is not allowed it falls back to rlimits + the audit hook.
The JSON "done" record lists which layers were active ("features").

What it does not do: stop code that is *deliberately* written to fool the tests (an
object whose __eq__ is always True, writing a fake result to the result pipe, reading
the test from the caller's frame, or the other programs of its launch from the memory
every worker inherits). It contains code; it does not make rewards unhackable.

Worker result protocol on fd 3: b"L" once the code has loaded, then b"P" (passed),
b"F<msg>" (the test raised) or b"E<msg>" (the code raised while loading). A worker that
exits without writing P/F/E counts as failed, so os._exit(0) does not pass a test.
"""

import json
import os
import resource
import select
import signal
import sys
import time

UID_BASE = 1 << 30         # sandbox uid = UID_BASE + launcher pid: unique among live sandboxes
MAX_PROCS = 16             # RLIMIT_NPROC for the sandbox uid (threads count too)
MEMORY_BYTES = 1 << 30     # RLIMIT_AS per worker
FILE_BYTES = 16 << 20      # RLIMIT_FSIZE: largest file the code may write
MAX_OPEN_FILES = 64        # RLIMIT_NOFILE
OUTPUT_KEEP = 4096         # bytes of stdout+stderr kept per test for the report
OUTPUT_KILL = 1 << 20      # a worker that writes more than this is killed
MESSAGE_KEEP = 1000        # chars of an exception message kept
SETUP_FAILED = 71          # worker exit code when confinement could not be set up
# Modules that solutions commonly import, loaded once in the supervisor (~4 ms) instead of
# once per test in every worker; anything else in the stdlib is imported on demand.
PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect",
           "string", "operator", "typing")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves this file's folder off sys.path
from jail import (PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG,  # noqa: E402
                  prctl, seal_filesystem, unshare_namespaces)
del sys.path[0]                                                  # the code under test gets -I's sys.path


# ---------------------------------------------------------------- launcher

def main() -> None:
    job = json.loads(sys.stdin.buffer.readline())   # later lines: more programs (the supervisor reads them)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)     # never outlive the caller...
    if os.getppid() != job["caller_pid"]:        # ...even if it died before the line above
        sys.exit(1)
    root = os.geteuid() == 0
    uid = UID_BASE + os.getpid() if root else None
    features = unshare_namespaces(root)
    if uid is not None:
        os.chown(job["workdir"], uid, uid)
        features.add("uid")
    sys.stdout.flush()
    pid = os.fork()                              # the first child is pid 1 of the new pid namespace
    if pid == 0:
        code = 70
        try:
            _supervise(job, uid, features)
            code = 0
        except BaseException as e:               # report and exit: never fall through to launcher code
            os.write(2, f"sandbox supervisor: {type(e).__name__}: {e}\n".encode())
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---------------------------------------------------------------- supervisor

def _supervise(job: dict, uid, features: set) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)     # as pid 1, our death takes the namespace down
    prctl(PR_SET_CHILD_SUBREAPER, 1)            # orphans are ours to reap, even without a pid ns
    prctl(PR_SET_DUMPABLE, 0)                   # same-uid workers cannot open /proc/1/fd/1 to forge results
    if "mountns" in features:
        try:
            seal_filesystem(job["workdir"], own_proc="pidns" in features)
            features.add("readonly_fs")
        except OSError as e:
            os.write(2, f"sandbox: filesystem not sealed: {e}\n".encode())
    for name in PRELOAD:
        __import__(name)

    def emit(record: dict) -> None:
        os.write(1, (json.dumps(record) + "\n").encode())

    # Programs run one after another, each as if launched alone: its own deadline, a fresh worker per
    # test (everything in the namespace is killed after each), and the workdir emptied after it. Requests
    # come one JSON line each (a pooled sandbox serves many) until the caller closes stdin.
    workdir = job["workdir"]
    while job:
        code, tests, deadline = _compile(job["code"]), job["tests"], time.monotonic() + job["timeout"]
        for i, test in enumerate(tests):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome, message, output, loaded = "timeout", "no time left for this test", "", True
            else:
                outcome, message, output, loaded = _run_worker(
                    code, compile(test, "test.py", "exec"), remaining / (len(tests) - i), uid, workdir)
            emit({"test": i, "outcome": outcome, "message": message, "output": output})
            if not loaded:
                # The code itself failed to load (syntax error, top-level exception or hang):
                # it would fail the same way for every test, so don't spend time repeating it.
                for k in range(i + 1, len(tests)):
                    emit({"test": k, "outcome": outcome, "output": "", "message": "(same as test 0: code did not load)"})
                break
        _empty(workdir)
        emit({"done": True, "features": sorted(features)})
        line = sys.stdin.buffer.readline()
        job = line.strip() and json.loads(line)


def _compile(code: str):
    """(code object or the exception compiling raised, warnings text), made once here rather than in every
    worker: a compile in a freshly forked worker costs ~2.5 ms of copy-on-write page faults, more than the
    test. Compiling runs nothing; the worker prints the warnings and raises the exception where its own
    compile would have, so a program's outcome, message and output are the same."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        try:
            obj = compile(code, "solution.py", "exec")
        except BaseException as e:               # SyntaxError, ValueError (NUL bytes), RecursionError ...
            obj = e
    return obj, "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, None) for w in caught)


def _empty(path: str) -> None:
    """Remove everything inside `path` (not following symlinks), whatever modes the program set."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)
            _empty(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _read_into(fd: int, buf: bytearray, keep: int) -> int:
    """Read what is available from fd, keeping at most `keep` bytes in buf; -1 at EOF."""
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return 0
    if not chunk:
        return -1
    buf += chunk[: max(0, keep - len(buf))]
    return len(chunk)


def _run_worker(code: tuple, test, budget: float, uid, workdir: str):
    """Run code + one test in a fresh worker; returns (outcome, message, output, loaded)."""
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _worker(code, test, uid, workdir, res_w, out_w, budget)   # never returns
    os.close(res_w)
    os.close(out_w)
    for fd in (res_r, out_r):
        os.set_blocking(fd, False)
    pidfd = os.pidfd_open(pid)
    result, output = bytearray(), bytearray()
    written, over_limit, timed_out = 0, False, False
    deadline = time.monotonic() + budget
    watch = [res_r, out_r, pidfd]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(watch, [], [], left)
        if pidfd in ready:                       # the worker exited; its pipes hold everything it wrote
            break
        if res_r in ready and _read_into(res_r, result, 4096) < 0:
            watch.remove(res_r)
        if out_r in ready:
            n = _read_into(out_r, output, OUTPUT_KEEP)
            if n < 0:
                watch.remove(out_r)
            written += max(n, 0)
            if written > OUTPUT_KILL:
                over_limit = True
                break
    # Drain what is already buffered (bounded: descendants may still be writing).
    while _read_into(res_r, result, 4096) > 0 and len(result) < 4096:
        pass
    while len(output) < OUTPUT_KEEP and _read_into(out_r, output, OUTPUT_KEEP) > 0:
        pass
    _kill_all(pid, uid)
    _, status = os.waitpid(pid, 0)
    _reap_orphans()
    for fd in (res_r, out_r, pidfd):
        os.close(fd)

    text = output.decode("utf-8", "replace")
    loaded = result.startswith(b"L")
    verdict = bytes(result[1:] if loaded else result)
    message = verdict[1:].decode("utf-8", "replace")[:MESSAGE_KEEP]
    if over_limit:
        return "killed", f"output limit exceeded ({OUTPUT_KILL} bytes)", text, loaded
    if verdict.startswith(b"P"):
        return "pass", "", text, True
    if verdict.startswith(b"F"):
        return "fail", message, text, True
    if verdict.startswith(b"E"):
        return "error", message, text, False
    if timed_out:
        return "timeout", f"time limit exceeded ({budget:.2f} s)", text, loaded
    if not loaded and os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED:
        return "sandbox_error", text[-MESSAGE_KEEP:], "", False
    if os.WIFSIGNALED(status):
        return "killed", f"killed by {signal.Signals(os.WTERMSIG(status)).name}", text, loaded
    return "fail", f"exited with code {os.waitstatus_to_exitcode(status)} without a result", text, loaded


def _kill_all(worker_pid: int, uid) -> None:
    """SIGKILL the worker and everything it started."""
    if os.getpid() == 1:
        # We are init of our own pid namespace: kill(-1) reaches exactly its other processes.
        os.kill(-1, signal.SIGKILL)
    elif uid is not None:
        # kill(-1) from the sandbox uid reaches every process of that uid and nothing else.
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
    else:
        try:
            os.kill(worker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reap_orphans() -> None:
    """Collect killed descendants (they count against RLIMIT_NPROC until reaped)."""
    give_up = time.monotonic() + 0.5
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > give_up:
                return
            time.sleep(0.001)


# ---------------------------------------------------------------- worker

def _deny_network(event: str, args) -> None:
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the sandbox")


def _describe(exc: BaseException) -> str:
    """'Type: message (solution.py line N)', without importing traceback."""
    try:
        message = str(exc)
    except BaseException:
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "solution.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    return text[:MESSAGE_KEEP] + (f" (solution.py line {line})" if line else "")


def _worker(code: tuple, test, uid, workdir: str, res_w: int, out_w: int, budget: float):
    try:
        os.setsid()                              # killpg(0) must not reach the launcher's group
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(res_w, 3)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.closerange(4, 1 << 16)                # drops the channel to the caller, among others
        for res, limit in ((resource.RLIMIT_CPU, int(budget) + 1), (resource.RLIMIT_AS, MEMORY_BYTES),
                           (resource.RLIMIT_FSIZE, FILE_BYTES), (resource.RLIMIT_NPROC, MAX_PROCS),
                           (resource.RLIMIT_NOFILE, MAX_OPEN_FILES), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (limit, limit))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)           # setuid binaries cannot give privileges back
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # (cleared by setuid, so set it after)
        os.chdir(workdir)
        sys.addaudithook(_deny_network)          # cannot be removed once added
    except BaseException as e:
        os.write(2, f"worker setup failed: {e}".encode())
        os._exit(SETUP_FAILED)                   # never run user code half-confined
    env = {"__name__": "solution", "__builtins__": __builtins__}
    stage, verdict = b"E", b""
    (code, warned) = code
    try:
        if warned:
            os.write(2, warned.encode("utf-8", "replace"))
        if isinstance(code, BaseException):
            raise code
        exec(code, env)
        os.write(3, b"L")
        stage = b"F"
        exec(test, env)
        verdict = b"P"
    except BaseException as e:                   # SystemExit and KeyboardInterrupt fail a test too
        verdict = stage + _describe(e).encode("utf-8", "replace")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os.write(3, verdict)
    os._exit(0)


if __name__ == "__main__":
    main()
