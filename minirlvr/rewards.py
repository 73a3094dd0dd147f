"""Verifiable rewards: what a response to a prompt record is worth.

The task reward comes from the record itself (data.record_kind), never from how the model was trained:
    "math"     record has "answer": verify_math (1 if the final answer equals it), in the answer mode the
               RL config's answer_mode put on the record as "_answer_mode" (strict '#### N' / \\boxed{N} if
               absent; "flexible" also takes the last number, as real instruct models answer)
    "code"     record has "tests": share of hidden tests passed in the sandbox
    "harmful"  a request (safety RL, paper 2): (5 - judge score) / 4 on thinking+answer
    "benign"   1 unless the answer refuses (so refusing everything is not a free win)
`--reward package.module:function` plugs in any `(record: dict, response: str) -> float` instead (called from
worker threads: keep it free of shared state).
Optional shaping, each with its own weight in the RL config: a format reward (a final '#### N' line for math,
a fenced block for code, a closed <think>...</think> for reasoning models).
"""

from __future__ import annotations

import importlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from minirlvr.data import record_kind

RewardFn = Callable[[dict, str], float]


@dataclass
class Reward:
    total: float
    task: float      # the verifiable part (accuracy for math, pass rate for code, safety for requests)
    format: float
    correct: bool


def gold_answer(rec: dict):
    """A math record's final answer; GSM8K records keep the whole worked solution, ending in '#### N'."""
    answer = rec["answer"]
    if isinstance(answer, str) and "####" in answer:
        answer = answer.rsplit("####", 1)[1].strip()
    return answer


def task_reward(rec: dict, response: str) -> float:
    kind = record_kind(rec)
    if kind == "math":
        from minirlvr.verifier import verify_math
        return verify_math(response, gold_answer(rec), rec.get("_answer_mode", "strict"))
    if kind == "code":
        from minirlvr.verifier import extract_code, run_code
        code = extract_code(response)
        return run_code(code, rec["tests"]).pass_rate if code else 0.0
    if kind in ("harmful", "benign"):
        from minirlvr.judge import judge_reasoning
        j = judge_reasoning(rec.get("prompt", ""), response, rec.get("topic"))
        if kind == "harmful":
            return (5 - j.full.score) / 4
        return 0.0 if j.answer.refused else 1.0
    raise ValueError(f"{rec.get('_where', 'record')}: cannot tell how to reward it (needs 'answer', 'tests' or 'kind')")


def load_reward(spec: str) -> RewardFn:
    """'' -> task_reward; 'package.module:function' -> that function. ValueError names what is wrong."""
    if not spec:
        return task_reward
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name) if module and name else None
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r}: cannot load it ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: expected 'package.module:function' naming a function")
    return fn


_MATH_FINAL = re.compile(r"####\s*-?[\d,]+(\.\d+)?\s*$")
_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)


def format_reward(rec: dict, response: str) -> float:
    ok = True
    if "<think>" in response or rec.get("reasoning"):
        ok &= bool(_THINK.match(response))
    if record_kind(rec) == "math":
        ok &= bool(_MATH_FINAL.search(response.strip()))
    elif record_kind(rec) == "code":
        ok &= "```" in response
    return float(ok)


def score(rec: dict, response: str, format_weight: float = 0.0, reward: RewardFn = task_reward) -> Reward:
    t = float(reward(rec, response))
    f = format_reward(rec, response) if format_weight else 0.0
    return Reward(total=t + format_weight * f, task=t, format=f, correct=t >= 1.0)


def score_all(records: list[dict], responses: list[str], format_weight: float = 0.0,
              reward: RewardFn = task_reward, workers: int = 8) -> list[Reward]:
    """score() of each (record, response), in order, `workers` at a time: a code reward waits on its own
    sandbox process, so the sandboxes of a batch run side by side instead of one after another."""
    if workers <= 1:
        return [score(r, t, format_weight, reward) for r, t in zip(records, responses)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda rt: score(*rt, format_weight, reward), zip(records, responses)))
