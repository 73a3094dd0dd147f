"""E3, the algorithm: GRPO vs Dr.GRPO vs RLOO vs PPO on MiniWorld math, from the aligned base.

    python experiments/e3.py --seeds 0 1 2 --out results/E3 --reuse results/E1

Every arm uses E1's RL settings: 50 steps x 8 math prompts, G = 8 samples each, lr 1e-4, KL to the base with
beta = 0.05 (k3 in the loss for the GRPO family, per-token KL in the reward for PPO), max_new_tokens 96,
greedy evaluation on the same sets as E1. The arms differ only in what train.py supports for them:

- grpo:   `train.py grpo --advantage grpo`   (r - mean) / std per group, loss averaged over all tokens (token_mean)
- drgrpo: `train.py grpo --advantage drgrpo --agg seq_mean_token_sum_norm`   r - mean (no std), and each
          sequence's token sum divided by a constant (the batch's padded response width), as in Liu et al. 2025
- rloo:   `train.py grpo --advantage rloo`   r - mean of the other G-1 rewards, token_mean as GRPO
- ppo:    `train.py ppo`   GAE over a learned critic, whitened, KL in the per-token reward

`--reuse results/E1` copies E1's trained grpo and ppo models (weights, config, metrics, train log) instead of
retraining them, after checking that their configs match these settings; only drgrpo and rloo are then
trained. Every arm and the base are evaluated here, by the current eval.py (E1's own eval files of some of
these models do not reproduce; see REPORT.md). Without --reuse, all four arms are trained here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BASE, ROOT, arm_summary, curves_table, finish_report, finished, report_plots, run_arms,  # noqa: E402
                    suite_table, summary_table, world, write_json)

ARM_FLAGS = {
    "grpo": ("grpo", ["--advantage", "grpo"]),
    "drgrpo": ("grpo", ["--advantage", "drgrpo", "--agg", "seq_mean_token_sum_norm"]),
    "rloo": ("grpo", ["--advantage", "rloo"]),
    "ppo": ("ppo", []),
}
REUSABLE = ("grpo", "ppo")
COPIED = ("config.json", "metrics.jsonl", "train.log")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "generation_config.json", "trainer_state.json")  # what eval.py needs, not optimizer or critic


def arms(w: Path, steps: int, pps: int, lr: float, beta: float, names) -> dict:
    def make(name):
        algo, extra = ARM_FLAGS[name]
        return lambda s: [algo, "--init", str(BASE), "--data", str(w / "rl_math_train.jsonl"), "--steps", str(steps),
                          "--prompts_per_step", str(pps), "--group_size", "8", "--lr", str(lr), "--kl_coef", str(beta),
                          "--max_new_tokens", "96", *extra]
    return {n: make(n) for n in names}


def reuse(src: Path, out: Path, seeds: list[int], a) -> dict:
    """Copies E1's trained grpo/ppo runs (their configs must match ours) so that only their evaluation reruns.

    The trained weights, config, metrics and train log are copied; eval.jsonl is not: E1's evaluation files
    of some of these models do not reproduce with the current eval.py (see REPORT.md), so every arm and the
    base are evaluated here by the same code. Returns {arm/seed: source dir}.
    """
    expect = {"steps": a.steps, "prompts_per_step": a.prompts_per_step, "group_size": 8, "lr": a.lr,
              "kl_coef": a.beta, "max_new_tokens": 96, "advantage": "grpo", "agg": "token_mean"}
    used = {}
    for arm in REUSABLE:
        for s in seeds:
            d_src, d = src / arm / f"seed{s}", out / arm / f"seed{s}"
            if not finished(d_src) or finished(d):
                continue
            cfg = json.loads((d_src / "config.json").read_text())
            bad = {k: (cfg.get(k), v) for k, v in expect.items() if cfg.get(k) != v}
            if bad:
                print(f"  not reusing {d_src}: config differs {bad}")
                continue
            (d / "model").mkdir(parents=True, exist_ok=True)
            for f in COPIED:
                if (d_src / f).is_file():
                    shutil.copy2(d_src / f, d / f)
            for f in MODEL_FILES:
                if (d_src / "model" / f).is_file():
                    shutil.copy2(d_src / "model" / f, d / "model" / f)
            (d / "reused_from.txt").write_text(str(d_src.relative_to(ROOT)) + "\n")
    for arm in REUSABLE:  # this call's copies and earlier ones
        for s in seeds:
            if (out / arm / f"seed{s}" / "reused_from.txt").is_file():
                used[f"{arm}/seed{s}"] = (out / arm / f"seed{s}" / "reused_from.txt").read_text().strip()
    return used


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="results/E3")
    ap.add_argument("--reuse", default="", help="an E1 output dir whose trained grpo and ppo models to reuse (re-evaluated here)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts_per_step", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--limit", type=int, default=120, help="prompts per eval set")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=list(ARM_FLAGS))
    a = ap.parse_args()
    out = ROOT / a.out
    t0 = time.time()
    w = world()
    reused = reuse(ROOT / a.reuse, out, a.seeds, a) if a.reuse else {}
    res = run_arms(out, arms(w, a.steps, a.prompts_per_step, a.lr, a.beta, a.arms), a.seeds, a.limit, a.jobs)
    base_rows = res["base"][0]
    summary = {"base": arm_summary(res["base"], None)}
    summary.update({k: arm_summary(v, base_rows) for k, v in res.items() if k != "base"})
    minutes = (time.time() - t0) / 60
    write_json(out / "summary.json", {"arms": summary, "seeds": a.seeds, "config": vars(a), "minutes": minutes,
                                      "reused": reused})
    plots = report_plots(out, res, base_rows, "E3", a.seeds)
    cmd = " ".join(["python experiments/e3.py", *sys.argv[1:]])
    report = [
        "# E3: GRPO vs Dr.GRPO vs RLOO vs PPO on MiniWorld math", "",
        f"Command: `{cmd}` ({minutes:.0f} min for this invocation; runs already on disk are reused).",
        f"Seeds {a.seeds}; each arm {a.steps} steps x {a.prompts_per_step} math prompts x G = 8 samples from the "
        f"aligned base, lr {a.lr}, KL to the base with beta {a.beta}, max_new_tokens 96. Greedy evaluation, first "
        f"{a.limit} prompts of each set. Mean [95% bootstrap CI] over prompts and seeds.", "",
        "Arms (train.py flags on top of the shared ones):", "",
        "| arm | command | advantage | loss aggregation |", "|---|---|---|---|",
        "| grpo | `train.py grpo --advantage grpo` | (r - mean) / std per group | token_mean |",
        "| drgrpo | `train.py grpo --advantage drgrpo --agg seq_mean_token_sum_norm` | r - mean per group | "
        "per-sequence token sum / padded batch width, mean over sequences |",
        "| rloo | `train.py grpo --advantage rloo` | r - mean of the other G-1 | token_mean |",
        "| ppo | `train.py ppo` | GAE over a learned critic, whitened; KL in the reward | token_mean |", "",
    ]
    if reused:
        report += ["Trained weights reused from E1, not retrained (configs checked equal to these settings), and "
                   "evaluated again here: " + ", ".join(f"`{k}` from `{v}`"
                                                                   for k, v in reused.items()) + ".", ""]
    report += [
        "## Capability and safety", "", summary_table(summary), "",
        "## Per suite: harm score / ASR", "", suite_table(summary), "",
        *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## Per seed: math acc / harm score", "", per_seed_table(res, a.seeds), "",
        "## Training (mean over seeds)", "", curves_table(out, a.arms, a.seeds), "",
        "Step times of reused runs are E1's, measured under a different machine load; the sampled rewards of all "
        "arms move together because every arm draws the same prompts at the same step (row order depends only on "
        "the seed). These Dr.GRPO runs divided by the padded response width of each step's batch; rl.py has since "
        "been fixed to divide by the constant max_new_tokens, as Dr.GRPO prescribes.", "",
        "## What the responses look like (seed 0)", "",
    ]
    finish_report(out, report, res, a.out)
    print(summary_table(summary))
    print(f"\n{out / 'REPORT.md'}  ({minutes:.1f} min)")


def per_seed_table(res: dict, seeds: list[int]) -> str:
    from minirlvr.evaluate import summarize
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm, per_seed in res.items():
        cells = []
        for rows in per_seed:
            s = summarize(rows)
            cells.append(f"{s['math_acc']['mean']:.3f} / {s['harm_mean']['mean']:.2f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
