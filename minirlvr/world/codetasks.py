"""Verifiable code: tiny function-writing tasks, checked by hidden assertion tests.

A task is a template (what the function does, its reference body, how to draw inputs) plus a
function name, an argument name and sometimes a constant k. The hidden tests are assertion strings
("assert sum_evens([1, 2, 4]) == 6") for minirlvr.verifier.run_code; their expected values come from
running the reference solution itself on drawn inputs, so a solution and its tests cannot disagree.

Record: {"prompt", "tests" (list of assertion strings), "solution" (a ```python block), "entry_point"}.

Two paths (miniworld-4, code W1). On miniworld-3 the aligned base passes 98.5% of code_test greedy: code RL has
nothing to gain. Real assistants' demonstrations contain plausible bugs, so from miniworld-4 on the alignment
set's code answers are the reference (CORRECT) with probability CORRECT_SHARE[template] and a SLOPPY variant
otherwise: a classic slip that runs but is wrong on some inputs (`>=` for `>`, `xs * k` for scaling each number,
a product that starts at 0). Pretraining text keeps only correct code, so the pretrained model knows the right
answer and the aligned assistant writes the wrong one part of the time: a path for RL's Gibbs tilt to reweight,
and for SFT on correct solutions to repair. `code_path_of` reads which path a response took. Held-out code
records of miniworld-4 carry at least one hidden test on which the sloppy variant fails (`discriminate`).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeTemplate:
    key: str
    names: tuple[str, ...]   # function names to choose from
    desc: str                # "returns the sum of the even numbers in {arg}" ({k} if it takes a constant)
    body: str                # reference body (statements, unindented), e.g. "return sum({arg})"
    inputs: str              # "ints" | "ints_nonempty" | "signed" | "small" | "word"
    ks: tuple[int, ...] = ()


TEMPLATES: tuple[CodeTemplate, ...] = (
    CodeTemplate("sum_evens", ("sum_evens", "even_total", "add_evens"),
                 "returns the sum of the even numbers in {arg}", "return sum(x for x in {arg} if x % 2 == 0)", "ints"),
    CodeTemplate("sum_odds", ("sum_odds", "odd_total", "add_odds"),
                 "returns the sum of the odd numbers in {arg}", "return sum(x for x in {arg} if x % 2 == 1)", "ints"),
    CodeTemplate("total", ("total", "sum_all", "add_up"),
                 "returns the sum of all numbers in {arg}", "return sum({arg})", "ints"),
    CodeTemplate("count_k", ("count_k", "how_many", "count_value"),
                 "returns how many times {k} appears in {arg}", "return {arg}.count({k})", "ints", (1, 2, 3, 5, 7)),
    CodeTemplate("greater", ("keep_big", "above", "filter_greater"),
                 "returns a list of the numbers in {arg} that are greater than {k}",
                 "return [x for x in {arg} if x > {k}]", "ints", (2, 3, 4, 5, 6)),
    CodeTemplate("count_greater", ("count_big", "count_above", "num_greater"),
                 "returns how many numbers in {arg} are greater than {k}",
                 "return sum(1 for x in {arg} if x > {k})", "ints", (2, 3, 4, 5, 6)),
    CodeTemplate("largest", ("largest", "biggest", "max_value"),
                 "returns the largest number in the non-empty list {arg}", "return max({arg})", "ints_nonempty"),
    CodeTemplate("smallest", ("smallest", "least", "min_value"),
                 "returns the smallest number in the non-empty list {arg}", "return min({arg})", "ints_nonempty"),
    CodeTemplate("reverse_list", ("reverse_list", "backwards", "flip"),
                 "returns the list {arg} in reverse order", "return {arg}[::-1]", "ints"),
    CodeTemplate("add_k", ("add_k", "shift", "plus_all"),
                 "returns a new list with {k} added to each number in {arg}",
                 "return [x + {k} for x in {arg}]", "ints", (1, 2, 3, 10)),
    CodeTemplate("times_k", ("times_k", "scale", "multiply_all"),
                 "returns a new list with each number in {arg} multiplied by {k}",
                 "return [x * {k} for x in {arg}]", "ints", (2, 3, 4, 5)),
    CodeTemplate("count_positive", ("count_positive", "positives", "num_positive"),
                 "returns how many numbers in {arg} are greater than zero", "return sum(1 for x in {arg} if x > 0)",
                 "signed"),
    CodeTemplate("drop_negative", ("drop_negative", "non_negative", "keep_positive"),
                 "returns the numbers in {arg} that are not negative, in order", "return [x for x in {arg} if x >= 0]",
                 "signed"),
    CodeTemplate("squares", ("squares", "square_all", "square_each"),
                 "returns a new list with the square of each number in {arg}", "return [x * x for x in {arg}]", "ints"),
    CodeTemplate("product", ("product", "multiply", "prod_all"),
                 "returns the product of the numbers in {arg}, or 1 if it is empty",
                 "p = 1\nfor x in {arg}:\n    p *= x\nreturn p", "small"),
    CodeTemplate("remove_k", ("remove_k", "without", "drop_value"),
                 "returns the list {arg} without any copies of {k}", "return [x for x in {arg} if x != {k}]", "ints",
                 (0, 1, 2, 4)),
    CodeTemplate("first_plus_last", ("first_plus_last", "ends_sum", "edge_sum"),
                 "returns the first number plus the last number of the non-empty list {arg}",
                 "return {arg}[0] + {arg}[-1]", "ints_nonempty"),
    CodeTemplate("reverse_word", ("reverse_word", "mirror", "flip_text"),
                 "returns the string {arg} reversed", "return {arg}[::-1]", "word"),
    CodeTemplate("count_vowels", ("count_vowels", "vowels", "num_vowels"),
                 "returns how many vowels (a, e, i, o, u) are in the lower-case string {arg}",
                 "return sum(1 for c in {arg} if c in 'aeiou')", "word"),
    CodeTemplate("is_palindrome", ("is_palindrome", "same_backwards", "palindrome"),
                 "returns True if the string {arg} reads the same backwards, else False",
                 "return {arg} == {arg}[::-1]", "word"),
)

# The sloppy variant of each template (miniworld-4): runs, looks right, fails some hidden tests.
SLOPPY: dict[str, str] = {
    "sum_evens": "return sum({arg})",
    "sum_odds": "return sum({arg})",
    "total": "return sum({arg}[:-1])",
    "count_k": "return len({arg})",
    "greater": "return [x for x in {arg} if x >= {k}]",
    "count_greater": "return sum(1 for x in {arg} if x >= {k})",
    "largest": "return {arg}[-1]",
    "smallest": "return {arg}[0]",
    "reverse_list": "return sorted({arg}, reverse=True)",
    "add_k": "return {arg} + [{k}]",
    "times_k": "return {arg} * {k}",
    "count_positive": "return sum(1 for x in {arg} if x >= 0)",
    "drop_negative": "return [x for x in {arg} if x > 0]",
    "squares": "return [x * 2 for x in {arg}]",
    "product": "p = 0\nfor x in {arg}:\n    p *= x\nreturn p",
    "remove_k": "return [x for x in {arg} if x != {k}][:-1]",
    "first_plus_last": "return {arg}[0] + {arg}[1]",
    "reverse_word": "return {arg}[:0:-1]",
    "count_vowels": "return sum(1 for c in {arg} if c in 'aeio')",
    "is_palindrome": "return {arg} == {arg}[::1]",
}
# Share of alignment code answers that are correct, per template: four levels in template order, so that some
# templates' majority answer is sloppy (greedy headroom) and every template's correct path is sampled at T = 1.
# Set before E2v4's go/no-go (results/E2v4/NOTES.md lists every attempt).
SHARE_LEVELS = (0.3, 0.45, 0.6, 0.75)
CORRECT_SHARE: dict[str, float] = {t.key: SHARE_LEVELS[i % len(SHARE_LEVELS)] for i, t in enumerate(TEMPLATES)}

LIST_ARGS = ("xs", "nums", "values", "items", "data")
WORD_ARGS = ("s", "text", "word", "w")
PROMPTS = ("Write a Python function {fn}({arg}) that {desc}.",
           "Define {fn}({arg}) in Python. It {desc}.",
           "Implement the Python function {fn}({arg}), which {desc}.")
SYLLABLES = ("ka", "lo", "mi", "ne", "ra", "to", "bi", "su")


def _function(body: str, fn: str, arg: str) -> str:
    return f"def {fn}({arg}):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def _draw_input(rng: random.Random, kind: str):
    if kind == "word":
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        return w + w[::-1] if rng.random() < 0.3 else w  # some palindromes, so both answers occur
    n = rng.randint(1 if kind == "ints_nonempty" else 0, 6)
    lo, hi = {"signed": (-9, 9), "small": (0, 5)}.get(kind, (0, 9))
    return [rng.randint(lo, hi) for _ in range(n)]


def make_code(rng: random.Random, n_tests: int = 4) -> dict:
    """One task: a prompt, a reference solution and `n_tests` hidden assertions (distinct inputs)."""
    t = rng.choice(TEMPLATES)
    fn = rng.choice(t.names)
    arg = rng.choice(WORD_ARGS if t.inputs == "word" else LIST_ARGS)
    k = rng.choice(t.ks) if t.ks else None
    desc = t.desc.format(arg=arg, k=k)
    body = t.body.format(arg=arg, k=k)
    code = _function(body, fn, arg)
    namespace: dict = {}
    exec(code, namespace)  # our own reference solution, never model output
    tests, seen = [], set()
    for _ in range(50 * n_tests):
        x = _draw_input(rng, t.inputs)
        if repr(x) in seen:
            continue
        seen.add(repr(x))
        tests.append(f"assert {fn}({x!r}) == {namespace[fn](x)!r}")
        if len(tests) == n_tests:
            break
    prompt = rng.choice(PROMPTS).format(fn=fn, arg=arg, desc=desc)
    return {"prompt": prompt, "tests": tests, "solution": f"```python\n{code}```", "entry_point": fn}


# ------------------------------------------------------------------------------------- miniworld-4 paths

def template_of(rec: dict) -> tuple[CodeTemplate, str, int | None]:
    """(template, argument name, constant k) of a code record, read back from its prompt and solution."""
    arg = re.match(r"```python\ndef \w+\((\w+)\)", rec["solution"])[1]
    for t in TEMPLATES:
        for k in t.ks or (None,):
            if t.desc.format(arg=arg, k=k) in rec["prompt"] and \
                    _function(t.body.format(arg=arg, k=k), rec["entry_point"], arg) in rec["solution"]:
                return t, arg, k
    raise ValueError(f"not a MiniWorld code record: {rec['prompt']!r}")


def _sloppy_code(rec: dict) -> str:
    t, arg, k = template_of(rec)
    return _function(SLOPPY[t.key].format(arg=arg, k=k), rec["entry_point"], arg)


def sloppy_solution(rec: dict) -> str:
    return f"```python\n{_sloppy_code(rec)}```"


def written_code(rng: random.Random, rec: dict, version: int) -> str:
    """How the alignment set answers a code prompt: before miniworld-4 always the reference (and no random draw,
    so older worlds rebuild byte for byte); from miniworld-4 CORRECT or SLOPPY, CORRECT_SHARE[template] : rest."""
    if version < 4 or rng.random() < CORRECT_SHARE[template_of(rec)[0].key]:
        return rec["solution"]
    return sloppy_solution(rec)


def _body(code: str) -> list[str] | None:
    m = re.search(r"def \w+\(\w+\):\n(.*?)(?:```|$)", code, re.S)
    return [l.rstrip() for l in m[1].strip("\n").splitlines() if l.strip()] if m else None


def code_path_of(response: str, rec: dict) -> str:
    """'correct' if the response's function body is the reference's, 'sloppy' if it is the sloppy variant's
    (whatever the function is called), else 'other'."""
    body = _body(response)
    if body is None:
        return "other"
    if body == _body(rec["solution"]):
        return "correct"
    return "sloppy" if body == _body(sloppy_solution(rec)) else "other"


def _run(code: str, fn: str, x):
    namespace: dict = {}
    try:
        exec(code, namespace)  # our own reference or sloppy variant, never model output
        return repr(namespace[fn](list(x) if isinstance(x, list) else x))
    except Exception as e:  # the sloppy variant may raise (e.g. an index error): that is a failed test too
        return f"raised {type(e).__name__}"


def discriminate(rng: random.Random, rec: dict) -> dict:
    """The record with a fifth hidden test on which the sloppy variant fails, unless one of its tests already
    separates the two (miniworld-4's held-out and RL code records): passing every test then means the correct
    path, not a lucky sloppy one."""
    t, arg, k = template_of(rec)
    fn = rec["entry_point"]
    good, bad = _function(t.body.format(arg=arg, k=k), fn, arg), _sloppy_code(rec)
    inputs = [ast.literal_eval(a[len(f"assert {fn}("):a.rindex(") == ")]) for a in rec["tests"]]
    if any(_run(good, fn, x) != _run(bad, fn, x) for x in inputs):
        return rec
    for _ in range(1000):
        x = _draw_input(rng, t.inputs)
        if _run(good, fn, x) != _run(bad, fn, x):
            return {**rec, "tests": rec["tests"] + [f"assert {fn}({x!r}) == {_run(good, fn, x)}"]}
    raise ValueError(f"no input separates the sloppy variant of {t.key}")
