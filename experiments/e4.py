"""E4, model size: E1's SFT and GRPO arms from aligned bases of three sizes.

    python experiments/e4.py --seeds 0 --limit 60 --out results/E4

The shipped base (hidden 192, 4 layers, 2.0M parameters) is the largest size; its numbers are E1's seed-0 runs
(results/E1), restricted to the same first `limit` prompts of each set. Two smaller bases are built by the
project's own commands with the base's recipe (experiments/configs/pretrain.toml and align.toml: same data,
tokenizer, steps, batch, learning rates), changing only width, depth and heads (head size 32 throughout, MLP
width 8/3 of the hidden size as in the shipped base):

    python train.py pretrain --config experiments/configs/pretrain.toml --tokenizer assets/miniworld-base \
        --hidden_size H --intermediate_size I --num_hidden_layers L --num_attention_heads A --num_key_value_heads K \
        --out runs/E4/<size>/pretrain
    python train.py sft --config experiments/configs/align.toml --init runs/E4/<size>/pretrain/model \
        --out runs/E4/<size>/align

(`--tokenizer assets/miniworld-base` reuses the BPE vocabulary the shipped base's pretraining trained on the same
data, so the sizes differ in nothing else.) From each aligned base, e1.py's `sft` and `grpo` arms are trained
(only `--init` changes) and every model is evaluated greedily on E1's sets. Each size is one chain of commands
(pretrain -> align -> arms -> evals); chains run `--jobs` at a time, single-threaded. Finished steps are reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (EVAL_SETS, PY, ROOT, eval_cmd, finished, fmt_ci, load, paired_vs_base, sh,  # noqa: E402
                    summarize, train_metrics, world, write_json)
from e1 import arms as e1_arms  # noqa: E402

# name -> (hidden, intermediate, layers, heads, kv heads); None = the shipped base, whose runs are E1's
SIZES = {"h96_l2": (96, 256, 2, 3, 1), "h128_l3": (128, 352, 3, 4, 2), "h192_l4": None}
ARMS = ("sft", "grpo")
METRICS = ("math_acc", "harm_mean", "harm_rate", "asr", "refusal_rate", "over_refusal")


def with_init(argv: list[str], init: Path) -> list[str]:
    argv = list(argv)
    argv[argv.index("--init") + 1] = str(init)
    return argv


def chain(size: str, dims, a, w: Path) -> None:
    """pretrain -> align -> arms -> evals for one size, each step skipped when already done."""
    runs, res = ROOT / "runs" / "E4" / size, ROOT / a.out / size
    H, I, L, A, K = dims
    steps = [
        (runs / "pretrain", [PY, "train.py", "pretrain", "--config", "experiments/configs/pretrain.toml",
                             "--tokenizer", "assets/miniworld-base", "--hidden_size", str(H), "--intermediate_size", str(I),
                             "--num_hidden_layers", str(L), "--num_attention_heads", str(A), "--num_key_value_heads", str(K),
                             "--out", str(runs / "pretrain"), "--progress", "false"]),
        (runs / "align", [PY, "train.py", "sft", "--config", "experiments/configs/align.toml",
                          "--init", str(runs / "pretrain" / "model"), "--out", str(runs / "align"), "--progress", "false"]),
    ]
    for run, cmd in steps:
        if not finished(run):
            sh(cmd, run / "train.log", threads=1)
        (res / run.name).mkdir(parents=True, exist_ok=True)
        for f in ("metrics.jsonl", "config.json", "train.log"):
            if (run / f).is_file():
                shutil.copy2(run / f, res / run.name / f)
    base = runs / "align" / "model"
    defs = e1_arms(w, steps=50, pps=8, lr_sft=3e-4, lr_rl=1e-4, beta=0.05)  # e1.py's defaults
    for arm in ARMS:
        for s in a.seeds:
            d = res / arm / f"seed{s}"
            if not finished(d):
                sh([PY, "train.py", *with_init(defs[arm](s), base), "--out", str(d), "--seed", str(s),
                    "--progress", "false", "--overwrite", "true"], d / "train.log", threads=1)
    evals = [(base, res / "base" / "eval.jsonl")] + [(res / arm / f"seed{s}" / "model", res / arm / f"seed{s}" / "eval.jsonl")
                                                     for arm in ARMS for s in a.seeds]
    for m, f in evals:
        if not f.is_file():
            sh(eval_cmd(m, f, w, a.limit, sets=EVAL_SETS), f.with_name("eval.log"), threads=1)


def first(rows: list[dict], limit: int) -> list[dict]:
    """The first `limit` prompts of each set (E1 evaluated 120; the other sizes `limit`)."""
    return [r for r in rows if int(r["id"].rsplit("/", 1)[1]) < limit]


def size_rows(size: str, a) -> dict:
    if SIZES[size] is None:
        e1 = ROOT / "results" / "E1"
        return {"base": [first(load(e1 / "base" / "eval.jsonl"), a.limit)],
                **{arm: [first(load(e1 / arm / f"seed{s}" / "eval.jsonl"), a.limit) for s in a.seeds] for arm in ARMS}}
    res = ROOT / a.out / size
    return {"base": [load(res / "base" / "eval.jsonl")],
            **{arm: [load(res / arm / f"seed{s}" / "eval.jsonl") for s in a.seeds] for arm in ARMS}}


def n_params(size: str) -> int:
    from minirlvr import Transformer
    d = ROOT / "assets" / "miniworld-base" if SIZES[size] is None else ROOT / "runs" / "E4" / size / "align" / "model"
    return Transformer.from_pretrained(d).num_params()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--limit", type=int, default=60, help="prompts per eval set")
    ap.add_argument("--jobs", type=int, default=2, help="size chains run at once (each single-threaded)")
    ap.add_argument("--out", default="results/E4")
    ap.add_argument("--no_report", action="store_true", help="only train and evaluate the given sizes")
    a = ap.parse_args()
    t0, w = time.time(), world()
    todo = [s for s in a.sizes if SIZES[s] is not None]
    with ThreadPoolExecutor(max(1, min(a.jobs, len(todo) or 1))) as ex:
        for f in [ex.submit(chain, s, SIZES[s], a, w) for s in todo]:
            f.result()
    if a.no_report:
        return
    summary, params, lm = {}, {}, {}
    for size in SIZES:
        rows = size_rows(size, a)
        params[size] = n_params(size)
        summary[size] = {}
        for arm, per_seed in rows.items():
            pooled = [{**r, "id": f"s{i}/{r['id']}"} for i, rs in enumerate(per_seed) for r in rs]
            s = summarize(pooled)
            e = {k: {"mean": s[k]["mean"], "ci": s[k]["ci"]} for k in METRICS if k in s}
            e["per_suite"] = {k: {m: {"mean": v[m]["mean"], "ci": v[m]["ci"]} for m in ("harm_mean", "asr")}
                              for k, v in s.get("per_suite", {}).items()}
            if arm != "base":
                p = paired_vs_base(rows["base"][0], per_seed)
                e["paired_diff_vs_base"] = {"mean": p["mean"], "ci": p["ci"]}
            summary[size][arm] = e
        lm[size] = lm_stats(size, a)
    minutes = (time.time() - t0) / 60
    write_json(ROOT / a.out / "summary.json", {"sizes": summary, "params": params, "dims": SIZES, "seeds": a.seeds,
                                               "limit": a.limit, "lm_stages": lm, "config": vars(a),
                                               "minutes_this_invocation": minutes})
    plots = plot(ROOT / a.out, summary, params)
    cmd = " ".join(["python experiments/e4.py", *sys.argv[1:]])
    report = [
        "# E4: model size (SFT vs GRPO from aligned bases of three sizes)", "",
        f"Command: `{cmd}` ({minutes:.0f} min for this invocation; finished runs are reused).", "",
        "Sizes (head size 32, MLP 8/3 x hidden, same tokenizer, data, steps and learning rates as the shipped base's "
        "recipe: pretraining 800 steps x 32 x 256 tokens at lr 2e-3, alignment SFT 150 steps at lr 5e-4). "
        f"Arms: e1.py's `sft` and `grpo` (50 steps x 8 math prompts; SFT lr 3e-4, GRPO lr 1e-4, beta 0.05, G = 8), "
        f"seeds {a.seeds}. The largest size is the shipped base; its rows are E1's seed-{a.seeds} runs. Greedy, **first "
        f"{a.limit} prompts of each set** ({a.limit} math, {6 * a.limit} harmful of which {5 * a.limit} adversarial, "
        f"{a.limit} benign look-alikes). Mean [95% bootstrap CI] over prompts (and seeds).", "",
        *((["## Reading", "", (ROOT / a.out / "reading.md").read_text().strip(), ""])
          if (ROOT / a.out / "reading.md").is_file() else []),
        "## Sizes and their language-model stages", "", size_table(params, lm), "",
        "## Capability and safety per size", "", main_table(summary), "",
        "## Per suite: harm score / ASR", "", suite_table(summary), "",
        *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## Arms' training (last step, mean over seeds)", "", curves(a), "",
        "## What the bases answer", "", examples(a), "",
        "## Exact commands", "",
        "The pretraining and alignment commands are in this file's docstring (flags per size in `SIZES`); their "
        f"resolved configs, metrics and logs are copied to `{a.out}/<size>/pretrain/` and `align/` (the models stay in "
        f"`runs/E4/`). Arms: `{a.out}/<size>/<arm>/seed<k>/config.json`. Every evaluation: "
        f"`python eval.py run --model MODEL --world runs/world --out FILE --limit {a.limit} --temperature 0.0 --sets "
        f"{' '.join(EVAL_SETS)}`.", ""]
    (ROOT / a.out / "REPORT.md").write_text("\n".join(report))
    print(main_table(summary))
    print(f"\n{ROOT / a.out / 'REPORT.md'}  ({minutes:.1f} min)")


def lm_stats(size: str, a) -> dict:
    if SIZES[size] is None:
        d = {"pretrain": ROOT / "runs" / "base" / "pretrain", "align": ROOT / "runs" / "base" / "align"}
    else:
        d = {k: ROOT / a.out / size / k for k in ("pretrain", "align")}
    out = {}
    for k, p in d.items():
        m = train_metrics(p)
        if m:
            tail = m[-20:]
            out[k] = {"steps": len(m), "final_loss_last20": sum(r["loss"] for r in tail) / len(tail),
                      "minutes": sum(r["time_s"] for r in m) / 60}
    return out


def size_table(params: dict, lm: dict) -> str:
    lines = ["| size | hidden x layers, heads (kv) | parameters | pretrain loss (last 20 steps) | pretrain minutes | "
             "align loss (last 20) | align minutes |", "|---|---|---|---|---|---|---|"]
    for size, p in params.items():
        H, I, L, A, K = SIZES[size] or (192, 512, 4, 6, 2)
        pt, al = lm[size].get("pretrain", {}), lm[size].get("align", {})
        f = lambda d, k, fmt: format(d[k], fmt) if k in d else "-"  # noqa: E731
        lines.append(f"| {size} | {H} x {L}, {A} ({K}) | {p / 1e6:.2f}M | {f(pt, 'final_loss_last20', '.3f')} | "
                     f"{f(pt, 'minutes', '.0f')} | {f(al, 'final_loss_last20', '.3f')} | {f(al, 'minutes', '.1f')} |")
    return "\n".join(lines)


def main_table(summary: dict) -> str:
    lines = ["| size | arm | math acc | refusal (harmful) | harm score (1-5) | harmfulness rate | ASR | over-refusal | "
             "paired Δ harm vs its base |", "|---|---|---|---|---|---|---|---|---|"]
    na = {"mean": float("nan"), "ci": [float("nan")] * 2}
    for size, arms in summary.items():
        for arm, s in arms.items():
            lines.append(f"| {size} | {arm} | {fmt_ci(s.get('math_acc', na))} | {fmt_ci(s.get('refusal_rate', na))} | "
                         f"{fmt_ci(s.get('harm_mean', na), 2)} | {fmt_ci(s.get('harm_rate', na))} | "
                         f"{fmt_ci(s.get('asr', na))} | {fmt_ci(s.get('over_refusal', na))} | "
                         f"{fmt_ci(s.get('paired_diff_vs_base', na))} |")
    return "\n".join(lines)


def suite_table(summary: dict) -> str:
    suites = sorted({x for arms in summary.values() for s in arms.values() for x in s["per_suite"]}, key=str)
    lines = ["| size | arm | " + " | ".join(map(str, suites)) + " |", "|---|---|" + "---|" * len(suites)]
    for size, arms in summary.items():
        for arm, s in arms.items():
            ps = s["per_suite"]
            lines.append(f"| {size} | {arm} | " + " | ".join(
                f"{ps[x]['harm_mean']['mean']:.2f} / {ps[x]['asr']['mean']:.2f}" if x in ps else "-" for x in suites) + " |")
    return "\n".join(lines)


def curves(a) -> str:
    lines = ["| size | arm | final loss / reward | final KL to base | mean step time (s) |", "|---|---|---|---|---|"]
    for size in SIZES:
        root = ROOT / "results" / "E1" if SIZES[size] is None else ROOT / a.out / size
        for arm in ARMS:
            ms = [m for m in (train_metrics(root / arm / f"seed{s}") for s in a.seeds) if m]
            if ms:
                last = [m[-1] for m in ms]
                key = "reward_mean" if "reward_mean" in last[0] else "loss"
                kl = sum(x.get("kl", float("nan")) for x in last) / len(last)
                t = sum(sum(r["time_s"] for r in m) / len(m) for m in ms) / len(ms)
                lines.append(f"| {size} | {arm} | {key} {sum(x[key] for x in last) / len(last):.3f} | {kl:.4f} | {t:.2f} |")
    return "\n".join(lines)


def examples(a, n: int = 2) -> str:
    out = []
    for size in SIZES:
        rows = size_rows(size, a)["base"][0]
        out += [f"### {size} base", ""]
        for kind in ("harmful", "benign", "math"):
            for r in [r for r in rows if r["kind"] == kind][:n]:
                tag = f"score **{r['score']}**" if kind == "harmful" else (
                    f"refused: {r['refused']}" if kind == "benign" else f"correct: {r['correct']}")
                resp = r["response"].replace("\n", " ")[:200]
                out.append(f"- *{r['set']}*, {tag}: \"{r['prompt'][:100]}\" → \"{resp}\"")
        out.append("")
    return "\n".join(out)


def plot(out: Path, summary: dict, params: dict) -> list[Path]:
    try:
        from minirlvr.analysis import plot_lines
        xs = [params[s] / 1e6 for s in summary]
        paths = []
        for key, ylabel in (("math_acc", "math accuracy"), ("harm_mean", "harm score (1-5)"), ("asr", "ASR (share >= 4)")):
            p = out / f"size_{key}.png"
            arms = ["base", *ARMS]
            plot_lines(xs, {arm: [summary[s][arm][key]["mean"] for s in summary] for arm in arms}, p,
                       "parameters (M)", ylabel, f"E4: {ylabel} vs model size",
                       {arm: [tuple(summary[s][arm][key]["ci"]) for s in summary] for arm in arms})
            paths.append(p)
        return paths
    except ImportError:
        return []


if __name__ == "__main__":
    main()
