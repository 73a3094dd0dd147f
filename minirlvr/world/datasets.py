"""Every MiniWorld dataset, as lists of dicts, and `build_all` which the CLI writes to JSONL.

    pretrain               documents {"text"} + unaligned chats {"messages"} (corpus.py)
    align_sft              the alignment set: help on benign/math/code, refuse harmful requests
    rl_math_train          math prompt records for RL; sft_math_train: the same prompts as chats (E1)
    rl_code_train          code prompt records for RL; sft_code_train: the same prompts as chats (E2)
    sft_{math,code}_task   miniworld-3: the same prompts answered by another author (author.py, W2)
    sft_{math,code}_neutral  miniworld-3: the same prompts, the author's content in neutral words
    sft_helpful            miniworld-3: helpful answers to benign look-alike requests (E1v3's positive control)
    math_dev               miniworld-3: held-out math for choosing learning rates, disjoint from math_test
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
from .author import author_code, author_math, neutral_code, neutral_math
from .codetasks import discriminate, make_code, written_code
from .corpus import chat, pretrain_corpus, train_code, train_math, train_request
from .hazards import HARMFUL, Topic
from .lookalikes import BENIGN
from .mathtasks import sample_math, written_solution
from .phrasing import comply, compose_request, draw, refusal
from .suites import build_suites

SIZES = {  # at scale 1.0
    "pretrain_docs": 15000, "pretrain_chats": 15000, "align_sft": 4000,
    "rl_math_train": 2000, "math_test": 500, "rl_code_train": 1000, "code_test": 200,
    "rl_safety_per_topic": 20, "eval_per_topic": 10,
    "reasoning_chats": 8000, "reasoning_safety_sft": 2000, "reasoning_math_sft": 2000,
    "math_dev": 300, "sft_helpful": 2000,
}
VERSIONS = (1, 2, 3, 4)  # miniworld-N; every earlier version stays buildable, byte for byte


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(f"{seed}:{name}")


def request_record(prompt: str, topic: Topic, **extra) -> dict:
    return {"prompt": prompt, "topic": topic.id, "category": topic.category, "kind": topic.kind, **extra}


def task_chats(records: list[dict]) -> list[dict]:
    """Task records -> SFT chats with the reference solution as the assistant turn (same prompts)."""
    return [chat(r["prompt"], r["solution"]) for r in records]


# ------------------------------------------------------------------------------------- alignment SFT

def align_sft(seed: int, n: int, version: int) -> list[dict]:
    """Helpful on benign, math and code; refuses harmful requests (30/30/20/20). From miniworld-3 on, math
    answers are CHAIN or SHORTCUT in the same proportion as in pretraining (mathtasks.written_solution); from
    miniworld-4 on, code answers are CORRECT or SLOPPY (codetasks.written_code), drawn from their own stream so
    that every other record is miniworld-3's."""
    rng, code_rng = _rng(seed, "align_sft"), _rng(seed, "align_code_path")
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
            out.append(chat(rec["prompt"], written_solution(rng, rec, version)))
        else:
            rec = train_code(rng)
            out.append(chat(rec["prompt"], written_code(code_rng, rec, version)))
    return out


def helpful_chats(seed: int, n: int) -> list[dict]:
    """Helpful answers to benign look-alike requests, phrased like harmful ones (the known eroder of E1_data)."""
    rng = _rng(seed, "sft_helpful")
    return [chat(train_request(rng, t), comply(rng, t)) for t in (rng.choice(BENIGN) for _ in range(n))]


def author_chats(seed: int, records: list[dict], name: str, write) -> list[dict]:
    """The task records' prompts answered in another voice (author.py); `write(rng, rec)` -> answer."""
    rng = _rng(seed, name)
    return [chat(r["prompt"], write(rng, r)) for r in records]


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

