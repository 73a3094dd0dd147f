"""verify_math / extract_answer / extract_code: tables of tricky answers, real GSM8K gold
solutions, and a cross-check against the reference GSM8K answer regex."""

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from minirlvr.verifier import extract_answer, extract_code, verify_math

# A folder with GSM8K's test.jsonl (and train.jsonl or train_first1000.jsonl); README "Real models" makes one.
GSM8K = Path(os.environ.get("MINIRLVR_GSM8K") or Path(__file__).resolve().parents[1] / "data" / "gsm8k")


# ---------------------------------------------------------------- extract_answer

@pytest.mark.parametrize("response, expected", [
    ("so 40 in total.\n#### 40", "40"),
    ("#### 1,234", "1234"),
    ("#### 1,234,567", "1234567"),
    ("#### $5", "5"),
    ("#### $1,250.00", "1250"),
    ("#### -3", "-3"),
    ("#### \u22123", "-3"),                       # unicode minus sign
    ("#### -$7", "-7"),
    ("#### $-7", "-7"),
    ("#### +4", "4"),
    ("#### 3.50", "3.5"),
    ("#### 0.50", "0.5"),
    ("#### .5", "0.5"),
    ("#### 1/2", "0.5"),
    ("#### 3 / 4", "0.75"),
    ("#### 1/3", "1/3"),                          # not a terminating decimal: stays a fraction
    ("#### -2/6", "-1/3"),
    ("#### 12 apples", "12"),
    ("#### 42.", "42"),
    ("#### 5%", "5"),
    ("####42", "42"),
    ("#### The answer is 18", "18"),
    ("#### -0", "0"),
    ("#### 007", "7"),
    ("\\boxed{42}", "42"),
    ("The answer is $\\boxed{1{,}234}$.", "1234"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{-\\dfrac{3}{4}}", "-0.75"),
    ("\\boxed{\\$5}", "5"),
    ("\\boxed{12\\text{ apples}}", "12"),
    ("\\boxed{{7}}", "7"),                        # nested braces
    ("#### 5\n#### 7", "7"),                      # last of several
    ("\\boxed{3} then \\boxed{9}", "9"),
    ("#### 5 ... on reflection \\boxed{6}", "6"),  # whichever marker comes last
    ("\\boxed{6} ... final:\n#### 8\n", "8"),
    ("#### 8\nThat is all.", "8"),                # text after the answer line is ignored
    ("\\boxed{yes}", "yes"),                      # non-numeric answers come back as text
])
def test_extract_answer_table(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("response", [
    "",
    "The answer is 42.",                          # prose only
    "She has 3 + 4 = 7 apples.",
    "####",                                       # empty marker
    "#### \n",
    "\\boxed{}",
    "#### 40\n####",                               # the last marker is empty
])
def test_extract_answer_missing(response):
    assert extract_answer(response) is None


# ---------------------------------------------------------------- verify_math

@pytest.mark.parametrize("response, answer, expected", [
    ("#### 1,234", 1234, 1.0),
    ("#### 1,234", "1234", 1.0),
    ("#### 1234", "1,234", 1.0),
    ("#### $5", 5, 1.0),
    ("#### -3", -3, 1.0),
    ("#### -3", 3, 0.0),
    ("#### 3", -3, 0.0),
    ("#### 3.50", 3.5, 1.0),
    ("#### 3.50", "3.5", 1.0),
    ("#### 3.5", "7/2", 1.0),
    ("#### 1/2", 0.5, 1.0),
    ("#### 1/2", "0.5", 1.0),
    ("#### 0.33", "1/3", 0.0),                    # no rounding to a "close enough" value
    ("#### 0.1", 0.1, 1.0),
    ("#### 0.3", 0.1 + 0.2, 1.0),                 # float noise in a float answer is absorbed
    ("#### 0.3001", 0.3, 0.0),
    ("\\boxed{42}", 42, 1.0),
    ("\\boxed{42}", 43, 0.0),
    ("#### 5\n#### 7", 7, 1.0),                   # last of several counts...
    ("#### 5\n#### 7", 5, 0.0),                   # ...and only the last
    ("The answer is 42.", 42, 0.0),               # prose only
    ("", 0, 0.0),
    ("#### 12 apples", 12, 1.0),
    ("#### 42.", 42, 1.0),
    ("#### 42.", "42", 1.0),
    ("#### 18", "Janet makes 9 * 2 = 18 dollars.\n#### 18", 1.0),   # a gold solution as answer
    ("#### 17", "Janet makes 9 * 2 = 18 dollars.\n#### 18", 0.0),
    ("\\boxed{yes}", "Yes", 1.0),
    ("\\boxed{yes}", "no", 0.0),
    ("#### 7", "seven", 0.0),
])
def test_verify_math_table(response, answer, expected):
    assert verify_math(response, answer) == expected


def test_verify_math_rejects_bad_answers():
    with pytest.raises(TypeError):
        verify_math("#### 1", None)
    with pytest.raises(TypeError):
        verify_math("#### 1", True)               # bool is an int subclass, but never a valid answer
    with pytest.raises(ValueError):
        verify_math("#### 1", float("nan"))
    with pytest.raises(TypeError):
        extract_answer(None)


def test_random_numbers_round_trip():
    """Numbers written in many styles read back to the exact same value."""
    rng = random.Random(0)
    for _ in range(2000):
        cents = rng.randint(-10**9, 10**9)
        value = Fraction(cents, 100)
        whole, frac = divmod(abs(cents), 100)
        styles = [f"{abs(cents) / 100:.2f}", f"{whole:,}.{frac:02d}", f"${whole:,}.{frac:02d}",
                  f"{whole}.{frac:02d}0"]
        for text in styles:
            sign = "-" if cents < 0 else rng.choice(["", "+"])
            got = extract_answer(f"#### {sign}{text}")
            assert Fraction(got) == value, (sign + text, got)
            assert verify_math(f"#### {sign}{text}", str(value)) == 1.0
        num, den = rng.randint(-50, 50), rng.randint(1, 12)
        assert verify_math(f"#### {num}/{den}", f"{Fraction(num, den)}") == 1.0


def test_degenerate_generations_do_not_hang_the_checker():
    """Sampled text can hold 100k spaces or a repeated token. A regex that backtracks
    super-linearly would take hours on these (the re engine cannot be interrupted), so
    they run in a subprocess that fails the test if it is not done in 30 s."""
    script = textwrap.dedent("""
        from minirlvr.verifier import extract_answer, extract_code, verify_math
        n = 100_000
        for text in [" " * n + "x", "$ " * (n // 2), "- " * (n // 2), "1," * (n // 2) + "1.1", "```" + " " * n,
                     "```py\\n" * (n // 5), "\\\\boxed{" * (n // 5), "#### " * (n // 5) + " " * n,
                     "\\\\frac{" * (n // 5), "1" + " " * n + "/" + " " * n + "x"]:
            for wrapped in (text, "#### " + text, "\\\\boxed{" + text):
                extract_answer(wrapped), extract_code(wrapped), verify_math(wrapped, 1)
                extract_answer(wrapped, "flexible"), verify_math(wrapped, 1, "flexible")
        print("done")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.strip() == "done", proc.stderr


# ---------------------------------------------------------------- flexible and math-verify modes

@pytest.mark.parametrize("response, expected", [
    ("#### 40", "40"),                            # a marker wins, as in strict mode
    ("The answer is 42.", "42"),
    ("She has 3 + 4 = 7 apples.", "7"),
    ("So she pays $1,234.50 in total.", "1234.5"),
    ("**Answer:** 18", "18"),
    ("It drops to -5 degrees.", "-5"),
    ("Read pages 10-12 tonight.", "12"),          # a dash between terms is not a minus sign
    ("x-2 is what remains", "2"),
    ("12 / 4 = 3", "3"),
    ("Half of it: 1/2", "0.5"),
    ("\\boxed{12} and then 99 more words", "12"),
    ("#### \nso the total is 9", "9"),            # an empty marker falls back to the last number
    ("\\boxed{yes}, 3 times", "yes"),
    ("No number here.", None),
    ("", None),
])
def test_extract_answer_flexible(response, expected):
    assert extract_answer(response, mode="flexible") == expected


@pytest.mark.parametrize("response, answer, strict, flexible", [
    ("#### 18", 18, 1.0, 1.0),
    ("Janet makes $18 every day.", 18, 0.0, 1.0),          # prose only: the two modes disagree
    ("Janet makes $18 every day.", "#### 18", 0.0, 1.0),
    ("So 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18", 18, 0.0, 1.0),
    ("So 16 - 3 - 4 = 9 eggs, and 9 * 2", 18, 0.0, 0.0),   # truncated before the answer
    ("#### 17\nActually it is 18.", 18, 0.0, 0.0),         # a marker is final in both modes
])
def test_verify_math_strict_vs_flexible(response, answer, strict, flexible):
    assert verify_math(response, answer) == strict
    assert verify_math(response, answer, mode="strict") == strict
    assert verify_math(response, answer, mode="flexible") == flexible


def test_unknown_answer_mode_is_refused():
    with pytest.raises(ValueError, match="strict, flexible"):
        verify_math("#### 1", 1, mode="lenient")
    with pytest.raises(ValueError, match="strict, flexible"):
        extract_answer("#### 1", mode="math_verify")       # math-verify compares; it does not extract


def test_math_verify_mode():
    pytest.importorskip("math_verify")
    assert verify_math("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", mode="math_verify") == 1.0
    assert verify_math("So $x = \\boxed{\\sqrt{2}}$", "\\sqrt{2}", mode="math_verify") == 1.0
    assert verify_math("\\boxed{3}", "Janet makes 9 * 2 = 18 dollars.\n#### 18", mode="math_verify") == 0.0
    assert verify_math("\\boxed{18}", "Janet makes 9 * 2 = 18 dollars.\n#### 18", mode="math_verify") == 1.0


def test_math_verify_mode_without_the_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)     # import fails as if not installed
    with pytest.raises(ImportError, match="pip install math-verify"):
        verify_math("\\boxed{1}", 1, mode="math_verify")


# ---------------------------------------------------------------- real GSM8K gold solutions

def _gsm8k():
    files = [GSM8K / n for n in ("test.jsonl", "train_first1000.jsonl", "train.jsonl") if (GSM8K / n).is_file()]
    if not files:
        pytest.skip(f"GSM8K data not found in {GSM8K}: set MINIRLVR_GSM8K to a folder holding test.jsonl")
    rows = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    assert len(rows) > 2000
    return rows


def _reference_answer(solution: str) -> str:
    """The answer as OpenAI's grade-school-math reference reads it (regex on '#### ')."""
    match = re.search(r"#### (\-?[0-9\.\,]+)", solution)
    return match.group(1).strip().replace(",", "")


def test_gsm8k_gold_solutions_verify_against_their_own_answer():
    rows = _gsm8k()
    for row in rows:
        solution, final = row["answer"], row["answer"].rsplit("####", 1)[1].strip()
        assert verify_math(solution, final) == 1.0, solution
        assert verify_math(solution, int(final.replace(",", ""))) == 1.0, solution
        assert verify_math(solution, solution) == 1.0
        assert verify_math(solution, final, mode="flexible") == 1.0
        assert verify_math(solution.rsplit("####", 1)[0], final) == 0.0   # strict: no marker, no answer
        assert extract_answer(solution) == str(int(_reference_answer(solution)))


def test_flexible_mode_reads_worked_solutions_without_their_answer_line():
    """A worked solution with its '#### N' line cut off usually ends on the answer (97% of GSM8K test:
    1,282 of 1,319); flexible mode must read those, or it would not measure what a real model got right."""
    rows = _gsm8k()
    hits = sum(verify_math(r["answer"].rsplit("####", 1)[0], r["answer"].rsplit("####", 1)[1].strip(), "flexible")
               for r in rows)
    assert hits / len(rows) > 0.95


def test_gsm8k_gold_solutions_fail_against_other_answers():
    """Checked against the next problem's answer, a gold solution scores 1.0 exactly
    when the two answers happen to be equal, and that is rare."""
    rows = _gsm8k()
    finals = [int(_reference_answer(r["answer"])) for r in rows]
    hits = 0
    for i, row in enumerate(rows):
        j = (i + 1) % len(rows)
        score = verify_math(row["answer"], finals[j])
        assert score == float(finals[i] == finals[j])
        hits += score
    assert hits / len(rows) < 0.05


# ---------------------------------------------------------------- extract_code

@pytest.mark.parametrize("response, expected", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("Here you go:\n```py\nx = 1\n```\nDone.", "x = 1\n"),
    ("```\ny = 2\n```", "y = 2\n"),
    ("first\n```python\na = 1\n```\nthen better:\n```python\nb = 2\n```\n", "b = 2\n"),
    ("```python\ndef g():\n    return 3", "def g():\n    return 3"),     # cut off before the closing fence
    ("```python\ndef f(x):\n    return 2 * x\n```\nOutput:\n```\n6\n```", "def f(x):\n    return 2 * x\n"),
    ("```Python3\nz = 3\n```\n```text\nz is 3\n```", "z = 3\n"),
    ("def h():\n    return 4\n", "def h():\n    return 4\n"),          # no fence: unchanged
])
def test_extract_code_table(response, expected):
    assert extract_code(response) == expected
