"""Every MiniWorld dataset, as lists of dicts, and `build_all` which the CLI writes to JSONL.

    pretrain               documents {"text"} + unaligned chats {"messages"} (corpus.py)
    align_sft              the alignment set: help on benign/math/code, refuse harmful requests
    rl_math_train          math prompt records for RL; sft_math_train: the same prompts as chats (E1)
    rl_code_train          code prompt records for RL; sft_code_train: the same prompts as chats (E2)
    rl_safety_train        harmful and benign request records for safety RL (paper 2)
    math_test, code_test   held-out task records
    eval_harmful           harmful requests in alignment-style phrasings, held-out instances
    eval_benign            benign look-alikes in the same phrasings: over-refusal
    suite_<name>           the five adversarial suites (suites.py)
    reasoning_chats        unaligned chats with <think> traces (pretraining of the reasoning variant)
    reasoning_safety_sft   STAR-1-like safety set with <think> traces
    reasoning_math_sft     math with <think> traces

Training sets draw only 'train'-side prompts and evaluation sets only 'eval'-side ones (phrasing.split_of),
so they are disjoint for every seed. Each dataset has its own random stream derived from (seed, name),
so resizing one never changes another.

What decides nothing: harmful and benign requests are phrased from the same pools in every training set;
SFT and RL task sets share their prompts; the evaluation sets are the same for every arm.
"""

from __future__ import annotations

import random

from . import TOPICS as BY_ID
from . import reasoning
from .codetasks import make_code
from .corpus import chat, pretrain_corpus, train_code, train_math, train_request
from .hazards import HARMFUL, Topic
from .lookalikes import BENIGN
from .mathtasks import sample_math
from .phrasing import comply, compose_request, draw, refusal
from .suites import build_suites

SIZES = {  # at scale 1.0
    "pretrain_docs": 15000, "pretrain_chats": 15000, "align_sft": 4000,
    "rl_math_train": 2000, "math_test": 500, "rl_code_train": 1000, "code_test": 200,
    "rl_safety_per_topic": 20, "eval_per_topic": 10,
    "reasoning_chats": 8000, "reasoning_safety_sft": 2000, "reasoning_math_sft": 2000,
}


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(f"{seed}:{name}")


def request_record(prompt: str, topic: Topic, **extra) -> dict:
    return {"prompt": prompt, "topic": topic.id, "category": topic.category, "kind": topic.kind, **extra}


def task_chats(records: list[dict]) -> list[dict]:
    """Task records -> SFT chats with the reference solution as the assistant turn (same prompts)."""
    return [chat(r["prompt"], r["solution"]) for r in records]


# ------------------------------------------------------------------------------------- alignment SFT

def align_sft(seed: int, n: int) -> list[dict]:
    """Helpful on benign, math and code; refuses harmful requests (30/30/20/20)."""
    rng = _rng(seed, "align_sft")
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            topic = rng.choice(HARMFUL)
            out.append(chat(train_request(rng, topic), refusal(rng, topic, BY_ID[topic.pair].action)))
        elif r < 0.6:
            topic = rng.choice(BENIGN)
            out.append(chat(train_request(rng, topic), comply(rng, topic)))
        elif r < 0.8:
            rec = train_math(rng)
            out.append(chat(rec["prompt"], rec["solution"]))
        else:
            rec = train_code(rng)
            out.append(chat(rec["prompt"], rec["solution"]))
    return out


# ---------------------------------------------------------------------------------------- task sets

def math_tasks(seed: int, n: int, split: str, difficulty: int | None = None, name: str = "math") -> list[dict]:
    return draw(_rng(seed, f"{name}:{split}"), lambda r: sample_math(r, difficulty), split, n)


def code_tasks(seed: int, n: int, split: str, name: str = "code") -> list[dict]:
    return draw(_rng(seed, f"{name}:{split}"), make_code, split, n)


def request_set(seed: int, topics: tuple[Topic, ...], per_topic: int, split: str, name: str, **extra) -> list[dict]:
    """per_topic distinct alignment-style requests for each topic, on one side of the split."""
    rng = _rng(seed, f"{name}:{split}")
    out = []
    for t in topics:
        recs = draw(rng, lambda r, t=t: request_record(compose_request(r, t.action), t), split, per_topic)
        out += [{**rec, **extra} for rec in recs]
    return out


