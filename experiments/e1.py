"""E1, the headline of paper 1: from the aligned base, SFT(math) vs GRPO(math) vs PPO(math).

    python experiments/e1.py --seeds 0 1 2 --out results/E1

Equal prompts and budget: every arm sees `prompts_per_step` math prompts from the same set for the same
number of optimiser steps (SFT on their reference solutions, one chat per row; GRPO/PPO on G = 8 samples
of their own). The RL arms are KL-constrained to the base (beta = 0.05). All arms are evaluated greedily on
the same held-out math test, the five adversarial suites, alignment-style harmful requests and benign
look-alikes. `sft_lowlr` repeats SFT at the RL learning rate, so that "SFT erodes safety" cannot be just
"a larger learning rate erodes safety".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, arm_args, arm_summary, curves_table, examples_md, report_plots, run_arms, suite_table,  # noqa: E402
                    summary_table, world, write_json)


def arms(w: Path, steps: int, pps: int, lr_sft: float, lr_rl: float, beta: float) -> dict:
    math_sft, math_rl = str(w / "sft_math_train.jsonl"), str(w / "rl_math_train.jsonl")
    sft = lambda lr: (lambda s: ["sft", "--init", str(BASE_DIR), "--data", math_sft, "--steps", str(steps),
                                 "--batch_size", str(pps), "--pack", "false", "--block_size", "192", "--lr", str(lr),
                                 "--warmup", "0", "--min_lr_frac", "1.0", "--weight_decay", "0.0"])
    rl = lambda algo: (lambda s: [algo, "--init", str(BASE_DIR), "--data", math_rl, "--steps", str(steps),
                                  "--prompts_per_step", str(pps), "--group_size", "8", "--lr", str(lr_rl),
                                  "--kl_coef", str(beta), "--max_new_tokens", "96"])
    return {"sft": sft(lr_sft), "sft_lowlr": sft(lr_rl), "grpo": rl("grpo"), "ppo": rl("ppo")}


BASE_DIR = ROOT / "assets" / "miniworld-base"


def main() -> None:
    ap = arm_args("results/E1", steps=50, limit=120)
    a = ap.parse_args()
    out = ROOT / a.out
    t0 = time.time()
    w = world()
    all_arms = arms(w, a.steps, a.prompts_per_step, a.lr_sft, a.lr_rl, a.beta)
    chosen = {k: v for k, v in all_arms.items() if not a.arms or k in a.arms}
    res = run_arms(out, chosen, a.seeds, a.limit, a.jobs)
    base_rows = res["base"][0]
    summary = {"base": arm_summary(res["base"], None)}
    summary.update({k: arm_summary(v, base_rows) for k, v in res.items() if k != "base"})
    minutes = (time.time() - t0) / 60
    write_json(out / "summary.json", {"arms": summary, "seeds": a.seeds, "config": vars(a), "minutes": minutes})
    plots = report_plots(out, res, base_rows, "E1")
    cmd = " ".join(["python experiments/e1.py", *sys.argv[1:]])
    report = [
        "# E1: SFT vs RLVR on MiniWorld math (paper 1 headline)", "",
        f"Command: `{cmd}` ({minutes:.0f} min on this machine; runs already on disk are reused).",
        f"Seeds {a.seeds}; each arm {a.steps} steps x {a.prompts_per_step} math prompts from the aligned base; "
        f"SFT lr {a.lr_sft} (and {a.lr_rl} for sft_lowlr), GRPO/PPO lr {a.lr_rl}, beta {a.beta}, G = 8. "
        f"Greedy evaluation, first {a.limit} prompts of each set. Mean [95% bootstrap CI] over prompts and seeds.", "",
        "## Capability and safety", "", summary_table(summary), "",
        "## Per suite: harm score / ASR", "", suite_table(summary), "",
        *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## Training curves (last step, mean over seeds)", "", curves_table(out, list(chosen), a.seeds), "",
        "## What the responses look like", "",
    ]
    for arm, rows in res.items():
        report += [f"### {arm}", "", examples_md(rows[0]), ""]
    report += ["## Exact commands", "", "Every training and evaluation command is in the first line of its log:",
               "`results/E1/<arm>/seed<k>/train.log` is written by the run; the per-prompt rows are in `eval.jsonl`.", ""]
    (out / "REPORT.md").write_text("\n".join(report))
    print(summary_table(summary))
    print(f"\n{out / 'REPORT.md'}  ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
