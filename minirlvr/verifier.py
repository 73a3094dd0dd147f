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

Code is checked in code_verifier.py (run_code, run_codes, extract_code, ...), which this module hands out on
first use, so scoring math never loads it.
"""

import math
import re
from fractions import Fraction

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
    last_hash, last_box = (([None] + list(p.finditer(response)))[-1] for p in (_HASHES, _BOXED))
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
    last = ([None] + list(_NUMBER.finditer(text)))[-1]
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
        return float(pred_value is not None and math.isclose(float(pred_value), answer, rel_tol=1e-9, abs_tol=1e-12))
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


_CODE = ("extract_code", "CodeResult", "DETAIL_CAP", "parse_tests", "run_code", "run_codes", "sandbox_features")


def __getattr__(name):
    """`from minirlvr.verifier import run_code` (and the other names of _CODE) loads code_verifier.py then."""
    if name in _CODE:
        from minirlvr import code_verifier
        return getattr(code_verifier, name)
    raise AttributeError(f"module 'minirlvr.verifier' has no attribute {name!r}")