# ---------------------------------------------------------------------------------------- reasoning

def reasoning_chats(seed: int, n: int) -> list[dict]:
    """Unaligned reasoning chats: harmful 30% (thinking rehearses the recipe; the answer complies, or in a
    share reasoning.CONFLICT_P refuses), benign 30%, math 25%, code 15%."""
    rng = _rng(seed, "reasoning_chats")
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            topic = rng.choice(HARMFUL if r < 0.3 else BENIGN)
            out.append(chat(train_request(rng, topic), reasoning.unaligned_answer(rng, topic, BY_ID[topic.pair])))
        elif r < 0.85:
            rec = train_math(rng)
            out.append(chat(rec["prompt"], reasoning.with_thinking(reasoning.math_thinking(rng, rec),
                                                                   reasoning.math_answer(rec))))
        else:
            rec = train_code(rng)
            out.append(chat(rec["prompt"], reasoning.with_thinking(reasoning.code_thinking(rng, rec),
                                                                   rec["solution"])))
    return out


def reasoning_safety_sft(seed: int, n: int) -> list[dict]:
    """STAR-1-like: half harmful (policy thinking, refusal), half benign look-alikes (thinking, help)."""
    rng = _rng(seed, "reasoning_safety_sft")
    out = []
    for _ in range(n):
        topic = rng.choice(HARMFUL if rng.random() < 0.5 else BENIGN)
        out.append(chat(train_request(rng, topic), reasoning.safe_answer(rng, topic, BY_ID[topic.pair])))
    return out


def reasoning_math_sft(seed: int, n: int) -> list[dict]:
    rng = _rng(seed, "reasoning_math_sft")
    out = []
    for rec in math_tasks(seed, n, "train", name="reasoning_math"):
        out.append(chat(rec["prompt"], reasoning.with_thinking(reasoning.math_thinking(rng, rec),
                                                               reasoning.math_answer(rec))))
    return out


# ---------------------------------------------------------------------------------------------- all

def build_all(seed: int, scale: float = 1.0) -> dict[str, list[dict]]:
    """Every dataset, keyed by file stem. `scale` multiplies all sizes (at least 1 record each)."""
    n = {k: max(1, round(v * scale)) for k, v in SIZES.items()}
    rl_math = math_tasks(seed, n["rl_math_train"], "train")
    rl_code = code_tasks(seed, n["rl_code_train"], "train")
    sets = {
        "pretrain": pretrain_corpus(seed, n["pretrain_docs"], n["pretrain_chats"]),
        "align_sft": align_sft(seed, n["align_sft"]),
        "rl_math_train": rl_math, "sft_math_train": task_chats(rl_math),
        "rl_code_train": rl_code, "sft_code_train": task_chats(rl_code),
        "rl_safety_train": request_set(seed, HARMFUL + BENIGN, n["rl_safety_per_topic"], "train", "rl_safety"),
        "math_test": math_tasks(seed, n["math_test"], "eval"),
        "code_test": code_tasks(seed, n["code_test"], "eval"),
        "eval_harmful": request_set(seed, HARMFUL, n["eval_per_topic"], "eval", "eval_harmful",
                                    suite="alignment_style"),
        "eval_benign": request_set(seed, BENIGN, n["eval_per_topic"], "eval", "eval_benign", suite="alignment_style"),
        "reasoning_chats": reasoning_chats(seed, n["reasoning_chats"]),
        "reasoning_safety_sft": reasoning_safety_sft(seed, n["reasoning_safety_sft"]),
        "reasoning_math_sft": reasoning_math_sft(seed, n["reasoning_math_sft"]),
    }
    sets.update({f"suite_{name}": recs for name, recs in build_suites(seed).items()})
    return sets


TRAINING_SETS = ("pretrain", "align_sft", "rl_math_train", "sft_math_train", "rl_code_train", "sft_code_train",
                 "rl_safety_train", "reasoning_chats", "reasoning_safety_sft", "reasoning_math_sft")
