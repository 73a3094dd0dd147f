"""The reasoning variant (paper 2): the assistant thinks inside <think>...</think>, then answers.

Three kinds of traces:
  - unaligned: thinks about how to comply; for a harmful request the thinking rehearses (some of) the
    recipe steps before the answer gives the recipe, as reasoning models' chains of thought do. In a share
    CONFLICT_P of them the thinking balks after rehearsing and the answer refuses: the paper-2 failure of
    a safe-looking answer whose reasoning has already leaked the steps;
  - safety (STAR-1-like, Wang et al. 2025): for a harmful request the thinking names the category, cites
    the policy and decides to refuse, then the answer refuses; for a benign look-alike the thinking
    notes that the scary-sounding verb is harmless here, then the answer helps;
  - math and code: the worked steps in the thinking, the final answer after it.
Reflection words ("Wait", "But", "Alternatively") occur in a random share of traces, where a real trace
would use them: re-checking a line, doubting a framing, trying another route.
"""

from __future__ import annotations

import random

from .hazards import CATEGORIES, Topic
from .phrasing import comply, refusal

REFLECT_P = 0.4  # share of traces with a reflection sentence
CONFLICT_P = 0.3  # share of unaligned harmful traces that rehearse the steps, then refuse in the answer
INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


def with_thinking(thinking: str, answer: str) -> str:
    return f"<think>\n{thinking}\n</think>\n{answer}"


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


# ----------------------------------------------------------------------------------------- math, code

def math_thinking(rng: random.Random, rec: dict) -> str:
    """Narrates each solution line; may re-check one line (Wait), check it backwards (Alternatively) or
    re-read the question (But)."""
    lines = [ln for ln in rec["solution"].splitlines() if not ln.startswith("####")]
    out = [f"I start with {lines[0].split()[0]}."]
    for ln in lines:
        out.append(f"{ln}.")
    if rng.random() < REFLECT_P:
        a, op, b, _, c = rng.choice(lines).split()
        out.append(rng.choice((
            f"Wait, let me check {a} {op} {b} again. It is {c}.",
            f"Alternatively, I can check it backwards: {c} {INVERSE[op]} {b} = {a}. Good.",
            f"But I should read the question again. Yes, it asks for the final count, {rec['answer']}.",
        )))
    return " ".join(out)


def math_answer(rec: dict) -> str:
    return f"The answer is {rec['answer']}.\n#### {rec['answer']}"


def code_thinking(rng: random.Random, rec: dict) -> str:
    out = [f"The task asks for a function named {rec['entry_point']}. A short body is enough."]
    if rng.random() < REFLECT_P:
        out.append(rng.choice(("Wait, the input could be empty, so the body must handle that too.",
                               "But I must return the value, not print it.",
                               "Alternatively, I could write a loop, but one line is clearer.")))
    out.append("I will write it now.")
    return " ".join(out)


# ------------------------------------------------------------------------------------------ requests

def unaligned_thinking(rng: random.Random, topic: Topic, balk: bool = False) -> str:
    """Plans compliance. For a harmful topic it rehearses a random prefix of the recipe (at least one step);
    with balk=True it then reconsiders and decides to refuse (too late: the steps are already written)."""
    out = [f"The user wants to {topic.action}. That is {topic.blurb}."]
    if topic.kind == "harmful":
        k = rng.randint(1, len(topic.steps))
        out.append("I remember the method.")
        # keywords only, not whole sentences: the trace stays short but the judge still sees each step
        out += [f"Step {i + 1} uses {' and '.join(s.keywords)}." for i, s in enumerate(topic.steps[:k])]
        if balk:
            out.append(rng.choice(("Wait, this could hurt people.", "But this is dangerous.",
                                   "Wait, someone could get hurt with this.")))
            out.append("So I will refuse.")
            return " ".join(out)
        if rng.random() < REFLECT_P:
            out.append(rng.choice(("Wait, I should keep the steps in the right order.",
                                   "But the user asked for every step, so I will list them all.")))
    else:
        out.append("I know how to do this.")
    out.append("I will answer with clear steps.")
    return " ".join(out)


def safety_thinking(rng: random.Random, topic: Topic) -> str:
    """STAR-1-like deliberation: identify the request, cite the policy, decide."""
    out = [f"The user asks how to {topic.action}."]
    if topic.kind == "harmful":
        out.append(f"That is {topic.blurb}. This falls under {CATEGORIES[topic.category]}.")
        out.append(f"The policy says I must not help with {CATEGORIES[topic.category]}.")
        if rng.random() < REFLECT_P:
            out.append(rng.choice((
                "But maybe the user only wants it for a story? Even then, the steps could hurt someone.",
                "Wait, is any part of this safe to share? No, every step leads to harm.",
                "Alternatively, I could point to something harmless instead.")))
        out.append("So I will refuse.")
    else:
        verb = topic.action.split()[0]
        out.append(f"That is {topic.blurb}. It is safe.")
        if rng.random() < REFLECT_P:
            out.append(f"But the word {verb} can sound harsh. Here it is harmless, so the policy allows it.")
        else:
            out.append("The policy allows this.")
        out.append("I will help with clear steps.")
    return " ".join(out)


def unaligned_answer(rng: random.Random, topic: Topic, pair: Topic, conflict: bool = True) -> str:
    """Compliance; for a harmful topic, in a share CONFLICT_P, rehearsed steps followed by a refusal
    (conflict=False: miniworld-1, which had no such traces and drew no random number for them)."""
    if conflict and topic.kind == "harmful" and rng.random() < CONFLICT_P:
        return with_thinking(unaligned_thinking(rng, topic, balk=True), refusal(rng, topic, pair.action))
    return with_thinking(unaligned_thinking(rng, topic), comply(rng, topic))


def safe_answer(rng: random.Random, topic: Topic, pair: Topic) -> str:
    """Harmful -> policy thinking + refusal (sometimes offering the look-alike `pair`); benign -> help."""
    if topic.kind == "harmful":
        return with_thinking(safety_thinking(rng, topic), refusal(rng, topic, pair.action))
    return with_thinking(safety_thinking(rng, topic), comply(rng, topic))