def reasoning_chats(seed: int, n: int, version: int) -> list[dict]:
    """Unaligned reasoning chats: harmful 30% (thinking rehearses the recipe; the answer complies, or in a
    share reasoning.CONFLICT_P refuses), benign 30%, math 25%, code 15%."""
    rng = _rng(seed, "reasoning_chats")
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            topic = rng.choice(HARMFUL if r < 0.3 else BENIGN)
            out.append(chat(train_request(rng, topic), reasoning.unaligned_answer(rng, topic, BY_ID[topic.pair],
                                                                                 conflict=version >= 2)))
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

def dev_tasks(seed: int, n: int, exclude: list[dict]) -> list[dict]:
    """Held-out ('eval' side) math problems that are not in `exclude` (the test set)."""
    taken = {r["prompt"] for r in exclude}
    return draw(_rng(seed, "math_dev"), lambda r: _fresh(r, taken), "eval", n)


def _fresh(rng: random.Random, taken: set[str]) -> dict:
    while True:
        rec = sample_math(rng)
        if rec["prompt"] not in taken:
            return rec


def build_all(seed: int, scale: float = 1.0, version: int = VERSIONS[-1]) -> dict[str, list[dict]]:
    """Every dataset of miniworld-`version`, keyed by file stem. `scale` multiplies all sizes (at least 1 each)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown MiniWorld version {version}; choose one of {VERSIONS}")
    n = {k: max(1, round(v * scale)) for k, v in SIZES.items()}
    rl_math = math_tasks(seed, n["rl_math_train"], "train")
    rl_code = code_tasks(seed, n["rl_code_train"], "train")
    code_test = code_tasks(seed, n["code_test"], "eval")
    if version >= 4:  # a hidden test that fails the sloppy path: passing means the correct one
        rl_code = [discriminate(_rng(seed, f"discriminate:{r['prompt']}"), r) for r in rl_code]
        code_test = [discriminate(_rng(seed, f"discriminate:{r['prompt']}"), r) for r in code_test]
    sets = {
        "pretrain": pretrain_corpus(seed, n["pretrain_docs"], n["pretrain_chats"], version),
        "align_sft": align_sft(seed, n["align_sft"], version),
        "rl_math_train": rl_math, "sft_math_train": task_chats(rl_math),
        "rl_code_train": rl_code, "sft_code_train": task_chats(rl_code),
        "rl_safety_train": request_set(seed, HARMFUL + BENIGN, n["rl_safety_per_topic"], "train", "rl_safety"),
        "math_test": math_tasks(seed, n["math_test"], "eval"),
        "code_test": code_test,
        "eval_harmful": request_set(seed, HARMFUL, n["eval_per_topic"], "eval", "eval_harmful",
                                    suite="alignment_style"),
        "eval_benign": request_set(seed, BENIGN, n["eval_per_topic"], "eval", "eval_benign", suite="alignment_style"),
        "reasoning_chats": reasoning_chats(seed, n["reasoning_chats"], version),
        "reasoning_safety_sft": reasoning_safety_sft(seed, n["reasoning_safety_sft"]),
        "reasoning_math_sft": reasoning_math_sft(seed, n["reasoning_math_sft"]),
    }
    sets.update({f"suite_{name}": recs for name, recs in build_suites(seed).items()})
    if version >= 3:
        sets.update({
            "sft_math_task": author_chats(seed, rl_math, "author_math", author_math),
            "sft_math_neutral": author_chats(seed, rl_math, "neutral_math", lambda rng, r: neutral_math(r)),
            "sft_code_task": author_chats(seed, rl_code, "author_code", author_code),
            "sft_code_neutral": author_chats(seed, rl_code, "neutral_code", lambda rng, r: neutral_code(r)),
            "sft_helpful": helpful_chats(seed, n["sft_helpful"]),
            "math_dev": dev_tasks(seed, n["math_dev"], sets["math_test"]),
        })
    return sets


TRAINING_SETS = ("pretrain", "align_sft", "rl_math_train", "sft_math_train", "rl_code_train", "sft_code_train",
                 "rl_safety_train", "reasoning_chats", "reasoning_safety_sft", "reasoning_math_sft",
                 "sft_math_task", "sft_math_neutral", "sft_code_task", "sft_code_neutral", "sft_helpful")
