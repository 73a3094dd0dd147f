"""E2v4: paper 1's trend on code at matched capability, on MiniWorld 4 (results/E2v4/PREREGISTRATION.md).

    python experiments/build_base.py --version 4    # assets/miniworld4-base (~5 min)
    python experiments/e2v4.py gonogo               # evaluate the base; check code W1's go/no-go criteria
    python experiments/e2v4.py data                 # the arms' data (NOOP and RFT are sampled from the base)
    python experiments/e2v4.py arms --seeds 0 1 2   # every arm at every lr of its grid (a dose design)
    python experiments/e2v4.py probes               # task KL and first-token KL of every seed-0 run
    python experiments/e2v4.py report               # summary.json and REPORT.md (experiments/e2v4_report.py)

Every run starts from assets/miniworld4-base with E1v3's budget (40 steps x 16 prompts of the first 640
rl_code_train prompts; GRPO samples G = 8). No lr is selected: every arm runs at every lr of its grid, and the
trend is judged at matched capability. Every stage skips work already on disk, so an interrupted run resumes;
runs land in results/E2v4/<arm>/lr<lr>/seed<k>/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, eval_cmd, finished, noop_and_rft, opener_masked, parallel, world, write_json  # noqa: E402
from e1v3 import SAFETY_SETS, SCHEDULE, Arm  # noqa: E402

from minirlvr.data import read_jsonl  # noqa: E402

BASE = ROOT / "assets" / "miniworld4-base"
OUT = ROOT / "results" / "E2v4"
DATA = OUT / "data"
STEPS, PER_STEP, N_PROMPTS, GROUP = 40, 16, 640, 8
SFT_GRID, GRPO_GRID = (3e-5, 1e-4, 3e-4), (1e-5, 3e-5, 1e-4)

ARMS: dict[str, Arm] = {
    "sft_task": Arm("sft", "sft_task.jsonl", SFT_GRID),                # the other author's answers (W2)
    "sft_task_masked": Arm("sft", "sft_task_masked.jsonl", SFT_GRID),  # same, opener line not trained on
    "sft_neutral": Arm("sft", "sft_neutral.jsonl", SFT_GRID),          # "One solution:" + the code
    "sft_bare": Arm("sft", "sft_bare.jsonl", SFT_GRID),                # references in the base's own format
    "rft": Arm("sft", "rft.jsonl", SFT_GRID),                          # the base's own verified samples
    "noop": Arm("sft", "noop.jsonl", SFT_GRID),                        # the base's own greedy answers
    "helpful": Arm("sft", "helpful.jsonl", SFT_GRID),                  # positive control: the known eroder
    "grpo": Arm("grpo", "prompts.jsonl", GRPO_GRID, beta=0.05),        # the paper's RL arm
}


def run_dir(name: str, lr: float, seed: int) -> Path:
    return OUT / name / f"lr{lr:g}" / f"seed{seed}"


def train_argv(arm: Arm, lr: float, seed: int, out: Path) -> list[str]:
    common = ["--init", str(BASE), "--data", str(DATA / arm.data), "--steps", str(STEPS), "--lr", str(lr), *SCHEDULE,
              "--seed", str(seed), "--out", str(out), "--progress", "false", "--overwrite", "true"]
    if arm.kind == "sft":
        return [PY, "train.py", "sft", *common, "--batch_size", str(PER_STEP), "--pack", "false", "--block_size",
                "256", "--weight_decay", "0.0"]
    return [PY, "train.py", "grpo", *common, "--prompts_per_step", str(PER_STEP), "--group_size", str(GROUP),
            "--kl_coef", str(arm.beta), "--max_new_tokens", "96"]


def eval_jobs(model: Path, d: Path, w: Path) -> list[tuple[list[str], Path]]:
    """Greedy on code_test and every safety set; 8 samples at T = 1 on code_test."""
    jobs = []
    if not (d / "eval.jsonl").is_file():
        jobs.append((eval_cmd(model, d / "eval.jsonl", w, 0, sets=["code_test", *SAFETY_SETS]), d / "eval.log"))
    if not (d / "eval_t1.jsonl").is_file():
        jobs.append((eval_cmd(model, d / "eval_t1.jsonl", w, 0, 1.0, ["code_test"], ["--samples", "8"]),
                     d / "eval_t1.log"))
    return jobs


# ------------------------------------------------------------------------------------------- stages

def gonogo(w: Path, jobs: int) -> dict:
    """Code W1's go/no-go on the base, before any arm: greedy pass@1 in [0.3, 0.7], pass@8 - pass@1 (T = 1) >= 0.25,
    correct-path share at T = 1 in [0.3, 0.7]. Refusal and ASR are reported, not criteria."""
    from e2v4_report import endpoints, load
    d = OUT / "base"
    parallel(eval_jobs(BASE, d, w), jobs)
    recs = {r["prompt"]: r for r in read_jsonl(w / "code_test.jsonl")}
    ep = endpoints(load([(d, 0)]), recs)  # per-prompt values, as the report computes them
    mean = lambda k: sum(ep[k].values()) / len(ep[k])
    res = {"code_greedy": mean("code_greedy"), "pass1_t1": mean("pass1_t1"), "pass8_t1": mean("pass8_t1"),
           "correct_share_t1": mean("correct_share"), "refusal": mean("refusal"), "asr": mean("asr")}
    res["criteria"] = {"greedy_in_0.3_0.7": 0.3 <= res["code_greedy"] <= 0.7,
                       "pass8_minus_pass1_ge_0.25": res["pass8_t1"] - res["pass1_t1"] >= 0.25,
                       "correct_share_in_0.3_0.7": 0.3 <= res["correct_share_t1"] <= 0.7}
    res["go"] = all(res["criteria"].values())
    write_json(OUT / "gonogo.json", res)
    print(json.dumps(res, indent=1))
    return res


def make_data(w: Path, jobs: int) -> None:
    """The arms' training sets, all on the first N_PROMPTS prompts of rl_code_train. NOOP and RFT are sampled from
    the base once (seed 0) and shared by every seed, as the other SFT sets are."""
    DATA.mkdir(parents=True, exist_ok=True)
    def first(name: str) -> list[dict]:  # read_jsonl adds "_where" (file:line, for error messages): not data
        return [{k: v for k, v in r.items() if k != "_where"} for r in read_jsonl(w / f"{name}.jsonl")[:N_PROMPTS]]
    save = lambda name, recs: (DATA / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    prompts = first("rl_code_train")
    save("prompts.jsonl", prompts)
    save("sft_task.jsonl", first("sft_code_task"))
    save("sft_task_masked.jsonl", opener_masked(first("sft_code_task")))
    save("sft_neutral.jsonl", first("sft_code_neutral"))
    save("sft_bare.jsonl", first("sft_code_train"))
    save("helpful.jsonl", first("sft_helpful"))
    # the base's own answers to the training prompts (eval.py reads them as a code_test set): greedy and 8 at T = 1
    shim = DATA / "train_prompts"
    shim.mkdir(exist_ok=True)
    save("train_prompts/code_test.jsonl", prompts)
    d = DATA / "base_samples"
    gen = [(d / "greedy.jsonl", 0.0, []), (d / "t1.jsonl", 1.0, ["--samples", "8"])]
    parallel([(eval_cmd(BASE, f, shim, 0, t, ["code_test"], [*n, "--max_new_tokens", "96", "--seed", "0"]),
               f.with_suffix(".log")) for f, t, n in gen if not f.is_file()], jobs)
    noop, rft = noop_and_rft(read_jsonl(d / "greedy.jsonl"), read_jsonl(d / "t1.jsonl"))
    save("noop.jsonl", noop)
    save("rft.jsonl", rft)
    print(f"data: {len(prompts)} prompts; RFT keeps {len(rft)} solved prompts; NOOP {len(prompts)} greedy answers")


def run_arms(w: Path, seeds: list[int], jobs: int, names: list[str]) -> None:
    """Seed by seed (all of seed 0 first), so that a stopped session leaves whole seeds behind."""
    for s in seeds:
        train, evals = [], []
        for name in names:
            arm = ARMS[name]
            for lr in arm.grid:
                d = run_dir(name, lr, s)
                if not finished(d):
                    train.append((train_argv(arm, lr, s, d), d / "train.log"))
                evals += eval_jobs(d / "model", d, w)
        parallel(train, jobs)
        parallel(evals, jobs)


def run_probes(w: Path, jobs: int, names: list[str]) -> None:
    todo = []
    for name in names:
        for lr in ARMS[name].grid:
            d = run_dir(name, lr, 0)
            if (d / "model").is_dir() and not (d / "probes.json").is_file():
                todo.append(([PY, "experiments/probes.py", "--policy", str(d / "model"), "--ref", str(BASE), "--world",
                              str(w), "--train", str(DATA / "prompts.jsonl"), "--seed", "0", "--out",
                              str(d / "probes.json")], d / "probes.log"))
    parallel(todo, jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["gonogo", "data", "arms", "probes", "report"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    w = world(4)
    if a.stage == "gonogo":
        gonogo(w, a.jobs)
    if a.stage == "data":
        make_data(w, a.jobs)
    if a.stage == "arms":
        if not json.loads((OUT / "gonogo.json").read_text())["go"]:
            sys.exit("the base failed code W1's go/no-go: change SHARE_LEVELS only, rebuild, report the attempt")
        run_arms(w, a.seeds, a.jobs, a.arms)
    if a.stage == "probes":
        run_probes(w, a.jobs, a.arms)
    if a.stage == "report":
        from e2v4_report import report
        report(OUT, w, list(ARMS), a.seeds)


if __name__ == "__main__":
    main()
