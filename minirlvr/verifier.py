"""Verifiable rewards: math answers checked exactly, code checked by running tests.

    verify_math(response, answer, mode="strict") -> 1.0 | 0.0
    run_code(code, tests, timeout=5.0) -> CodeResult(passed, total, pass_rate, status, detail)

Math answers are read in one of three modes (MATH_MODES):

    strict       the GSM8K convention: the final answer is the *last* `#### N` line or `\\boxed{N}`.
                 An answer given only in prose does not count, which is what makes the reward
                 verifiable and hard to game by listing many numbers. MiniWorld trains and scores this.
    flexible     strict when the response has a marker, else the last number in the response (the
                 "flexible-extract" of common GSM8K harnesses). Real instruct models rarely write
                 `#### N` unprompted; this shows what they got right, and how much of a strict score is
                 format. It is looser: a truncated response's last intermediate number can match.
    math_verify  Hugging Face's `math-verify` (optional extra: pip install math-verify), for LaTeX
                 answers of MATH-style data; imported only when this mode is asked for.

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
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

# ---------------------------------------------------------------- math answers

# A number as written in answers: optional sign and $ in either order, thousands
# commas, decimals, and a simple fraction. "-$1,234.50", "$-3", ".5", "3 / 4".
# Whitespace is only taken after a sign or $ that is present: two optional runs of \s*
# in a row backtrack cubically on a long run of spaces, which sampled text does contain.
_NUMBER = re.compile(
    r"(?:(?P<sign>[-+\u2212])\s*)?(?:\$\s*)?(?:(?P<sign2>[-+\u2212])\s*)?"
    r"(?P<num>\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?")
_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\boxed\s*\{")
# LaTeX that may wrap a boxed number: \frac{1}{2}, 1{,}234, \$5, 5\%, \text{ apples}.
_LATEX = [(re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"\1/\2"),
          (re.compile(r"\\text\s*\{([^{}]*)\}"), r" \1"),
          (re.compile(r"\{,\}"), ","),
          (re.compile(r"\\[,!;: ]"), ""),
          (re.compile(r"\\([$%])"), r"\1"),
          (re.compile(r"\\left|\\right"), "")]


def _boxed_content(text: str, start: int) -> str:
    """Text inside the braces opened just before `start`, respecting nesting."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]          # unclosed brace: take the rest, as a human grader would


def _final_answer_text(response: str) -> str | None:
    """Raw text of the last `#### ...` line or `\\boxed{...}`, whichever comes last."""
    hashes = list(_HASHES.finditer(response))
    boxes = list(_BOXED.finditer(response))
    last_hash = hashes[-1] if hashes else None
    last_box = boxes[-1] if boxes else None
    if last_hash is None and last_box is None:
        return None
    if last_box is None or (last_hash is not None and last_hash.start() > last_box.start()):
        return response[last_hash.end():].split("\n", 1)[0]
    content = _boxed_content(response, last_box.end())
    for pattern, repl in _LATEX:
        content = pattern.sub(repl, content)
    return content


def _to_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact Fraction (None if there is none)."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    value = Fraction(m["num"].replace(",", ""))
    if m["den"] is not None:
        den = Fraction(m["den"])
        if den == 0:
            return None
        value /= den
    minus = ("-", "\u2212")
    negative = (m["sign"] in minus) != (m["sign2"] in minus)   # "-$-3" is +3, as written
    return -value if negative else value


def _canonical(x: Fraction) -> str:
    """'1234', '3.5', '-0.25'; '1/3' when the decimal would not terminate."""
    if x.denominator == 1:
        return str(x.numerator)
    d, twos, fives = x.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{x.numerator}/{x.denominator}"
    k = max(twos, fives)                         # x * 10**k is an integer: exact decimal
    digits = str(abs(x.numerator) * 10**k // x.denominator).rjust(k + 1, "0")
    return ("-" if x < 0 else "") + digits[:-k] + "." + digits[-k:]


def _last_number(text: str) -> Fraction | None:
    """The last number written anywhere in `text` (flexible mode)."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is None:
        return None
    start = last.start()
    # In "pages 10-12" or "x-2" the dash joins two terms; it is not the sign of the last number.
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in ")]}"):
        start = last.start("num")
    return _to_number(text[start:last.end()])


def _clean_text(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


MATH_MODES = ("strict", "flexible", "math_verify")


def _check_mode(mode: str, allowed=MATH_MODES) -> None:
    if mode not in allowed:
        raise ValueError(f"answer mode must be one of {', '.join(allowed)}, got {mode!r}")


def extract_answer(response: str, mode: str = "strict") -> str | None:
    """The final answer (last `#### N` or `\\boxed{N}`; in flexible mode else the last number), normalised.

    Numbers come back canonical ("1,234" -> "1234", "$3.50" -> "3.5", "1/2" -> "0.5",
    "12 apples" -> "12"); a final answer without a number comes back as its cleaned,
    lower-cased text; no `####`/`\\boxed{}` at all, or an empty one, gives None (strict),
    or the last number in the response if there is one (flexible).
    """
    if not isinstance(response, str):
        raise TypeError(f"extract_answer: response must be str, got {type(response).__name__}")
    _check_mode(mode, ("strict", "flexible"))
    text = _final_answer_text(response)
    if text is not None:
        value = _to_number(text)
        if value is not None:
            return _canonical(value)
        if _clean_text(text):
            return _clean_text(text)
    if mode == "flexible":
        value = _last_number(response)
        return _canonical(value) if value is not None else None
    return None


def verify_math(response: str, answer: str | int | float, mode: str = "strict") -> float:
    """1.0 if the response's final answer equals `answer`, else 0.0.

    `answer` may be a number, a string like "1,234", or a whole gold solution ending
    in `#### N`. Exact comparison of rationals (so "3.50" == 3.5 == "7/2"); a float
    `answer` is compared with a relative tolerance of 1e-9 to absorb float noise only.
    `mode` is one of MATH_MODES (see the module docstring).
    """
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise TypeError(f"verify_math: answer must be str, int or float, got {type(answer).__name__}")
    _check_mode(mode)
    if mode == "math_verify":
        return _math_verify(response, answer)
    pred = extract_answer(response, mode)
    if pred is None:
        return 0.0
    pred_value = _to_number(pred) if _NUMBER.fullmatch(pred) else None
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"verify_math: answer must be finite, got {answer}")
        ok = pred_value is not None and math.isclose(float(pred_value), answer, rel_tol=1e-9, abs_tol=1e-12)
        return float(ok)
    if isinstance(answer, int):
        return float(pred_value == answer)
    gold = extract_answer(answer) if (_HASHES.search(answer) or _BOXED.search(answer)) else None
    if gold is None:
        gold_value = _to_number(answer)
        gold = _canonical(gold_value) if gold_value is not None else _clean_text(answer)
    return float(pred == gold)


def _math_verify(response: str, answer: str | int | float) -> float:
    """verify_math through Hugging Face's math-verify (LaTeX-aware, symbolic equality)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ImportError("answer mode 'math_verify' needs the math-verify package: pip install math-verify") from None
    if isinstance(answer, str) and _HASHES.search(answer):
        answer = answer.rsplit("####", 1)[1].strip()     # a GSM8K gold solution: its final line
    if isinstance(answer, float) and not math.isfinite(answer):
        raise ValueError(f"verify_math: answer must be finite, got {answer}")
    gold = parse(answer if isinstance(answer, str) and "$" in answer else f"${answer}$")
    return float(bool(gold) and verify(gold, parse(response)))


# ---------------------------------------------------------------- code

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
