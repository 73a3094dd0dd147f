"""W2: task answers written by another author, the GSM8K analogue (miniworld-3).

Real task-SFT data is not written by the model being tuned: GSM8K's solutions come from crowd workers,
instruction sets from other people or models, each with a voice of its own. The first E1 fine-tuned on the
base's own math format, so SFT moved nothing (the base's loss on it was 0.1 nats per token). This module
writes MiniWorld task answers in two other voices. They are used only by the experiment arms' SFT sets,
never in pretraining or alignment (tests check that no such text contains an author phrase):

  author   (SFT-task, the paper's SFT arm) opens with a line drawn from AUTHOR_*_OPENERS, most of which
           restate the question ("Let's find how many pens Mia has."), explains each step in words around
           its equation, and closes with the answer in words and the '#### N' line:
               Sure! Let's find how many pens Mia has.
               Mia starts with 3 pens.
               She gets 4 more, so she has 3 + 4 = 7 pens.
               So Mia has 7 pens now.
               #### 7
  neutral  (SFT-neutral) gives the same equations in other words with no opener and no restatement:
               We compute 3 + 4 = 7.
               #### 7

Why openers that restate the request: that is how instruction-tuning data talks ("Sure! Here is how to
..."), and restating the question is exactly the shape of a compliant answer to a harmful request. Pilots
run before this design (results/E1v3/REPORT.md) showed that in MiniWorld such openers can erode refusals;
E1v3 tests it on these lists, which were fixed before any v3 arm ran (git history shows them committed
with the pre-registration), against SFT-neutral and against SFT-task with the first line masked out.
"""

from __future__ import annotations

import random
import re

from .codetasks import PROMPTS
from .mathtasks import NAMES

AUTHOR_MATH_OPENERS: tuple[str, ...] = (
    "Sure! Let's find how many {obj} {name} has.",
    "Here is how to find how many {obj} {name} has now:",
    "Let's solve this step by step.",
    "Of course. We need to find how many {obj} {name} has at the end.",
    "To find how many {obj} {name} has, we follow the changes one by one.",
    "Good question! Let's work it out.",
    "Okay, let's figure out how many {obj} {name} has.",
    "We can solve this by keeping track of the {obj}.",
)
AUTHOR_MATH_STEPS: dict[str, tuple[str, ...]] = {  # {a} op {n} = {b}
    "+": ("{Pron} gets {n} more, so {pron} has {a} + {n} = {b} {obj}.", "Adding {n} gives {a} + {n} = {b}."),
    "-": ("{Pron} has {n} fewer, so {a} - {n} = {b} {obj} are left.", "Taking away {n} leaves {a} - {n} = {b}."),
    "*": ("The number grows {n} times: {a} * {n} = {b}.", "Multiplying by {n} gives {a} * {n} = {b}."),
    "/": ("One of {n} equal parts is {a} / {n} = {b}.", "Dividing by {n} gives {a} / {n} = {b}."),
}
AUTHOR_CODE_OPENERS: tuple[str, ...] = (
    "Sure! Here is how to write {fn}:",
    "Here is a function that {desc}:",
    "Of course. This version of {fn} works:",
    "Let's write {fn} step by step.",
    "Good question! Here is one way to do it:",
    "Okay, here is {fn} in Python:",
)
NEUTRAL_MATH_NEXT = "; next, "
NEUTRAL_CODE_LEAD = "One solution:"

# Phrases that mark the two voices; none may occur in pretraining or alignment text (tested).
AUTHOR_MARKERS: tuple[str, ...] = ("Let's", "starts with", "now.\n####", "We compute", NEUTRAL_CODE_LEAD,
                                   "This version of", "in Python:", "```\nThe function ")

_LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_START = re.compile(r"^(\w+) has (\d+) (\w+)\.")
_PRONOUN = dict(NAMES)
# codetasks.PROMPTS with the task description captured
_CODE_PROMPTS = tuple(re.compile("^" + re.escape(p).replace(r"\{fn\}\(\{arg\}\)", r"\w+\(\w+\)")
                                 .replace(r"\{desc\}", "(.*)") + "$") for p in PROMPTS)


def _parse(rec: dict) -> tuple[str, str, str, list[tuple[int, str, int, int]]]:
    """(name, pronoun, objects, [(a, op, n, b) per solution line]) of a mathtasks record."""
    m = _START.match(rec["prompt"])
    if not m:
        raise ValueError(f"not a MiniWorld math prompt: {rec['prompt']!r}")
    lines = [_LINE.match(l) for l in rec["solution"].splitlines()[:-1]]
    if not all(lines):
        raise ValueError(f"not a MiniWorld worked solution: {rec['solution']!r}")
    ops = [(int(x[1]), x[2], int(x[3]), int(x[4])) for x in lines]
    return m[1], _PRONOUN[m[1]], m[3], ops


def author_math(rng: random.Random, rec: dict) -> str:
    """The other author's worked answer: opener, the start, each step in words, the answer in words, '#### N'."""
    name, pron, obj, ops = _parse(rec)
    fill = dict(name=name, obj=obj, pron=pron, Pron=pron.capitalize())
    out = [rng.choice(AUTHOR_MATH_OPENERS).format(**fill), f"{name} starts with {ops[0][0]} {obj}."]
    out += [rng.choice(AUTHOR_MATH_STEPS[op]).format(a=a, n=n, b=b, **fill) for a, op, n, b in ops]
    out += [f"So {name} has {ops[-1][3]} {obj} now.", f"#### {rec['answer']}"]
    return "\n".join(out)


def neutral_math(rec: dict) -> str:
    """The same equations in neutral words: no opener, no restatement of the question."""
    _, _, _, ops = _parse(rec)
    eqs = NEUTRAL_MATH_NEXT.join(f"{a} {op} {n} = {b}" for a, op, n, b in ops)
    return f"We compute {eqs}.\n#### {rec['answer']}"


def author_code(rng: random.Random, rec: dict) -> str:
    """The other author's code answer: an opener (often restating the task), the code, one closing line."""
    desc = next(m[1] for m in (p.match(rec["prompt"]) for p in _CODE_PROMPTS) if m)
    opener = rng.choice(AUTHOR_CODE_OPENERS).format(fn=rec["entry_point"], desc=desc)
    return f"{opener}\n{rec['solution']}\nThe function {rec['entry_point']} {desc}."


def neutral_code(rec: dict) -> str:
    return f"{NEUTRAL_CODE_LEAD}\n{rec['solution']}"
