"""Data files -> token batches. JSONL in, fixed-shape tensors out; bad records fail naming file and line.

Accepted records (one JSON object per line):
    {"text": ...}                                      a document (pretraining only)
    {"messages": [{"role": ..., "content": ...}, ...]}  a chat (pretraining renders it with the chat template)
    {"question": ..., "answer": "... #### 42"}          GSM8K format: a math prompt and its worked solution
    {"prompt": ..., "solution"|"response": ...}         MiniWorld tasks (math/code) and generic pairs
RL prompt records keep their other fields (answer, tests, topic, ...) for the reward functions.

Every record is checked when the file is read (`read_jsonl(path, need=...)`), so a record that cannot be
trained on or rewarded stops the run before step 0 with its file and line, not at the step that draws it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class DataError(ValueError):
    pass


# what the records will be used for (see check_record); "prompt": RL with a plug-in reward, which scores any prompt
NEEDS = ("pretrain", "sft", "rl", "prompt", "eval")


def utf8_text(path: Path, error: type[Exception] = DataError) -> str:
    """A file's text; one in another encoding is one `error` naming the file and line, not a UnicodeDecodeError
    from deep inside a loop."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")          # a byte-order mark (Excel, Notepad) is not content
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8") from None


def text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (utf8_text); a missing file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    # split on newlines only: str.splitlines would also cut at U+2028 and friends, which JSON strings may hold
    return [l[:-1] if l.endswith("\r") else l for l in utf8_text(path).split("\n")]


def read_jsonl(path: str | Path, need: str | None = None) -> list[dict]:
    """The records of a JSONL file, each with "_where" = "file:line". With `need` (one of NEEDS) every
    record is checked for that use (check_record) before anything is returned."""
    path = Path(path)
    out = []
    for i, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{i}: expected a JSON object")
        rec["_where"] = f"{path}:{i}"
        if need is not None:
            check_record(rec, need)
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no records")
    return out


def read_many(paths: list[str], need: str | None = None) -> list[dict]:
    return [r for p in paths for r in read_jsonl(p, need)]


def record_kind(rec: dict) -> str | None:
    """What a prompt record is scored as: "code" (hidden tests), "math" (an answer), "harmful" or "benign"
    (a request for the judge); None if it cannot be scored. The one dispatch rewards and evaluation share."""
    if "tests" in rec:
        return "code"
    if rec.get("answer") is not None:
        return "math"
    if rec.get("kind") in ("harmful", "benign"):
        return rec["kind"]
    return None


