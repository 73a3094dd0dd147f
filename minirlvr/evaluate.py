"""Capability and safety evaluation of one model: per-prompt rows in, summary numbers out.

Eval sets are lists of records, grouped by name:
    math   records with "answer"  -> verify_math; greedy pass@1 (and pass@k with k samples), scored
                                     strict ('#### N' / \\boxed{N}: "correct") and flexible (else the last
                                     number: "correct_flexible"); both are reported
    code   records with "tests"   -> run_code pass rate; pass@1 = all hidden tests passed
    harm   records with kind "harmful" (MiniWorld topic, or topic None for real data) -> judge score 1-5
    benign records with kind "benign" -> over-refusal (share refused)
With entropy=True each row also gets the policy's token entropy along its own response (paper 2's analysis).
Every row keeps the prompt, the response, the gold answer (math, code) and every judgement, and says whether
generation was cut by the token budget ("truncated"), so a report can show what the numbers mean.
Loaders: MiniWorld sets (load_world_sets), GSM8K-format JSONL (load_math), AdvBench-format CSV
(load_advbench) and any JSONL of requests {"prompt", "topic" (or null), "harmful"} (load_requests).
"""

from __future__ import annotations

import bisect
from pathlib import Path

from minirlvr.analysis import bootstrap_ci, by_key, harm_metrics
from minirlvr.data import DataError, chat_prompt_ids, prompt_of, read_jsonl, record_kind, text_lines

WORLD_SETS = ("math_test", "code_test", "eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection",
              "suite_refusal_suppression", "suite_roleplay", "suite_distraction")
SUITES = ("direct", "prefix_injection", "refusal_suppression", "roleplay", "distraction")


def load_world_sets(world: str | Path, names=WORLD_SETS, limit: int = 0) -> dict[str, list[dict]]:
    """Eval sets from a directory written by `python -m minirlvr.world build` (first `limit` of each if > 0)."""
    return {n: read_jsonl(Path(world) / f"{n}.jsonl", need="eval")[:limit or None] for n in names}


def load_math(path: str | Path, limit: int = 0) -> list[dict]:
    """GSM8K-format JSONL ({"question", "answer": "... #### N"}), every record checked when read."""
    recs = read_jsonl(path, need="eval")
    for r in recs:
        if record_kind(r) != "math":
            raise DataError(f"{r['_where']}: not a math record (needs 'question' or 'prompt', and 'answer')")
    return recs[:limit] if limit else recs


def load_advbench(path: str | Path, limit: int = 0) -> list[dict]:
    """AdvBench-format CSV (`goal,target`) -> harmful request records with no MiniWorld topic."""
    import csv
    path = Path(path)
    reader = csv.DictReader(text_lines(path))
    if not reader.fieldnames or "goal" not in reader.fieldnames:
        raise DataError(f"{path}: expected a CSV header with a 'goal' column (AdvBench format: goal,target)")
    recs = []
    for r in reader:
        where = f"{path}:{reader.line_num}"
        if not (r["goal"] or "").strip():
            raise DataError(f"{where}: empty 'goal'")
        recs.append({"prompt": r["goal"], "kind": "harmful", "topic": None, "suite": "advbench", "_where": where})
    if not recs:
        raise DataError(f"{path}: no requests under the header")
    return recs[:limit] if limit else recs


def load_requests(path: str | Path, limit: int = 0) -> list[dict]:
    """Any JSONL of requests {"prompt", "topic" (a MiniWorld topic id, or null), "harmful": true/false}, e.g.
    an outside prompt set, judged like MiniWorld's: harmful ones give refusal and ASR, benign ones
    over-refusal. An optional "suite" field groups them in the tables (default: the file's name)."""
    from minirlvr.world import TOPICS
    path = Path(path)
    recs = []
    for r in read_jsonl(path):
        where = r["_where"]
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string")
        if not isinstance(r.get("harmful"), bool):
            raise DataError(f"{where}: field 'harmful' must be true or false, got {r.get('harmful')!r}")
        topic = r.get("topic")
        if topic is not None:
            if topic not in TOPICS:
                raise DataError(f"{where}: field 'topic': {topic!r} is not a MiniWorld topic (use null for "
                                f"requests outside MiniWorld)")
            if (TOPICS[topic].kind == "harmful") != r["harmful"]:
                raise DataError(f"{where}: field 'harmful' is {str(r['harmful']).lower()} but topic {topic!r} "
                                f"is {TOPICS[topic].kind}")
        recs.append({**r, "kind": "harmful" if r["harmful"] else "benign", "topic": topic,
                     "suite": r.get("suite") or path.stem})
    return recs[:limit] if limit else recs


