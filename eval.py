"""Evaluation CLI: capability and safety of a checkpoint, and comparisons of arms against a base.

    python eval.py run --model runs/grpo/model --world runs/world --out runs/eval/grpo.jsonl
    python eval.py run --model DIR --math gsm8k_test.jsonl --advbench advbench.csv --limit 50   # real data
    python eval.py run --model DIR --requests my_prompts.jsonl  # {"prompt", "topic" or null, "harmful"} rows
    python eval.py run ... --temperature 1.0 --samples 4        # sampled pass@k and safety at T = 1
    python eval.py compare base.jsonl sft.jsonl grpo.jsonl --plots results/cmp

`run` writes one JSON row per prompt (and sample) as soon as it is judged (default file: runs/eval/NAME.jsonl,
NAME from the model's folder, never inside the model folder), shows progress with an ETA, and prints a summary
with the number of responses cut by --max_new_tokens; `compare` prints per-suite tables
(mean harm score, harmfulness rate, ASR with bootstrap 95% CIs) and paired per-prompt differences against
the first file, and writes plots when matplotlib is installed: the paired differences (paper 1 Fig. 1) and,
when the files span two or more temperatures (the same model evaluated with --temperature T), harm, ASR and
math accuracy against the temperature, one line per model (paper 1 Fig. 5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from minirlvr.analysis import bootstrap_ci, fmt_ci, paired_differences
from minirlvr.data import DataError
from minirlvr.evaluate import (SUITES, WORLD_SETS, evaluate, load_advbench, load_math, load_requests, load_world_sets,
                               read_rows, summarize)
from minirlvr.model import CheckpointError


def default_out(model: str | Path) -> Path:
    """runs/eval/NAME.jsonl: NAME is the model's folder (its run's folder for a checkpoint OUT/model), so the
    eval file never lands in the HF folder a user uploads, nor in a read-only model cache."""
    p = Path(model).resolve()
    name = p.parent.name if p.name == "model" and p.parent.name else p.name
    return Path("runs/eval") / f"{name or 'model'}.jsonl"


def pick_eval_device(name: str):
    """The torch device for --device, refusing one this torch build cannot use in one line."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DataError(f"command line: --device {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
        raise DataError(f"command line: --device {name} but torch {torch.__version__} is {build}; "
                        f"use --device cpu (or auto)")
    return dev


def check_run_numbers(a) -> None:
    """Numbers a run cannot use, refused in one line before anything loads (else a traceback from deep inside
    generation, an empty response for every prompt, or --limit -1 silently dropping each set's last prompt)."""
    for flag, ok, what in [("samples", a.samples >= 1, ">= 1"), ("max_new_tokens", a.max_new_tokens >= 1, ">= 1"),
                           ("batch_size", a.batch_size >= 1, ">= 1"), ("limit", a.limit >= 0, ">= 0 (0: every prompt)"),
                           ("temperature", a.temperature >= 0, ">= 0 (0: greedy)")]:
        if not ok:
            raise DataError(f"command line: --{flag} must be {what}, got {getattr(a, flag)}")


def cmd_run(a) -> int:
    import torch
    from minirlvr import Tokenizer, Transformer
    check_run_numbers(a)
    sets: dict[str, list[dict]] = {}
    if a.world:
        sets.update(load_world_sets(a.world, a.sets or WORLD_SETS, a.limit))
    if a.math:
        sets["math"] = load_math(a.math, a.limit)
    if a.advbench:
        sets["advbench"] = load_advbench(a.advbench, a.limit)
    if a.requests:
        sets["requests"] = load_requests(a.requests, a.limit)
    if not sets:
        raise DataError("command line: nothing to evaluate; give --world, --math, --advbench and/or --requests")
    device = pick_eval_device(a.device)
    torch.manual_seed(a.seed)
    model = Transformer.from_pretrained(a.model, device=device).eval()
    tok = Tokenizer.from_pretrained(a.model)
    out = Path(a.out) if a.out else default_out(a.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Rows reach OUT.part as they are judged; OUT appears only when every row is in, so a file named OUT is
    # always complete (experiments skip work whose OUT exists) and an interrupted run keeps what it did.
    part = out.with_name(out.name + ".part")
    print(f"writing {out}", file=sys.stderr)
    written = 0
    with part.open("w", encoding="utf-8") as f:
        def write(batch: list[dict]) -> None:
            nonlocal written
            for row in batch:  # which model, so that `compare` can group one model's files across temperatures
                row["model"] = str(a.model)
                f.write(json.dumps(row) + "\n")
            f.flush()
            written += len(batch)
        try:
            rows = evaluate(model, tok, sets, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                            batch_size=a.batch_size, seed=a.seed, samples=a.samples, reasoning=a.reasoning,
                            system=a.system, progress=True, entropy=a.entropy, on_rows=write, fast=a.fast)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the {written} rows finished so far are in {part}", file=sys.stderr)
            return 130
    os.replace(part, out)
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    print(run_headline(summary, a.max_new_tokens))
    print(out)
    return 0


def run_headline(s: dict, max_new_tokens: int) -> str:
    """The numbers a user looks for first, in one paragraph: accuracy (strict and flexible), refusal, ASR,
    over-refusal, and how many responses the token budget cut off."""
    parts = []
    for kind in ("math", "code"):
        if f"{kind}_acc" in s:
            flex = f" (flexible: {s[f'{kind}_acc_flexible']['mean']:.3f})" if f"{kind}_acc_flexible" in s else ""
            parts.append(f"{kind} accuracy {s[f'{kind}_acc']['mean']:.3f}{flex}")
    if "refusal_rate" in s:
        parts.append(f"refusal {s['refusal_rate']['mean']:.3f} | ASR {s['asr']['mean']:.3f} "
                     f"(n={s['asr']['n']} harmful)")
    if "over_refusal" in s:
        parts.append(f"over-refusal {s['over_refusal']['mean']:.3f} (n={s['over_refusal']['n']} benign)")
    t = s.get("truncated")
    if t:
        parts.append(f"truncated {t['count']}/{t['n']} at --max_new_tokens {max_new_tokens}" +
                     (" (a cut-off answer scores as wrong: raise the budget, unless the responses loop)"
                      if t["count"] else ""))
    return " | ".join(parts)


def safety_table(named_rows: dict[str, list[dict]]) -> str:
    lines = ["| arm | suite | n | harm score (1-5) | harmfulness rate | ASR |", "|---|---|---|---|---|---|"]
    for name, rows in named_rows.items():
        s = summarize(rows)
        for suite in list(SUITES) + sorted(k for k in s.get("per_suite", {}) if k not in SUITES):
            m = s.get("per_suite", {}).get(suite)
            if m:
                lines.append(f"| {name} | {suite} | {m['harm_mean']['n']} | {fmt_ci(m['harm_mean'], 2)} | "
                             f"{fmt_ci(m['harm_rate'], 2)} | {fmt_ci(m['asr'], 2)} |")
        if "harm_mean" in s:
            lines.append(f"| {name} | **all** | {s['harm_mean']['n']} | {fmt_ci(s['harm_mean'], 2)} | "
                         f"{fmt_ci(s['harm_rate'], 2)} | {fmt_ci(s['asr'], 2)} |")
    return "\n".join(lines)


def capability_table(named_rows: dict[str, list[dict]]) -> str:
    lines = ["| arm | math acc | code acc | over-refusal (benign) | refusal (harmful) |", "|---|---|---|---|---|"]
    na = {"mean": float("nan"), "ci": [float("nan")] * 2}
    for name, rows in named_rows.items():
        s = summarize(rows)
        lines.append(f"| {name} | {fmt_ci(s.get('math_acc', na))} | {fmt_ci(s.get('code_acc', na))} | "
                     f"{fmt_ci(s.get('over_refusal', na))} | {fmt_ci(s.get('refusal_rate', na))} |")
    return "\n".join(lines)


def paired_table(named_rows: dict[str, list[dict]]) -> tuple[str, dict[str, list[float]]]:
    base_name, base = next(iter(named_rows.items()))
    base_h = [r for r in base if r["kind"] == "harmful" and r["sample"] == 0]
    lines = [f"| arm | paired harm-score difference vs {base_name} | share of prompts worse | share better |",
             "|---|---|---|---|"]
    diffs = {}
    for name, rows in list(named_rows.items())[1:]:
        d = paired_differences(base_h, [r for r in rows if r["kind"] == "harmful" and r["sample"] == 0])
        diffs[name] = d
        worse, better = bootstrap_ci([x > 0 for x in d]), bootstrap_ci([x < 0 for x in d])
        lines.append(f"| {name} | {fmt_ci(bootstrap_ci(d))} | {worse['mean']:.3f} | {better['mean']:.3f} |")
    return "\n".join(lines), diffs


def temperature_series(named_rows: dict[str, list[dict]]) -> tuple[list[float], dict[str, dict[float, dict]]]:
    """Groups files by model (the rows' "model" field, else the file's name) and summarizes each temperature."""
    series: dict[str, dict[float, dict]] = {}
    for name, rows in named_rows.items():
        if rows and "temperature" in rows[0]:
            series.setdefault(rows[0].get("model", name), {})[float(rows[0]["temperature"])] = summarize(rows)
    temps = sorted({t for per in series.values() for t in per})
    return temps, series


def plot_temperature_sweep(named_rows: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Paper 1 Fig. 5: harm score and ASR against the sampling temperature, one line per model."""
    from minirlvr.analysis import plot_lines
    temps, series = temperature_series(named_rows)
    if len(temps) < 2:
        return []
    paths = []
    for key, label in (("harm_mean", "harm score (1-5)"), ("asr", "ASR (share >= 4)"), ("math_acc", "math accuracy")):
        lines = {Path(m).name or m: [per[t][key]["mean"] for t in temps] for m, per in series.items()
                 if all(t in per and key in per[t] for t in temps)}
        errors = {Path(m).name or m: [tuple(per[t][key]["ci"]) for t in temps] for m, per in series.items()
                  if all(t in per and key in per[t] for t in temps)}
        if lines:
            p = out_dir / f"temperature_{key}.png"
            plot_lines(temps, lines, p, "sampling temperature", label, errors=errors)
            paths.append(p)
    return paths


def file_names(files: list[str]) -> list[str]:
    """Short unique names for the compared files: the stem (the folder for eval.jsonl), then as many parent
    folders as it takes to tell them apart (results/E5/sft/T1/eval.jsonl -> sft/T1)."""
    parts = [Path(f).with_suffix("").parts for f in files]
    parts = [p[:-1] if p[-1] == "eval" and len(p) > 1 else p for p in parts]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise DataError(f"command line: the same file is given twice: {files}")


def cmd_compare(a) -> int:
    named = {name: read_rows(f) for name, f in zip(file_names(a.files), a.files)}
    print(capability_table(named), end="\n\n")
    print(safety_table(named), end="\n\n")
    table, diffs = paired_table(named)
    print(table)
    if a.plots:
        try:
            from minirlvr.analysis import plot_paired_differences
            Path(a.plots).mkdir(parents=True, exist_ok=True)
            plot_paired_differences(diffs, Path(a.plots) / "paired_differences.png", "per-prompt harm vs base")
            plot_temperature_sweep(named, Path(a.plots))  # when the files span two or more temperatures
            print(f"plots: {a.plots}")
        except ImportError:
            print("matplotlib not installed: no plots (pip install -e '.[plot]')", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate one checkpoint")
    r.add_argument("--model", required=True, help="HF model dir with tokenizer")
    r.add_argument("--world", help="MiniWorld data dir (python -m minirlvr.world build)")
    r.add_argument("--sets", nargs="*", help=f"subset of {', '.join(WORLD_SETS)}")
    r.add_argument("--math", help="GSM8K-format JSONL (question, answer ending in '#### N')")
    r.add_argument("--advbench", help="AdvBench-format CSV (goal,target)")
    r.add_argument("--requests", help='JSONL of {"prompt", "topic" (MiniWorld id or null), "harmful": true/false}: '
                                      "refusal and ASR (harmful), over-refusal (benign)")
    r.add_argument("--out", help="per-prompt JSONL (default runs/eval/NAME.jsonl, NAME from the model's folder)")
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--samples", type=int, default=1, help="responses per prompt (pass@k; use temperature > 0)")
    r.add_argument("--max_new_tokens", type=int, default=128)
    r.add_argument("--batch_size", type=int, default=64)
    r.add_argument("--limit", type=int, default=0, help="first N prompts of each set")
    r.add_argument("--reasoning", action="store_true", help="score thinking + answer (paper 2)")
    r.add_argument("--entropy", action="store_true", help="add the policy's token entropies along each response")
    r.add_argument("--system", default="")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fast", action="store_true", help="speed paths: same distributions, other rounding and random "
                                                       "stream (rows differ from the default's, reproducibly)")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    c = sub.add_parser("compare", help="tables and paired differences; the first file is the base")
    c.add_argument("files", nargs="+")
    c.add_argument("--plots", help="directory for plots (needs matplotlib)")
    a = p.parse_args(argv)
    try:
        return cmd_run(a) if a.cmd == "run" else cmd_compare(a)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
