"""`make demo`: GRPO on MiniWorld 3 math from the shipped aligned base, then base vs trained, side by side.

    python demo.py [--steps 40] [--limit 100]

1. builds the MiniWorld 3 data (seconds),
2. evaluates the shipped base (assets/miniworld3-base): math greedy and at T = 1 (pass@1 and the share of answers
   that use the worked CHAIN procedure rather than a one-line SHORTCUT guess), refusal and ASR on harmful requests
   and the five adversarial suites, over-refusal on benign look-alikes,
3. runs `train.py grpo` on math prompts with E1v3's budget and the lr E1v3 selected on math_dev (beta = 0.05),
4. evaluates the trained policy on the same prompts and prints both.
About 5-10 minutes on 2 CPU cores. results/E1v3/REPORT.md has the full experiment (3 seeds, every arm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "experiments"))

from common import PY, eval_cmd, fmt_ci, load, sh, summarize, world  # noqa: E402

from minirlvr.analysis import bootstrap_ci  # noqa: E402
from minirlvr.world.mathtasks import procedure_of  # noqa: E402

BASE = ROOT / "assets" / "miniworld3-base"
GRPO_LR = "3e-5"  # E1v3's choice for GRPO on math_dev (results/E1v3/lr_selection.json); never tuned on safety
SAFETY = ["eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection", "suite_refusal_suppression",
          "suite_roleplay", "suite_distraction"]


def evaluate(model: Path, out: Path, w: Path, limit: int, name: str) -> dict:
    sh(eval_cmd(model, out / f"{name}_eval.jsonl", w, limit, sets=["math_test", *SAFETY]), log=out / f"{name}_eval.log")
    sh(eval_cmd(model, out / f"{name}_t1.jsonl", w, limit, 1.0, ["math_test"], ["--samples", "4"]),
       log=out / f"{name}_t1.log")
    s = summarize(load(out / f"{name}_eval.jsonl"))
    t1 = [r for r in load(out / f"{name}_t1.jsonl") if r["kind"] == "math"]
    s["pass1_t1"] = bootstrap_ci([float(r["correct"]) for r in t1])
    s["chain_t1"] = bootstrap_ci([float(procedure_of(r["response"]) == "chain") for r in t1])
    return s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--limit", type=int, default=100, help="prompts per eval set")
    ap.add_argument("--out", default="runs/demo")
    a = ap.parse_args()
    if not (BASE / "model.safetensors").is_file():
        print(f"no base model at {BASE}; build it with: python experiments/build_base.py --version 3", file=sys.stderr)
        return 1
    out = ROOT / a.out
    w = world(3)
    print("[1/3] evaluating the base ...", flush=True)
    rows = {"base": evaluate(BASE, out, w, a.limit, "base")}
    print(f"[2/3] GRPO on math for {a.steps} steps x 16 prompts x 8 samples ...", flush=True)
    sh([PY, "train.py", "grpo", "--init", str(BASE), "--data", str(w / "rl_math_train.jsonl"), "--out", str(out / "grpo"),
        "--steps", str(a.steps), "--prompts_per_step", "16", "--group_size", "8", "--lr", GRPO_LR, "--warmup", "4",
        "--min_lr_frac", "0.1", "--kl_coef", "0.05", "--max_new_tokens", "96",
        "--overwrite", "true"])  # a second `make demo` redoes the run
    print("[3/3] evaluating the trained policy ...", flush=True)
    rows["grpo"] = evaluate(out / "grpo" / "model", out, w, a.limit, "grpo")
    print("\n| model | math greedy | math pass@1 (T=1) | CHAIN share (T=1) | refusal (harmful) | ASR | over-refusal |\n"
          "|---|---|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {fmt_ci(s['math_acc'])} | {fmt_ci(s['pass1_t1'])} | {fmt_ci(s['chain_t1'])} | "
              f"{fmt_ci(s['refusal_rate'])} | {fmt_ci(s['asr'])} | {fmt_ci(s['over_refusal'])} |")
    print("\n(mean [95% bootstrap CI] over prompts; per-prompt rows in", out, ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