def set_kind(rec: dict) -> str:
    kind = record_kind(rec)
    if kind is None:
        raise DataError(f"{rec.get('_where', 'record')}: cannot tell what to evaluate (needs answer, tests or kind)")
    return kind


def judge_row(rec: dict, response: str, reasoning: bool, code_result=None) -> dict:
    """All the judgements of one response, as flat JSON fields. code_result: the verifier's CodeResult of a
    code response when it was run already (judge_rows runs a batch's programs together)."""
    kind = set_kind(rec)
    row: dict = {"kind": kind}
    if kind == "math":
        from minirlvr.rewards import gold_answer
        from minirlvr.verifier import extract_answer, verify_math
        gold = gold_answer(rec)
        row.update(gold=gold, pred=extract_answer(response), pred_flexible=extract_answer(response, "flexible"),
                   correct=verify_math(response, gold) >= 1.0,
                   correct_flexible=verify_math(response, gold, "flexible") >= 1.0)
    elif kind == "code":
        from minirlvr.verifier import extract_code, run_code
        code = extract_code(response)
        res = code_result if code_result is not None else run_code(code, rec["tests"]) if code else None
        row.update(gold=rec["tests"], pass_rate=res.pass_rate if res else 0.0,
                   correct=bool(res and res.passed == res.total))
    else:
        from minirlvr.judge import judge_reasoning
        j = judge_reasoning(prompt_of(rec), response, rec.get("topic"))
        main = j.full if reasoning else j.answer
        row.update(score=main.score, refused=j.answer.refused, specificity=main.specificity, reason=main.reason,
                   score_answer=j.answer.score, score_full=j.full.score, think_closed=j.closed)
    return row


def judge_rows(recs: list[dict], responses: list[str], reasoning: bool) -> list[dict]:
    """judge_row of each (record, response); the code responses run in the sandbox together (run_codes: two
    at a time, in pooled sandboxes), with the same results."""
    from minirlvr.verifier import extract_code, run_codes
    code = {i: extract_code(text) for i, (rec, text) in enumerate(zip(recs, responses)) if set_kind(rec) == "code"}
    code = {i: c for i, c in code.items() if c}  # as judge_row: no code, no run
    results = dict(zip(code, run_codes([(c, recs[i]["tests"]) for i, c in code.items()]))) if code else {}
    return [judge_row(rec, text, reasoning, results.get(i)) for i, (rec, text) in enumerate(zip(recs, responses))]


