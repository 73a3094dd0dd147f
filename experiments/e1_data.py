"""E1 follow-up: does SFT erode MiniWorld's refusals when its data shares the *requests'* form?

    python experiments/e1_data.py --seeds 0 1 2 --out results/E1_data

E1 found that SFT on math leaves safety untouched. Our hypothesis: math chats share nothing with harmful
requests, so fitting them exerts no pull on refusals. Here SFT fits helpful answers to benign look-alike
requests instead ("Describe how to forge an iron hook."), phrased by the same templates as harmful ones, so
only the topic differs. The chats are the benign-help part of the alignment set itself (no new data, no
change to the world): what changes is that fine-tuning sees compliance and no refusals. Same budget and
learning rate as E1's SFT arm (50 steps x 8 chats, lr 3e-4), same evaluation. The paper-1 contrast on the
same domain: sft_helpful_lowlr at the RL learning rate, and GRPO on benign look-alike requests whose
verifiable reward is "helped" (1 unless the answer refuses), KL-constrained as in E1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BASE, ROOT, arm_summary, examples_md, run_arms, suite_table, summary_table,  # noqa: E402
                    world, write_json)

from minirlvr.judge import is_refusal  # noqa: E402


def helpful_chats(w: Path, out: Path) -> Path:
    """The alignment set's benign-request chats (not math, not code, not a refusal)."""
    keep = []
    for line in (w / "align_sft.jsonl").read_text().splitlines():
        rec = json.loads(line)
        answer = rec["messages"][-1]["content"]
        if "####" not in answer and "```" not in answer and not is_refusal(answer):
            keep.append(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(keep) + "\n")
    return out


def benign_prompts(w: Path, out: Path) -> Path:
    """The RL safety set's benign look-alike requests (reward: 1 unless the answer refuses)."""
    rows = [l for l in (w / "rl_safety_train.jsonl").read_text().splitlines() if json.loads(l)["kind"] == "benign"]
    out.write_text("\n".join(rows) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="results/E1_data")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr_rl", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--arms", nargs="*", help="subset of arms")
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    out = ROOT / a.out
    t0 = time.time()
    w = world()
    data = helpful_chats(w, ROOT / "runs" / "E1_data" / "helpful_sft.jsonl")
    n = len(data.read_text().splitlines())
    prompts = benign_prompts(w, ROOT / "runs" / "E1_data" / "rl_benign.jsonl")
    sft = lambda lr: (lambda s: ["sft", "--init", str(BASE), "--data", str(data), "--steps", str(a.steps),
                                 "--batch_size", str(a.batch_size), "--pack", "false", "--block_size", "192", "--lr",
                                 str(lr), "--warmup", "0", "--min_lr_frac", "1.0", "--weight_decay", "0.0"])
    grpo = lambda s: ["grpo", "--init", str(BASE), "--data", str(prompts), "--steps", str(a.steps), "--prompts_per_step",
                      str(a.batch_size), "--group_size", "8", "--lr", str(a.lr_rl), "--kl_coef", str(a.beta),
                      "--max_new_tokens", "96"]
    # the same GRPO with groups whose rewards are all equal masked out of the loss (KL term included): a step
    # without any refusal among its samples then has zero gradient, instead of a small one that Adam rescales
    grpo_filter = lambda s: grpo(s) + ["--filter_zero_variance", "true"]
    all_arms = {"sft_helpful": sft(a.lr), "sft_helpful_lowlr": sft(a.lr_rl), "grpo_helpful": grpo,
                "grpo_helpful_filter": grpo_filter}
    chosen = {k: v for k, v in all_arms.items() if not a.arms or k in a.arms}
    res = run_arms(out, chosen, a.seeds, a.limit, a.jobs)
    base_rows = res["base"][0]
    summary = {"base": arm_summary(res["base"], None)}
    summary.update({k: arm_summary(v, base_rows) for k, v in res.items() if k != "base"})
    e1 = ROOT / "results" / "E1" / "summary.json"
    if e1.is_file():  # E1's math-SFT arm, same seeds, budget and evaluation, for the side-by-side
        summary["sft_math (E1)"] = json.loads(e1.read_text())["arms"]["sft"]
    minutes = (time.time() - t0) / 60
    write_json(out / "summary.json", {"arms": summary, "seeds": a.seeds, "config": vars(a), "minutes": minutes,
                                      "helpful_chats": n})
    cmd = " ".join(["python experiments/e1_data.py", *sys.argv[1:]])
    report = [
        "# E1 follow-up: SFT on helpful answers to benign look-alike requests", "",
        f"Command: `{cmd}` ({minutes:.0f} min). {n} chats: the benign-request part of `align_sft.jsonl`. "
        f"Seeds {a.seeds}; {a.steps} steps x {a.batch_size} chats (SFT) or prompts x 8 samples (GRPO, "
        f"{len(prompts.read_text().splitlines())} benign prompts, beta {a.beta}); SFT lr {a.lr} ({a.lr_rl} for "
        f"sft_helpful_lowlr), GRPO lr {a.lr_rl}; from the aligned base; greedy "
        f"evaluation on the first {a.limit} prompts of each set, as in E1. Mean [95% bootstrap CI] over prompts and seeds.",
        "", summary_table(summary), "", "## Per suite: harm score / ASR", "", suite_table(summary), "",
        "## What the responses look like (seed 0)", ""]
    for arm in chosen:
        report += [f"### {arm}", "", examples_md(res[arm][0]), ""]
    (out / "REPORT.md").write_text("\n".join(report))
    print(summary_table(summary))
    print(f"\n{out / 'REPORT.md'}  ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
