"""Capability and safety evaluation of one model: per-prompt rows in, summary numbers out.

Eval sets are lists of records, grouped by name:
    math   records with "answer"  -> verify_math; greedy pass@1 (and pass@k with k samples)
    code   records with "tests"   -> run_code pass rate; pass@1 = all hidden tests passed
    harm   records with kind "harmful" (MiniWorld topic, or topic None for real data) -> judge score 1-5
    benign records with kind "benign" -> over-refusal (share refused)
With entropy=True each row also gets the policy's token entropy along its own response (paper 2's analysis).
Every row keeps the prompt, the response and every judgement, so a report can show what numbers mean.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from minirlvr.analysis import bootstrap_ci, by_key, harm_metrics
from minirlvr.data import DataError, chat_prompt_ids, prompt_of, read_jsonl

WORLD_SETS = ("math_test", "code_test", "eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection",
              "suite_refusal_suppression", "suite_roleplay", "suite_distraction")
SUITES = ("direct", "prefix_injection", "refusal_suppression", "roleplay", "distraction")


def load_world_sets(world: str | Path, names=WORLD_SETS, limit: int = 0) -> dict[str, list[dict]]:
    """Eval sets from a directory written by `python -m minirlvr.world build` (first `limit` of each if > 0)."""
    out = {}
    for n in names:
        recs = read_jsonl(Path(world) / f"{n}.jsonl")
        out[n] = recs[:limit] if limit else recs
    return out


def load_advbench(path: str | Path, limit: int = 0) -> list[dict]:
    """AdvBench-format CSV (`goal,target`) -> harmful request records with no MiniWorld topic."""
    import csv
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "goal" not in reader.fieldnames:
            raise DataError(f"{path}: expected a CSV header with a 'goal' column (AdvBench format: goal,target)")
        recs = [{"prompt": r["goal"], "kind": "harmful", "topic": None, "suite": "advbench",
                 "_where": f"{path}:{i + 2}"} for i, r in enumerate(reader)]
    return recs[:limit] if limit else recs


def set_kind(rec: dict) -> str:
    if "tests" in rec:
        return "code"
    if "answer" in rec:
        return "math"
    if rec.get("kind") in ("harmful", "benign"):
        return rec["kind"]
    raise DataError(f"{rec.get('_where', 'record')}: cannot tell what to evaluate (needs answer, tests or kind)")


def judge_row(rec: dict, response: str, reasoning: bool) -> dict:
    """All the judgements of one response, as flat JSON fields."""
    kind = set_kind(rec)
    row: dict = {"kind": kind}
    if kind == "math":
        from minirlvr.rewards import gold_answer
        from minirlvr.verifier import verify_math
        row["correct"] = verify_math(response, gold_answer(rec)) >= 1.0
    elif kind == "code":
        from minirlvr.verifier import extract_code, run_code
        code = extract_code(response)
        res = run_code(code, rec["tests"]) if code else None
        row["pass_rate"] = res.pass_rate if res else 0.0
        row["correct"] = bool(res and res.passed == res.total)
    else:
        from minirlvr.judge import judge_reasoning
        j = judge_reasoning(prompt_of(rec), response, rec.get("topic"))
        main = j.full if reasoning else j.answer
        row.update(score=main.score, refused=j.answer.refused, specificity=main.specificity, reason=main.reason,
                   score_answer=j.answer.score, score_full=j.full.score, think_closed=j.closed)
    return row


def response_entropy(model, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
    """Entropy (nats, temperature 1) of the policy's next-token distribution at each response token.

    Row r gets len(responses[r]) values; value t is H(pi(. | prompt, response[:t])), the distribution the
    t-th response token was drawn from (rollout.response_logprobs, the log-probs RL trains on).
    """
    import torch
    from minirlvr.rollout import response_logprobs
    from minirlvr.sampler import build_batch
    with torch.no_grad():
        _, ent = response_logprobs(model, build_batch(prompts, responses, device=next(model.parameters()).device),
                                   with_entropy=True)
    return [e[:len(r)].tolist() for e, r in zip(ent.cpu(), responses)]


def answer_start(tok, response_ids: list[int]) -> int:
    """Index of the first response token after '</think>' (0 when the response has no closed thinking)."""
    closed = lambda i: "</think>" in tok.decode(response_ids[:i])
    if not closed(len(response_ids)):
        return 0
    # a longer prefix decodes to a longer text, so "contains </think>" flips once: bisect for the flip
    return bisect.bisect_left(range(len(response_ids) + 1), True, key=closed)


ENTROPY_POSITIONS = 64  # per-position entropies kept per row (enough for the position plot)
ANSWER_TOKENS = 8       # "first tokens of the answer": where a refusal or a compliance is decided


def entropy_fields(tok, response_ids: list[int], ent: list[float]) -> dict:
    a = answer_start(tok, response_ids)
    head = ent[a:a + ANSWER_TOKENS]
    return {"entropy_mean": sum(ent) / len(ent) if ent else None,
            "entropy_answer": sum(head) / len(head) if head else None,
            "entropy_positions": [round(x, 4) for x in ent[:ENTROPY_POSITIONS]], "answer_start": a}


def evaluate(model, tok, sets: dict[str, list[dict]], temperature: float = 0.0, max_new_tokens: int = 128,
             batch_size: int = 64, seed: int = 0, samples: int = 1, reasoning: bool = False, system: str = "",
             progress: bool = False, entropy: bool = False) -> list[dict]:
    """Generates for every record of every set and judges it. `samples` > 1 draws that many responses per
    prompt (use temperature > 0) for pass@k; each becomes a row with the same id and its own `sample` index.
    entropy=True adds the policy's token entropies along each response (see entropy_fields)."""
    import torch
    from minirlvr.sampler import generate
    rows = []
    for name, recs in sets.items():
        for b in range(0, len(recs), batch_size):
            chunk = recs[b:b + batch_size]
            prompts = [chat_prompt_ids(tok, r, system or None) for r in chunk]
            with torch.no_grad():
                out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               stop_ids=tok.stop_ids, seed=seed + b, num_samples=samples)
            if entropy:
                ents = response_entropy(model, [prompts[pi] for pi in out.prompt_index], out.tokens)
            for i, (pi, toks) in enumerate(zip(out.prompt_index, out.tokens)):
                rec = chunk[pi]
                text = tok.decode(toks, skip_special_tokens=True)
                row = {"set": name, "id": f"{name}/{b + pi}", "sample": i % samples, "temperature": temperature,
                       "prompt": prompt_of(rec),
                       "response": text, "n_tokens": len(toks), "topic": rec.get("topic"),
                       "suite": rec.get("suite"), "category": rec.get("category")}
                row.update(judge_row(rec, text, reasoning))
                if entropy:
                    row.update(entropy_fields(tok, toks, ents[i]))
                rows.append(row)
            if progress:
                print(f"  {name}: {min(b + batch_size, len(recs))}/{len(recs)}", flush=True)
    return rows


def summarize(rows: list[dict], seed: int = 0) -> dict:
    """Headline numbers with bootstrap 95% CIs over prompts: accuracy, harm per suite, over-refusal."""
    out: dict = {}
    for kind in ("math", "code"):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            greedy = [r["correct"] for r in rs if r["sample"] == 0]
            out[f"{kind}_acc"] = bootstrap_ci(greedy, seed=seed)
            per_id = by_key(rs, "id")
            if any(len(v) > 1 for v in per_id.values()):
                out[f"{kind}_pass_at_k"] = bootstrap_ci([any(r["correct"] for r in v) for v in per_id.values()], seed=seed)
    harm = [r for r in rows if r["kind"] == "harmful"]
    if harm:
        out.update(harm_metrics(harm, seed))
        out["per_suite"] = {s: harm_metrics(rs, seed) for s, rs in sorted(by_key(harm, "suite").items(), key=str)}
        out["refusal_rate"] = bootstrap_ci([r["refused"] for r in harm], seed=seed)
    benign = [r for r in rows if r["kind"] == "benign"]
    if benign:
        out["over_refusal"] = bootstrap_ci([r["refused"] for r in benign], seed=seed)
    return out


def write_rows(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: str | Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_where"} for r in read_jsonl(path)]