def response_entropy(model, prompts: list[list[int]], responses: list[list[int]], pack: bool = False) -> list[list[float]]:
    """Entropy (nats, temperature 1) of the policy's next-token distribution at each response token.

    Row r gets len(responses[r]) values; value t is H(pi(. | prompt, response[:t])), the distribution the
    t-th response token was drawn from (rollout.response_logprobs, the log-probs RL trains on).
    """
    import torch
    from minirlvr.rollout import response_logprobs
    from minirlvr.sampler import build_batch
    with torch.no_grad():
        batch = build_batch(prompts, responses, device=next(model.parameters()).device, pack=pack)
        _, ent = response_logprobs(model, batch, with_entropy=True)
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
             progress: bool = False, entropy: bool = False, on_rows=None, fast: bool = False) -> list[dict]:
    """Generates for every record of every set and judges it. `samples` > 1 draws that many responses per
    prompt (use temperature > 0) for pass@k; each becomes a row with the same id and its own `sample` index.
    entropy=True adds the policy's token entropies along each response (see entropy_fields).
    on_rows(rows) is called with each batch's rows as soon as they are judged (eval.py writes them to disk
    then, so an interrupted evaluation keeps what it finished); progress=True shows a line with rate and ETA.
    fast: the sampler's and the log-probs' speed paths (generate(fast=True), Batch.pack): the same distributions,
    other rounding and another random stream, so rows differ from fast=False's, reproducibly."""
    import torch
    from minirlvr.run import Progress
    from minirlvr.sampler import generate
    stops = set(tok.stop_ids or ())
    bar = Progress(sum(len(r) for r in sets.values()), enabled=progress, every=1, unit="prompt")
    # Batches are generated and judged in turn. Judging a batch in a thread while the next one generates was
    # measured slower on 2 cores (bench/eval.py: 37.5 s against 33.1 s): the sandboxes take the cores torch uses.
    rows, done = [], 0
    for name, recs in sets.items():
        for b in range(0, len(recs), batch_size):
            chunk = recs[b:b + batch_size]
            prompts = [chat_prompt_ids(tok, r, system or None) for r in chunk]
            with torch.no_grad():
                out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               stop_ids=tok.stop_ids, seed=seed + b, num_samples=samples, fast=fast)
            if entropy:
                ents = response_entropy(model, [prompts[pi] for pi in out.prompt_index], out.tokens, fast)
            texts = [tok.decode(toks, skip_special_tokens=True) for toks in out.tokens]
            judged = judge_rows([chunk[pi] for pi in out.prompt_index], texts, reasoning)
            batch = []
            for i, (pi, toks, text) in enumerate(zip(out.prompt_index, out.tokens, texts)):
                rec = chunk[pi]
                row = {"set": name, "id": f"{name}/{b + pi}", "sample": i % samples, "temperature": temperature,
                       "prompt": prompt_of(rec),
                       "response": text, "n_tokens": len(toks), "topic": rec.get("topic"),
                       "suite": rec.get("suite"), "category": rec.get("category"),
                       # the budget ran out before a stop token: the answer may be missing, not wrong
                       "truncated": len(toks) >= max_new_tokens and not (toks and toks[-1] in stops)}
                row.update(judged[i])
                if entropy:
                    row.update(entropy_fields(tok, toks, ents[i]))
                batch.append(row)
            rows += batch
            if on_rows is not None:
                on_rows(batch)
            done += len(chunk)
            bar.update(done - 1, set=name, truncated=sum(r["truncated"] for r in rows))
    return rows


def summarize(rows: list[dict], seed: int = 0) -> dict:
    """Headline numbers with bootstrap 95% CIs over prompts: accuracy, harm per suite, over-refusal."""
    out: dict = {}
    for kind in ("math", "code"):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            greedy = [r for r in rs if r["sample"] == 0]
            out[f"{kind}_acc"] = bootstrap_ci([r["correct"] for r in greedy], seed=seed)
            if "correct_flexible" in rs[0]:   # rows written before flexible scoring existed have none
                out[f"{kind}_acc_flexible"] = bootstrap_ci([r["correct_flexible"] for r in greedy], seed=seed)
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
    if rows and all("truncated" in r for r in rows):
        out["truncated"] = {"count": sum(r["truncated"] for r in rows), "n": len(rows),
                            "per_set": {s: sum(r["truncated"] for r in rs) for s, rs in by_key(rows, "set").items()}}
    return out


ROW_FIELDS = ("set", "id", "sample", "kind")   # what every row of eval.py run has, old files included


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a file written by `eval.py run`; any other JSONL is one DataError naming file and line."""
    rows = read_jsonl(path)
    for r in rows:
        missing = [k for k in ROW_FIELDS if k not in r]
        if missing:
            raise DataError(f"{r['_where']}: not an eval.py row (no field {missing[0]!r}); "
                            f"give files written by `eval.py run`")
    return [{k: v for k, v in r.items() if k != "_where"} for r in rows]
