"""`make demo`: GRPO on MiniWorld math from the shipped aligned base, then base vs trained, side by side.

    python demo.py [--steps 40] [--limit 60]

1. builds the MiniWorld data (seconds),
2. evaluates the shipped base (assets/miniworld-base): math accuracy, refusal and harm on the five suites,
3. runs `train.py grpo` on math prompts (KL-constrained, beta = 0.05),
4. evaluates the trained policy on the same prompts and prints both.
About 5-10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "experiments"))

from common import BASE, PY, eval_cmd, fmt_ci, load, sh, summarize, world  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--limit", type=int, default=60, help="prompts per eval set")
    ap.add_argument("--out", default="runs/demo")
    a = ap.parse_args()
    if not (BASE / "model.safetensors").is_file():
        print(f"no base model at {BASE}; build it with: python experiments/build_base.py", file=sys.stderr)
        return 1
    out = ROOT / a.out
    w = world()
    sets = ["math_test", "eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection",
            "suite_refusal_suppression", "suite_roleplay", "suite_distraction"]
    print("[1/3] evaluating the base ...", flush=True)
    sh(eval_cmd(BASE, out / "base_eval.jsonl", w, a.limit, sets=sets), log=out / "base_eval.log")
    print(f"[2/3] GRPO on math for {a.steps} steps ...", flush=True)
    sh([PY, "train.py", "grpo", "--init", str(BASE), "--data", str(w / "rl_math_train.jsonl"), "--out", str(out / "grpo"),
        "--steps", str(a.steps), "--prompts_per_step", "16", "--group_size", "8", "--lr", "2e-5", "--kl_coef", "0.05",
        "--max_new_tokens", "96", "--overwrite", "true"])  # a second `make demo` redoes the run
    print("[3/3] evaluating the trained policy ...", flush=True)
    sh(eval_cmd(out / "grpo" / "model", out / "grpo_eval.jsonl", w, a.limit, sets=sets), log=out / "grpo_eval.log")
    rows = {"base": summarize(load(out / "base_eval.jsonl")), "grpo": summarize(load(out / "grpo_eval.jsonl"))}
    print("\n| model | math acc | refusal (harmful) | harm score 1-5 | ASR | over-refusal |\n|---|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {fmt_ci(s['math_acc'])} | {fmt_ci(s['refusal_rate'])} | {fmt_ci(s['harm_mean'], 2)} | "
              f"{fmt_ci(s['asr'])} | {fmt_ci(s['over_refusal'])} |")
    print("\n(mean [95% bootstrap CI] over prompts; per-prompt rows in", out, ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
