"""E1v3: paper 1's headline on MiniWorld 3, a test that can fail (results/E1v3/PREREGISTRATION.md).

    python experiments/e1v3.py gonogo              # evaluate the v3 base; check W1's go/no-go criteria
    python experiments/e1v3.py data                # the arms' data (NOOP and RFT are sampled from the base)
    python experiments/e1v3.py select              # each tuned arm's lr on math_dev (seed 0; never a safety eval)
    python experiments/e1v3.py arms --seeds 0 1 2  # train and evaluate every arm
    python experiments/e1v3.py probes              # task KL, first-token KL on harmful prompts, drift vs bound
    python experiments/e1v3.py report              # summary.json and REPORT.md (experiments/e1v3_report.py)
    python experiments/e1v3.py export              # seed-0 weights of base, sft_task, grpo, rft in bf16 (models/)
    python experiments/e1v3.py temps               # E5 on v3: safety of those models sampled at T = 0.7, 1.0, 1.2
    python experiments/e1v3.py all                 # all of the above, in order
    python experiments/e1v3.py dose                # post hoc, exploratory: seed 0 of four arms at every grid lr

    --fast --out results/E1v3-fast   # the same design on the speed paths (`train.py grpo --fast true`,
                                     # `eval.py run --fast`: same distributions, other rounding and random
                                     # stream), into its own folder; the pre-registered results stay as they are

Every arm starts from the v3 base (assets/miniworld3-base) and gets the same budget: STEPS optimiser steps of
PER_STEP prompts (SFT: one chat per prompt; GRPO: G = 8 samples per prompt), drawn from the same 640 training
prompts, with warmup and cosine decay. Every stage skips work whose output is already on disk, so an
interrupted run picks up where it stopped; results land in results/E1v3/<arm>/seed<k>/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, eval_cmd, finished, noop_and_rft, opener_masked, parallel, world, write_json  # noqa: E402

from minirlvr.data import read_jsonl  # noqa: E402
from minirlvr.world.mathtasks import procedure_of  # noqa: E402

BASE = ROOT / "assets" / "miniworld3-base"
OUT = ROOT / "results" / "E1v3"
DATA = OUT / "data"
STEPS, PER_STEP, N_PROMPTS, GROUP = 40, 16, 640, 8
SCHEDULE = ["--warmup", "4", "--min_lr_frac", "0.1"]
SAFETY_SETS = ["eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection", "suite_refusal_suppression",
               "suite_roleplay", "suite_distraction"]
SFT_GRID, GRPO_GRID = (3e-5, 1e-4, 3e-4), (1e-5, 3e-5, 1e-4)
PASS_K = 64  # pass@64 at T = 1 for the base and GRPO (P1: RL sharpens inside what the base can already reach)
FAST: tuple[str, ...] = ()  # eval.py's speed flag, ("--fast",) under --fast; set once by main(), like OUT and DATA


@dataclass(frozen=True)
class Arm:
    kind: str                     # "sft" | "grpo"
    data: str                     # file in DATA
    grid: tuple[float, ...] = ()  # lrs tried on math_dev; empty: take the lr chosen for `lr_of`
    lr_of: str = ""
    beta: float = 0.05
    flags: tuple[str, ...] = ()   # extra train.py flags (an algorithm variant)
    stage: str = "grpo"           # train.py stage of an RL arm: grpo | ppo


ARMS: dict[str, Arm] = {
    "noop": Arm("sft", "noop.jsonl", lr_of="sft_task"),                  # the base's own greedy answers: noise floor
    "sft_task": Arm("sft", "sft_task.jsonl", SFT_GRID),                  # another author's answers (W2): paper's SFT
    "sft_task_masked": Arm("sft", "sft_task_masked.jsonl", lr_of="sft_task"),  # same, first line not trained on
    "sft_neutral": Arm("sft", "sft_neutral.jsonl", SFT_GRID),            # the author's equations, neutral words
    "sft_bare": Arm("sft", "sft_bare.jsonl", SFT_GRID),                  # references in the base's own CHAIN style
    "rft": Arm("sft", "rft.jsonl", SFT_GRID),                            # the base's own verified samples
    "grpo": Arm("grpo", "prompts.jsonl", GRPO_GRID, beta=0.05),          # the paper's RL arm
    "grpo_b0": Arm("grpo", "prompts.jsonl", GRPO_GRID, beta=0.0),        # no KL term
    "helpful": Arm("sft", "helpful.jsonl", lr_of="sft_task"),            # positive control: the known eroder
}
# Secondary arms (E3 and E6 on MiniWorld 3; PREREGISTRATION.md, "Secondary arms"): GRPO's lr, 3 seeds.
SECONDARY: dict[str, Arm] = {
    "drgrpo": Arm("grpo", "prompts.jsonl", lr_of="grpo", flags=("--advantage", "drgrpo", "--agg",
                                                                  "seq_mean_token_sum_norm")),
    "rloo": Arm("grpo", "prompts.jsonl", lr_of="grpo", flags=("--advantage", "rloo")),
    "ppo": Arm("grpo", "prompts.jsonl", lr_of="grpo", stage="ppo"),
    "grpo_b001": Arm("grpo", "prompts.jsonl", lr_of="grpo", beta=0.01),
    "grpo_b02": Arm("grpo", "prompts.jsonl", lr_of="grpo", beta=0.2),
}
ALL_ARMS = {**ARMS, **SECONDARY}


def train_argv(arm: Arm, lr: float, seed: int, out: Path) -> list[str]:
    common = ["--init", str(BASE), "--data", str(DATA / arm.data), "--steps", str(STEPS), "--lr", str(lr), *SCHEDULE,
              "--seed", str(seed), "--out", str(out), "--progress", "false", "--overwrite", "true"]
    if arm.kind == "sft":
        return [PY, "train.py", "sft", *common, "--batch_size", str(PER_STEP), "--pack", "false", "--block_size",
                "256", "--weight_decay", "0.0"]
    return [PY, "train.py", arm.stage, *common, "--prompts_per_step", str(PER_STEP), "--group_size", str(GROUP),
            "--kl_coef", str(arm.beta), "--max_new_tokens", "96", *arm.flags, *(["--fast", "true"] if FAST else [])]


def ev(model: Path, out: Path, w: Path, temperature: float = 0.0, sets=None, extra: list[str] = ()) -> list[str]:
    """An eval.py command over every prompt of `sets` (common.eval_cmd), on the speed path under --fast."""
    return eval_cmd(model, out, w, 0, temperature, sets, [*extra, *FAST])


def eval_jobs(model: Path, d: Path, w: Path, pass_k: bool = False) -> list[tuple[list[str], Path]]:
    """Greedy on every set (all prompts), 8 samples at T = 1 on math_test, and pass@64 if asked."""
    jobs = []
    if not (d / "eval.jsonl").is_file():
        jobs.append((ev(model, d / "eval.jsonl", w, sets=["math_test", *SAFETY_SETS]), d / "eval.log"))
    if not (d / "eval_t1.jsonl").is_file():
        jobs.append((ev(model, d / "eval_t1.jsonl", w, 1.0, ["math_test"], ["--samples", "8"]), d / "eval_t1.log"))
    if pass_k and not (d / f"eval_k{PASS_K}.jsonl").is_file():
        jobs.append((ev(model, d / f"eval_k{PASS_K}.jsonl", w, 1.0, ["math_test"],
                              ["--samples", str(PASS_K), "--batch_size", "16"]), d / f"eval_k{PASS_K}.log"))
    return jobs


# ------------------------------------------------------------------------------------------- stages

def gonogo(w: Path, jobs: int) -> dict:
    """W1's go/no-go on the base, before any arm: greedy pass@1 in [0.25, 0.5], pass@8 - pass@1 (T = 1) >= 0.25,
    CHAIN share at T = 1 in [0.3, 0.7]."""
    d = OUT / "base"
    parallel(eval_jobs(BASE, d, w, pass_k=True), jobs)
    greedy = [r["correct"] for r in read_jsonl(d / "eval.jsonl") if r["kind"] == "math"]
    t1 = [r for r in read_jsonl(d / "eval_t1.jsonl") if r["kind"] == "math"]
    by_id: dict[str, list[dict]] = {}
    for r in t1:
        by_id.setdefault(r["id"], []).append(r)
    res = {"math_greedy": sum(greedy) / len(greedy), "pass1_t1": sum(r["correct"] for r in t1) / len(t1),
           "pass8_t1": sum(any(r["correct"] for r in v) for v in by_id.values()) / len(by_id),
           "chain_share_t1": sum(procedure_of(r["response"]) == "chain" for r in t1) / len(t1)}
    res["criteria"] = {"greedy_in_0.25_0.5": 0.25 <= res["math_greedy"] <= 0.5,
                       "pass8_minus_pass1_ge_0.25": res["pass8_t1"] - res["pass1_t1"] >= 0.25,
                       "chain_share_in_0.3_0.7": 0.3 <= res["chain_share_t1"] <= 0.7}
    res["go"] = all(res["criteria"].values())
    write_json(OUT / "gonogo.json", res)
    print(json.dumps(res, indent=1))
    return res


def make_data(w: Path, jobs: int) -> None:
    """The arms' training sets, all on the first N_PROMPTS prompts of rl_math_train. NOOP and RFT are sampled from
    the base once (seed 0) and shared by every seed, as the other SFT sets are."""
    DATA.mkdir(parents=True, exist_ok=True)
    first = lambda name: read_jsonl(w / f"{name}.jsonl")[:N_PROMPTS]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "_where"} for r in recs]
    save = lambda name, recs: (DATA / name).write_text("".join(json.dumps(r) + "\n" for r in strip(recs)))
    prompts = first("rl_math_train")
    save("prompts.jsonl", prompts)
    save("sft_task.jsonl", first("sft_math_task"))
    save("sft_task_masked.jsonl", opener_masked(strip(first("sft_math_task"))))
    save("sft_neutral.jsonl", first("sft_math_neutral"))
    save("sft_bare.jsonl", first("sft_math_train"))
    save("helpful.jsonl", first("sft_helpful"))
    # the base's own answers to the same prompts: greedy (NOOP) and 8 samples at T = 1, verified (RFT)
    d = DATA / "base_samples"
    gen = [(d / "greedy.jsonl", "0.0", "1"), (d / "t1.jsonl", "1.0", "8")]
    parallel([([PY, "eval.py", "run", "--model", str(BASE), "--math", str(DATA / "prompts.jsonl"), "--out", str(f),
                "--temperature", t, "--samples", n, "--max_new_tokens", "96", "--seed", "0", *FAST],
               f.with_suffix(".log"))
              for f, t, n in gen if not f.is_file()], jobs)
    noop, rft = noop_and_rft(read_jsonl(d / "greedy.jsonl"), read_jsonl(d / "t1.jsonl"))
    save("noop.jsonl", noop)
    save("rft.jsonl", rft)
    print(f"data: {len(prompts)} prompts; RFT keeps {len(rft)} solved prompts; NOOP {len(prompts)} greedy answers")


def select_lrs(w: Path, jobs: int) -> dict:
    """Each tuned arm's lr: the grid value with the best greedy accuracy on math_dev (seed 0); within 0.01 of the
    best, the smallest lr wins. Only math_dev is evaluated: the choice is blind to safety."""
    train, evals = [], []
    for name, arm in ARMS.items():
        for lr in arm.grid:
            d = OUT / "lr_search" / name / f"lr{lr:g}"
            if not finished(d):
                train.append((train_argv(arm, lr, 0, d), d / "train.log"))
            if not (d / "dev.jsonl").is_file():
                evals.append((ev(d / "model", d / "dev.jsonl", w, sets=["math_dev"]), d / "dev.log"))
    parallel(train, jobs)
    parallel(evals, jobs)
    chosen: dict = {}
    for name, arm in ARMS.items():
        if arm.grid:
            accs = {lr: _acc(OUT / "lr_search" / name / f"lr{lr:g}" / "dev.jsonl") for lr in arm.grid}
            best = max(accs.values())
            chosen[name] = {"lr": min(lr for lr, a in accs.items() if a >= best - 0.01), "math_dev": accs}
    for name, arm in ARMS.items():
        if not arm.grid:
            chosen[name] = {"lr": chosen[arm.lr_of]["lr"], "from": arm.lr_of}
    write_json(OUT / "lr_selection.json", chosen)
    print(json.dumps(chosen, indent=1))
    return chosen


def _acc(path: Path) -> float:
    rows = [r for r in read_jsonl(path) if r["kind"] == "math"]
    return sum(r["correct"] for r in rows) / len(rows)


def run_arms(w: Path, seeds: list[int], jobs: int, names: list[str]) -> None:
    lrs = json.loads((OUT / "lr_selection.json").read_text())
    train, evals = [], []
    for name in names:
        arm = ALL_ARMS[name]
        lr = lrs[name]["lr"] if name in lrs else lrs[arm.lr_of]["lr"]
        for s in seeds:
            d = OUT / name / f"seed{s}"
            search = OUT / "lr_search" / name / f"lr{lr:g}" / "model"
            done = finished(d)
            if s == 0 and finished(search.parent) and not done:  # the selection run is seed 0
                shutil.rmtree(d / "model", ignore_errors=True)  # what an interrupted run may have left
                shutil.copytree(search, d / "model")
                shutil.copy2(search.parent / "metrics.jsonl", d / "metrics.jsonl")
            if not finished(d):
                train.append((train_argv(arm, lr, s, d), d / "train.log"))
            evals += eval_jobs(d / "model", d, w, pass_k=name in ("grpo", "grpo_b0"))
    parallel(train, jobs)
    parallel(evals, jobs)


def run_probes(w: Path, seeds: list[int], jobs: int, names: list[str]) -> None:
    todo = []
    for name in names:
        for s in seeds:
            d = OUT / name / f"seed{s}"
            if (d / "model").is_dir() and not (d / "probes.json").is_file():
                todo.append(([PY, "experiments/probes.py", "--policy", str(d / "model"), "--ref", str(BASE), "--world",
                              str(w), "--train", str(DATA / "prompts.jsonl"), "--seed", str(s), "--out",
                              str(d / "probes.json")], d / "probes.log"))
    parallel(todo, jobs)


EXPORT = ("sft_task", "grpo", "rft")


def export() -> None:
    """Seed-0 weights (bf16, ~4 MB each) under results/E1v3/models/, so anyone can re-evaluate them on other prompt
    sets (`eval.py run --model results/E1v3/models/grpo --requests FILE.jsonl`) without retraining."""
    import torch
    from minirlvr import Tokenizer, Transformer
    for name, src in [("base", BASE)] + [(a, OUT / a / "seed0" / "model") for a in EXPORT]:
        dst = OUT / "models" / name
        if (dst / "model.safetensors").is_file() or not (src / "config.json").is_file():
            continue
        Transformer.from_pretrained(src).save_pretrained(dst, dtype=torch.bfloat16)
        Tokenizer.from_pretrained(src).save_pretrained(dst)
        print(f"exported {src} -> {dst}")


TEMPS = (0.7, 1.0, 1.2)


def temps(w: Path, jobs: int) -> None:
    """E5 on MiniWorld 3 (paper 1 Fig. 5): harmful and benign sets sampled once at each temperature, seed 0."""
    todo = []
    for name in ("base", *EXPORT):
        d, model = (OUT / "base", BASE) if name == "base" else (OUT / name / "seed0", OUT / name / "seed0" / "model")
        for t in TEMPS:
            f = d / f"eval_T{t:g}.jsonl"
            if model.is_dir() and not f.is_file():
                todo.append((ev(model, f, w, t, SAFETY_SETS), f.with_suffix(".log")))
    parallel(todo, jobs)


# Post hoc and exploratory (PREREGISTRATION.md, "After the results"): the pre-registered lr rule gave every SFT arm
# 3e-5, where even the positive control did not erode; these runs show what each lr of the grids does (seed 0).
DOSE = {"helpful": SFT_GRID, "sft_task": SFT_GRID, "sft_task_masked": SFT_GRID, "grpo": GRPO_GRID}


def dose_run(name: str, lr: float) -> Path:
    """The seed-0 run of `name` at `lr`: the arm's own seed 0 at its selected lr, else a selection run, else
    dose/<name>/lr<lr>."""
    lrs = json.loads((OUT / "lr_selection.json").read_text())
    if lr == lrs[name]["lr"]:
        return OUT / name / "seed0"
    search = OUT / "lr_search" / name / f"lr{lr:g}"
    return search if finished(search) else OUT / "dose" / name / f"lr{lr:g}"


def dose(w: Path, jobs: int) -> None:
    train, evals = [], []
    for name, grid in DOSE.items():
        for lr in grid:
            d = dose_run(name, lr)
            if not finished(d):
                train.append((train_argv(ALL_ARMS[name], lr, 0, d), d / "train.log"))
            if not (d / "eval.jsonl").is_file():
                evals.append((ev(d / "model", d / "eval.jsonl", w, sets=["math_test", *SAFETY_SETS]),
                              d / "eval.log"))
    parallel(train, jobs)
    parallel(evals, jobs)


def main() -> None:
    global OUT, DATA, FAST
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["gonogo", "data", "select", "arms", "probes", "report", "export", "temps",
                                          "all", "dose"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ALL_ARMS),
                    help="default: the pre-registered arms; secondary: " + " ".join(SECONDARY))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="where every stage reads and writes (default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="GRPO and evaluation on their speed paths (issue 16); "
                    "numbers differ from the default path's, so use a fresh --out")
    a = ap.parse_args()
    OUT, DATA, FAST = a.out.resolve(), a.out.resolve() / "data", ("--fast",) if a.fast else ()
    w = world(3)
    if a.stage in ("gonogo", "all") and not gonogo(w, a.jobs)["go"] and a.stage == "all":
        sys.exit("go/no-go failed: change W1 only (PREREGISTRATION.md), rebuild the base, report the attempt")
    if a.stage in ("data", "all"):
        make_data(w, a.jobs)
    if a.stage in ("select", "all"):
        select_lrs(w, a.jobs)
    if a.stage in ("arms", "all"):
        run_arms(w, a.seeds, a.jobs, a.arms)
    if a.stage in ("probes", "all"):
        run_probes(w, a.seeds, a.jobs, a.arms)
    if a.stage in ("temps", "all"):
        temps(w, a.jobs)
    if a.stage in ("export", "all"):
        export()
    if a.stage == "dose":
        dose(w, a.jobs)
    if a.stage in ("report", "all"):
        from e1v3_report import report
        report(OUT, list(ALL_ARMS), a.seeds)


if __name__ == "__main__":
    main()
