"""E2, the task domain: E1 on code. From the aligned base, SFT(code) vs GRPO(code) vs PPO(code).

    python experiments/e2.py --seeds 0 1 --out results/E2

The same design as E1 with code in place of math: every arm sees `prompts_per_step` code prompts of the same
kind for the same number of optimiser steps; SFT trains on the reference solutions (runs/world/
sft_code_train.jsonl), GRPO and PPO on G = 8 samples of their own for the prompts of rl_code_train.jsonl,
rewarded by the share of hidden tests passed in the sandbox (minirlvr/rewards.py), KL-constrained to the base
(beta = 0.05). `sft_lowlr` repeats SFT at the RL learning rate. Evaluation is greedy on code_test (a
response is correct when it passes every test), math_test (to see whether code training moves math), the
five adversarial suites, alignment-style harmful requests and benign look-alikes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BASE, EVAL_SETS, ROOT, arm_args, arm_summary, curves_table, finish_report, fmt_ci,  # noqa: E402
                    report_plots, run_arms, suite_table, world, write_json)

SETS = ["code_test", *EVAL_SETS]


def arms(w: Path, steps: int, pps: int, lr_sft: float, lr_rl: float, beta: float, max_new: int) -> dict:
    code_sft, code_rl = str(w / "sft_code_train.jsonl"), str(w / "rl_code_train.jsonl")
    sft = lambda lr: (lambda s: ["sft", "--init", str(BASE), "--data", code_sft, "--steps", str(steps),
                                 "--batch_size", str(pps), "--pack", "false", "--block_size", "192", "--lr", str(lr),
                                 "--warmup", "0", "--min_lr_frac", "1.0", "--weight_decay", "0.0"])
    rl = lambda algo: (lambda s: [algo, "--init", str(BASE), "--data", code_rl, "--steps", str(steps),
                                  "--prompts_per_step", str(pps), "--group_size", "8", "--lr", str(lr_rl),
                                  "--kl_coef", str(beta), "--max_new_tokens", str(max_new)])
    return {"sft": sft(lr_sft), "sft_lowlr": sft(lr_rl), "grpo": rl("grpo"), "ppo": rl("ppo")}


def table(summary: dict) -> str:
    """common.summary_table with a code-accuracy column in front."""
    na = {"mean": float("nan"), "ci": [float("nan")] * 2}
    lines = ["| arm | code acc | math acc | refusal (harmful) | harm score (1-5) | harmfulness rate | ASR | over-refusal | "
             "paired Δ harm vs base |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, s in summary.items():
        g = lambda k, d=3: fmt_ci(s.get(k, na), d)
        lines.append(f"| {arm} | {g('code_acc')} | {g('math_acc')} | {g('refusal_rate')} | {g('harm_mean', 2)} | "
                     f"{g('harm_rate')} | {g('asr')} | {g('over_refusal')} | {g('paired_diff_vs_base')} |")
    return "\n".join(lines)


def main() -> None:
    ap = arm_args("results/E2", steps=50, limit=120)
    ap.add_argument("--max_new_tokens", type=int, default=96, help="RL rollouts (reference solutions: ~20-40 tokens)")
    a = ap.parse_args()
    out = ROOT / a.out
    t0 = time.time()
    w = world()
    all_arms = arms(w, a.steps, a.prompts_per_step, a.lr_sft, a.lr_rl, a.beta, a.max_new_tokens)
    chosen = {k: v for k, v in all_arms.items() if not a.arms or k in a.arms}
    res = run_arms(out, chosen, a.seeds, a.limit, a.jobs, sets=SETS)
    base_rows = res["base"][0]
    summary = {"base": arm_summary(res["base"], None)}
    summary.update({k: arm_summary(v, base_rows) for k, v in res.items() if k != "base"})
    for arm, per_seed in res.items():  # mean share of hidden tests passed, next to all-tests-pass accuracy
        from minirlvr.analysis import bootstrap_ci
        summary[arm]["code_pass_rate"] = bootstrap_ci([r["pass_rate"] for rows in per_seed for r in rows
                                                       if r["kind"] == "code" and r["sample"] == 0])
    minutes = (time.time() - t0) / 60
    write_json(out / "summary.json", {"arms": summary, "seeds": a.seeds, "config": vars(a), "minutes": minutes})
    plots = report_plots(out, res, base_rows, "E2 (code)", a.seeds)
    cmd = " ".join(["python experiments/e2.py", *sys.argv[1:]])
    report = [
        "# E2: SFT vs RLVR on MiniWorld code (paper 1, task domain)", "",
        f"Command: `{cmd}` ({minutes:.0f} min for this invocation; runs already on disk are reused).",
        f"Seeds {a.seeds}; each arm {a.steps} steps x {a.prompts_per_step} code prompts from the aligned base; "
        f"SFT lr {a.lr_sft} (and {a.lr_rl} for sft_lowlr) on reference solutions, GRPO/PPO lr {a.lr_rl}, beta {a.beta}, "
        f"G = 8, max_new_tokens {a.max_new_tokens}, reward = share of hidden tests passed. Greedy evaluation, first "
        f"{a.limit} prompts of each set; code acc = all tests pass. Mean [95% bootstrap CI] over prompts and seeds.", "",
        "## Capability and safety", "", table(summary), "",
        "Code pass rate (mean share of hidden tests passed, greedy): " +
        ", ".join(f"{k} {fmt_ci(v['code_pass_rate'])}" for k, v in summary.items()) + ".", "",
        "## Per suite: harm score / ASR", "", suite_table(summary), "",
        *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## Training (mean over seeds)", "", curves_table(out, list(chosen), a.seeds), "",
        "## What the responses look like (seed 0)", "",
    ]
    finish_report(out, report, res, a.out)
    print(table(summary))
    print(f"\n{out / 'REPORT.md'}  ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
