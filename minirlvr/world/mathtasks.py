"""Verifiable math: word problems over small integers, 1-4 operations, with worked solutions.

A problem starts with a count ("Mia has 12 shells.") and applies `difficulty` operations to it (buy,
give away, double, share into equal piles). Every intermediate value stays a positive integer at
most MAX_VALUE, divisions are exact, so a tiny model's arithmetic is the only thing being tested.
The solution shows one line per operation (`12 + 5 = 17`) and ends with the GSM8K answer line `#### 17`.

Record: {"prompt", "answer" (str, as in GSM8K), "solution", "difficulty" (number of operations)}.

Two procedures (miniworld-3, W1). Real pretraining text answers the same kind of question in more than one
way: some solutions are worked, others state the answer outright. From miniworld-3 on, every math answer the
model learns from (documents, unaligned chats, alignment) is a worked CHAIN (`rec["solution"]`) with
probability CHAIN_SHARE and a one-line SHORTCUT (`#### 17`, the answer with no working) otherwise. A tiny
model cannot do 2-4 operations in its head, so the two paths succeed at different rates, and a policy that
shifts probability towards CHAIN gets more answers right: there are paths for RL's Gibbs tilt to reweight.
`procedure_of` reads which path a response took. CHAIN_SHARE is set by E1v3's go/no-go on the base, before any
arm ran: 0.5 gave a base with greedy pass@1 0.17 (< 0.25: too little worked practice), 0.67 one whose CHAIN
share at T = 1 was 0.74 (> 0.7), so attempt 3 uses 0.6 (results/E1v3/NOTES.md lists every attempt).
"""

from __future__ import annotations

import random
import re

NAMES = (("Mia", "she"), ("Tom", "he"), ("Ana", "she"), ("Ben", "he"), ("Lea", "she"), ("Sam", "he"),
         ("Ivy", "she"), ("Max", "he"), ("Zoe", "she"), ("Leo", "he"), ("Eva", "she"), ("Kai", "he"))
OBJECTS = ("apples", "shells", "marbles", "stickers", "coins", "cards", "pens", "beads", "stamps", "buttons",
           "books", "eggs")
MAX_VALUE = 150     # no value, intermediate or final, exceeds this
MAX_MUL_BASE = 40   # multiply only small values: the products stay within reach of a tiny model

# Each operation: sentence templates ({P}: capitalised pronoun, {n}: operand, {obj}: the objects).
ADD = ("{P} buys {n} more.", "{P} finds {n} more.", "A friend gives {p2} {n} more.", "{P} gets {n} more {obj}.")
SUB = ("{P} gives away {n}.", "{P} loses {n} of them.", "{P} uses {n}.", "{P} sells {n} {obj}.")
MUL = {2: ("Then {p} doubles them.", "{P} now has twice as many."),
       3: ("Then {p} triples them.", "{P} now has 3 times as many."),
       4: ("{P} now has 4 times as many.",)}
DIV = ("{P} splits them into {n} equal piles and keeps one pile.",
       "{P} shares them equally with {friends}, keeping one share.")


def _op(rng: random.Random, value: int) -> tuple[str, int, str]:
    """Pick an operation valid at `value`: returns (symbol, operand, template)."""
    choices = []
    if value < MAX_VALUE:
        choices.append("+")
    if value >= 2:
        choices.append("-")
    if value <= MAX_MUL_BASE:
        choices.append("*")
    if value >= 4 and any(value % d == 0 for d in (2, 3, 4, 5)):
        choices.append("/")
    sym = rng.choice(choices)
    if sym in "+-":
        n = rng.randint(1, min(30, MAX_VALUE - value) if sym == "+" else min(30, value - 1))
        templates = [t for t in (ADD if sym == "+" else SUB) if n > 1 or "{obj}" not in t]  # no "1 coins"
        return sym, n, rng.choice(templates)
    if sym == "*":
        k = rng.choice([k for k in (2, 3, 4) if value * k <= MAX_VALUE])
        return sym, k, rng.choice(MUL[k])
    k = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
    return sym, k, rng.choice(DIV)


def make_math(rng: random.Random, difficulty: int) -> dict:
    """One word problem with `difficulty` (1..4) operations."""
    if not 1 <= difficulty <= 4:
        raise ValueError(f"difficulty must be 1..4, got {difficulty}")
    name, pron = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = rng.randint(2, 10 + 10 * difficulty)
    sentences = [f"{name} has {value} {obj}."]
    lines = []
    for _ in range(difficulty):
        sym, n, tmpl = _op(rng, value)
        new = {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[sym]
        p2 = "him" if pron == "he" else "her"
        sentences.append(tmpl.format(P=pron.capitalize(), p=pron, p2=p2, n=n, obj=obj,
                                     friends="1 friend" if n == 2 else f"{n - 1} friends"))
        lines.append(f"{value} {sym} {n} = {new}")
        value = new
    sentences.append(f"How many {obj} does {name} have now?")
    return {"prompt": " ".join(sentences), "answer": str(value),
            "solution": "\n".join(lines + [f"#### {value}"]), "difficulty": difficulty}


def sample_math(rng: random.Random, difficulty: int | None = None) -> dict:
    """A problem at the given difficulty, or at a uniformly drawn one (1..4) when None."""
    return make_math(rng, difficulty if difficulty is not None else rng.randint(1, 4))


# ---------------------------------------------------------------------------- two procedures (v3, W1)

CHAIN_SHARE = 0.6  # share of worked answers in all math text (miniworld-3; W1 attempt 3: 0.5 and 0.67 failed go/no-go)
_CHAIN_LINE = re.compile(r"^\s*\d+ [-+*/] \d+ = \d+\s*$")


def shortcut_solution(rec: dict) -> str:
    """The SHORTCUT procedure: the final answer line alone, no working."""
    return f"#### {rec['answer']}"


def written_solution(rng: random.Random, rec: dict, version: int) -> str:
    """How a math answer is written in training text: before miniworld-3 always the worked CHAIN (and no
    random draw, so older worlds rebuild byte for byte); from miniworld-3 CHAIN or SHORTCUT, CHAIN_SHARE : rest."""
    if version < 3 or rng.random() < CHAIN_SHARE:
        return rec["solution"]
    return shortcut_solution(rec)


def procedure_of(response: str) -> str:
    """'chain' if the response opens with a worked line (`12 + 5 = 17`), 'shortcut' if it opens with the
    answer line (`#### 17`), else 'other'."""
    lines = [l for l in response.strip().splitlines() if l.strip()]
    if not lines:
        return "other"
    if _CHAIN_LINE.match(lines[0]):
        return "chain"
    if lines[0].lstrip().startswith("####"):
        return "shortcut"
    return "other"