def check_record(rec: dict, need: str) -> None:
    """Raise DataError naming the file:line and the field if `rec` cannot be used for `need`."""
    if need not in NEEDS:
        raise ValueError(f"check_record: need must be one of {NEEDS}, got {need!r}")
    where = rec.get("_where", "record")
    for key in ("prompt", "question", "text", "solution", "response"):
        if key in rec and not isinstance(rec[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(rec[key]).__name__}")
    if need == "pretrain":
        if "text" not in rec:
            to_messages(rec)
        return
    if need == "sft":
        if not any(m["role"] == "assistant" and m["content"].strip() for m in to_messages(rec)):
            raise DataError(f"{where}: the chat has no non-empty assistant turn to train on")
        return
    prompt_of(rec)
    if need == "prompt":
        return
    kind = record_kind(rec)
    if kind is None:
        raise DataError(f"{where}: cannot tell how to score this record: it needs 'answer' (math), "
                        f"'tests' (code) or 'kind': 'harmful'/'benign' (a request)")
    if kind == "math":
        answer = rec["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(f"{where}: field 'answer' must be a string or a number, got {answer!r}")
        if isinstance(answer, str) and not (answer.rsplit("####", 1)[-1].strip()):
            raise DataError(f"{where}: field 'answer' has no final answer (empty, or nothing after '####')")
    elif kind == "code":
        from minirlvr.verifier import parse_tests
        try:
            parse_tests(rec["tests"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: field 'tests': {str(e).removeprefix('run_code: ')}") from None


def prompt_of(rec: dict) -> str:
    for key in ("prompt", "question"):
        if isinstance(rec.get(key), str):
            return rec[key]
    raise DataError(f"{rec.get('_where', '?')}: record has no string field 'prompt' or 'question'")


def to_messages(rec: dict) -> list[dict]:
    """A chat for SFT from any accepted record; the assistant turn is what the loss trains on."""
    where = rec.get("_where", "?")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} string objects")
        return msgs
    answer = next((rec[k] for k in ("solution", "response", "answer") if isinstance(rec.get(k), str)), None)
    if answer is None:
        raise DataError(f"{where}: record needs 'messages', or a prompt with 'solution'/'response'/'answer'")
    return [{"role": "user", "content": prompt_of(rec)}, {"role": "assistant", "content": answer}]


def chat_prompt_ids(tok, rec: dict, system: str | None = None) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt_of(rec)}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True)


# ------------------------------------------------------------------------------------- pretraining

def pretrain_stream(tok, records: list[dict]) -> list[int]:
    """All documents and chats (records checked for "pretrain") as one token stream, each followed by the
    end-of-text token."""
    texts = [rec["text"] if "text" in rec else
             tok.apply_chat_template(to_messages(rec), add_generation_prompt=False, tokenize=False) for rec in records]
    return [i for enc in tok.encode_batch(texts) for i in [*enc, tok.eos_token_id]]


def stream_batch(stream: torch.Tensor, step: int, batch_size: int, block: int, seed: int) -> torch.Tensor:
    """Rows [batch_size, block + 1] cut from the packed stream, a deterministic function of (seed, step) so that
    resuming at any step sees exactly the batches the uninterrupted run would have seen."""
    n_blocks = (len(stream) - 1) // block
    starts = row_batch(n_blocks, step, batch_size, seed) * block
    return torch.stack([stream[s:s + block + 1] for s in starts.tolist()])


# ------------------------------------------------------------------------------------- SFT

def sft_examples(tok, records: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(ids, loss_mask) per chat; the mask is 1 on assistant tokens (incl. the end-of-turn token).
    Chats longer than max_len are truncated from the right (the count is reported by the caller)."""
    return [(ids[:max_len], mask[:max_len]) for ids, mask in (tok.encode_chat(to_messages(r)) for r in records)]


def pack_examples(examples: list[tuple[list[int], list[int]]], block: int, seed: int,
                  pack: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence packing: whole examples, shuffled, are placed first-fit into rows of block + 1 tokens.
    With pack=False every example gets a row of its own (one example per row: "batch_size prompts per step").

    Returns ids [rows, block + 1] and loss mask [rows, block + 1] (pad = 0, masked). Examples share a row's
    causal context (as in pretraining on packed documents); each starts right after the previous one's
    end-of-turn token, so it reads like a multi-conversation transcript.
    """
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    rows: list[tuple[list[int], list[int]]] = []
    for i in order:
        ids, mask = examples[i]
        for r in rows if pack else ():
            if len(r[0]) + len(ids) <= block + 1:
                r[0].extend(ids)
                r[1].extend(mask)
                break
        else:
            rows.append((list(ids), list(mask)))
    padded = lambda k: torch.tensor([r[k] + [0] * (block + 1 - len(r[k])) for r in rows], dtype=torch.long)
    return padded(0).view(-1, block + 1), padded(1).view(-1, block + 1)


def row_batch(n_rows: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Row indices for `step`, epoch-shuffled, a pure function of (seed, step)."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    idx = perm[k * batch_size:(k + 1) * batch_size]
    if len(idx) < batch_size:  # fewer rows than a batch: wrap around
        idx = perm.repeat(batch_size // n_rows + 1)[:batch_size]
    return idx
