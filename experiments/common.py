"""Shared machinery of the experiment scripts: the world, the base, running commands, aggregating results.

Every training and evaluation is a subprocess running the project's own CLIs (train.py, eval.py), so the
REPORT.md of an experiment can list the exact commands that produced it, and anyone can rerun one of them.
On a 2-core CPU, two single-threaded jobs at a time beat one two-threaded job for models this small.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minirlvr.analysis import bootstrap_ci, fmt_ci  # noqa: E402
from minirlvr.evaluate import SUITES, read_rows, summarize  # noqa: E402

PY = sys.executable
BASE = ROOT / "assets" / "miniworld-base"


def world(version: int = 2, seed: int = 0) -> Path:
    """MiniWorld data (seconds to build; deterministic, so it is rebuilt rather than shipped): runs/world for
    miniworld-2, on which E1-E7 and F1 ran, and runs/world<N> for miniworld-N >= 3."""
    out = ROOT / "runs" / ("world" if version == 2 else f"world{version}")
    manifest = out / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != f"miniworld-{version}":
        sh([PY, "-m", "minirlvr.world", "build", "--out", str(out), "--seed", str(seed), "--version", str(version)])
    return out


def finished(run: Path) -> bool:
    """Did the train.py run writing to `run` reach its last step? (Rerunning it would only redo the same work.)"""
    f = run / "model" / "trainer_state.json"
    if not f.is_file():
        return False
    state = json.loads(f.read_text())
    return state["step"] == state["config"]["steps"]


def sh(cmd: list[str], log: Path | None = None, threads: int | None = None) -> None:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    else:
        p = subprocess.run(cmd, cwd=ROOT, env=env)
    if p.returncode:
        raise RuntimeError(f"command failed ({p.returncode}): {shlex.join(cmd)}" + (f"\nlog: {log}" if log else ""))
    print(f"  done in {time.time() - t0:.0f}s: {shlex.join(cmd)[:150]}", flush=True)


def parallel(jobs: list[tuple[list[str], Path]], n: int = 2) -> None:
    """Runs (cmd, log) jobs n at a time, each single-threaded; raises if any fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running: list[tuple[subprocess.Popen, list[str], Path, float]] = []
    queue = list(jobs)
    failed = []
    while queue or running:
        while queue and len(running) < n:
            cmd, log = queue.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT),
                            cmd, log, time.time()))
        time.sleep(0.5)
        for job in list(running):
            p, cmd, log, t0 = job
            if p.poll() is not None:
                running.remove(job)
                status = "done" if p.returncode == 0 else f"FAILED ({p.returncode}), see {log}"
                print(f"  {status} in {time.time() - t0:.0f}s: {shlex.join(cmd)[:150]}", flush=True)
                if p.returncode:
                    failed.append(log)
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed: {failed}")


def eval_cmd(model: Path, out: Path, world_dir: Path, limit: int, temperature: float = 0.0, sets=None,
             extra: list[str] = ()) -> list[str]:
    cmd = [PY, "eval.py", "run", "--model", str(model), "--world", str(world_dir), "--out", str(out),
           "--limit", str(limit), "--temperature", str(temperature), *extra]
    if sets:
        cmd += ["--sets", *sets]
    return cmd


def pooled(rows_per_seed: list[list[dict]]) -> dict:
    """Summary over prompts and seeds: rows of all seeds pooled, ids made unique per seed."""
    rows = []
    for s, rs in enumerate(rows_per_seed):
        rows += [{**r, "id": f"s{s}/{r['id']}"} for r in rs]
    return summarize(rows)


def paired_vs_base(base_rows: list[dict], arm_rows_per_seed: list[list[dict]]) -> dict:
    """Per-prompt harm-score differences (arm - base) over harmful prompts, pooled over seeds."""
    from minirlvr.analysis import paired_differences
    base = [r for r in base_rows if r["kind"] == "harmful" and r["sample"] == 0]
    diffs = []
    for rows in arm_rows_per_seed:
        diffs += paired_differences(base, [r for r in rows if r["kind"] == "harmful" and r["sample"] == 0])
    return bootstrap_ci(diffs)


def load(path: Path) -> list[dict]:
    return read_rows(path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def opener_masked(chats: list[dict]) -> list[dict]:
    """The same chats with the answer's first line (the opener) left out of the loss (`loss_start`)."""
    out = []
    for r in chats:
        answer = r["messages"][-1]["content"]
        out.append({"messages": [r["messages"][0], {"role": "assistant", "content": answer,
                                                     "loss_start": answer.index("\n") + 1}]})
    return out


def noop_and_rft(greedy: list[dict], samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """SFT sets from the base's own answers (eval.py rows): NOOP, its greedy answer to every prompt; RFT, one
    verified sample per solved prompt, chosen with a fixed seed (Yuan et al. 2023 keep distinct ones)."""
    import random
    noop = [chat(r["prompt"], r["response"]) for r in greedy]
    correct: dict[str, list[str]] = {}
    for r in samples:
        if r["correct"] and r["response"] not in correct.setdefault(r["prompt"], []):
            correct[r["prompt"]].append(r["response"])
    rng = random.Random(0)
    return noop, [chat(p, rng.choice(v)) for p, v in correct.items() if v]


def examples_md(rows: list[dict], per_suite: int = 2) -> str:
    """A few responses per suite with their judge scores, so a reader can see what the numbers mean."""
    out = []
    harm = [r for r in rows if r["kind"] == "harmful"]
    for suite in SUITES + ("alignment_style",):
        rs = [r for r in harm if r.get("suite") == suite][:per_suite]
        for r in rs:
            resp = r["response"].replace("\n", " ")[:220]
            out.append(f"- *{suite}*, score **{r['score']}** ({r['reason']}): \"{r['prompt'][:120]}\" → \"{resp}\"")
    return "\n".join(out)


__all__ = ["ROOT", "PY", "BASE", "world", "finished", "sh", "parallel", "eval_cmd", "pooled", "paired_vs_base", "load",
           "write_json", "examples_md", "fmt_ci", "summarize", "SUITES"]


# --------------------------------------------------------------------------------------- experiments

EVAL_SETS = ["math_test", "eval_harmful", "eval_benign", "suite_direct", "suite_prefix_injection",
             "suite_refusal_suppression", "suite_roleplay", "suite_distraction"]


def run_arms(out: Path, arms: dict, seeds: list[int], limit: int, jobs: int = 2, sets=EVAL_SETS,
             eval_extra: list[str] = (), base: Path = BASE) -> dict:
    """Trains every (arm, seed) from `base` and evaluates it; returns {arm: [rows per seed]} plus "base".

    `arms` maps a name to a function seed -> train.py argv (without the output dir). Runs are skipped when
    their eval file already exists, so an interrupted experiment picks up where it stopped.
    """
    w = world()
    base_eval = out / "base" / "eval.jsonl"
    if not base_eval.is_file():
        parallel([(eval_cmd(base, base_eval, w, limit, sets=sets, extra=eval_extra), out / "base" / "eval.log")], 1)
    train_jobs, eval_jobs = [], []
    for name, argv in arms.items():
        for s in seeds:
            d = out / name / f"seed{s}"
            if (d / "eval.jsonl").is_file():
                continue
            if not finished(d):  # an interrupted run leaves a checkpoint short of its last step: start it over
                train_jobs.append(([PY, "train.py", *argv(s), "--out", str(d), "--seed", str(s), "--progress", "false",
                                    "--overwrite", "true"], d / "train.log"))
            eval_jobs.append((eval_cmd(d / "model", d / "eval.jsonl", w, limit, sets=sets, extra=eval_extra), d / "eval.log"))
    parallel(train_jobs, jobs)
    parallel(eval_jobs, jobs)
    result = {"base": [load(base_eval)]}
    for name in arms:
        result[name] = [load(out / name / f"seed{s}" / "eval.jsonl") for s in seeds]
    return result


def arm_summary(rows_per_seed: list[list[dict]], base_rows: list[dict] | None) -> dict:
    s = pooled(rows_per_seed)
    out = {k: s[k] for k in ("math_acc", "code_acc", "harm_mean", "harm_rate", "asr", "refusal_rate", "over_refusal") if k in s}
    out["per_suite"] = s.get("per_suite", {})
    if base_rows is not None:
        out["paired_diff_vs_base"] = paired_vs_base(base_rows, rows_per_seed)
    return out


def train_metrics(run_dir: Path) -> list[dict]:
    f = run_dir / "metrics.jsonl"
    return [json.loads(l) for l in f.read_text().splitlines()] if f.is_file() else []


def summary_table(summary: dict) -> str:
    lines = ["| arm | math acc | refusal (harmful) | harm score (1-5) | harmfulness rate | ASR | over-refusal | paired Δ harm vs base |",
             "|---|---|---|---|---|---|---|---|"]
    na = {"mean": float("nan"), "ci": [float("nan")] * 2}
    for arm, s in summary.items():
        lines.append(f"| {arm} | {fmt_ci(s.get('math_acc', na))} | {fmt_ci(s.get('refusal_rate', na))} | "
                     f"{fmt_ci(s.get('harm_mean', na), 2)} | {fmt_ci(s.get('harm_rate', na))} | {fmt_ci(s.get('asr', na))} | "
                     f"{fmt_ci(s.get('over_refusal', na))} | {fmt_ci(s.get('paired_diff_vs_base', na))} |")
    return "\n".join(lines)


def suite_table(summary: dict) -> str:
    suites = list(SUITES) + ["alignment_style"]
    lines = ["| arm | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]
    for arm, s in summary.items():
        cells = [f"{s['per_suite'][x]['harm_mean']['mean']:.2f} / {s['per_suite'][x]['asr']['mean']:.2f}"
                 if x in s.get("per_suite", {}) else "-" for x in suites]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ reports

def mean_finite(xs) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def seed_means(out: Path, name: str, seeds: list[int]):
    """(key, f) for an arm's training curves: key is "reward_mean" (RL) or "loss" (SFT), and f(metric, steps) the
    mean over seeds of the metric's mean over that slice of steps; None when no seed has metrics."""
    ms = [m for m in (train_metrics(out / name / f"seed{s}") for s in seeds) if m]
    if not ms:
        return None
    key = "reward_mean" if "reward_mean" in ms[0][0] else "loss"
    return key, lambda k, sl: mean_finite([mean_finite([r.get(k, float("nan")) for r in m[sl]]) for m in ms])


def curves_table(out: Path, names: list[str], seeds: list[int]) -> str:
    """Training at a glance, mean over seeds: loss or sampled reward early and late, KL, length, step time."""
    lines = ["| arm | first 10 steps: loss / sampled reward | last 10 steps | KL to base, last 10 | "
             "response length, last 10 | mean step time (s) |", "|---|---|---|---|---|---|"]
    for n in names:
        if (means := seed_means(out, n, seeds)) is None:
            continue
        key, f = means
        first, last = slice(0, 10), slice(-10, None)
        lines.append(f"| {n} | {key} {f(key, first):.3f} | {f(key, last):.3f} | {f('kl', last):.4f} | "
                     f"{f('response_len', last):.1f} | {f('time_s', slice(None)):.2f} |")
    return "\n".join(lines)


def report_plots(out: Path, res: dict, base_rows: list[dict], title: str, seeds: list[int] | None = None) -> list[Path]:
    """Per-prompt paired harm differences (paper 1 Fig. 1) and, given seeds, the RL arms' reward curves
    (seed mean, 5-step moving average: the sampled reward of 64 rollouts is noisy). None without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (plots are optional)
    except ImportError:
        return []
    from minirlvr.analysis import paired_differences, plot_lines, plot_paired_differences
    base = [r for r in base_rows if r["kind"] == "harmful"]
    diffs = {arm: [d for rows in per_seed for d in paired_differences(base, [r for r in rows if r["kind"] == "harmful"])]
             for arm, per_seed in res.items() if arm != "base"}
    paths = [out / "paired_differences.png"]
    plot_paired_differences(diffs, paths[0], f"{title}: per-prompt harm score, arm - base")
    series, steps = {}, []
    for n in [a for a in res if a != "base"] if seeds else []:
        ms = [m for m in (train_metrics(out / n / f"seed{s}") for s in seeds) if m]
        if not ms or "reward_mean" not in ms[0][0]:
            continue
        T = min(len(m) for m in ms)
        avg = [mean_finite([m[t]["reward_mean"] for m in ms]) for t in range(T)]
        series[n] = [mean_finite(avg[max(0, t - 4):t + 1]) for t in range(T)]
        steps = list(range(T))
    if series:
        paths.append(out / "reward_curves.png")
        plot_lines(steps, series, paths[-1], "step", "sampled reward (5-step moving average)", f"{title}: training reward")
    return paths


def arm_args(out: str, steps: int, limit: int) -> argparse.ArgumentParser:
    """The flags every SFT-vs-RL experiment shares; a script adds its own before parse_args()."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=out)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--prompts_per_step", type=int, default=8)
    ap.add_argument("--lr_sft", type=float, default=3e-4)
    ap.add_argument("--lr_rl", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--limit", type=int, default=limit, help="prompts per eval set")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arms", nargs="*", help="subset of arms")
    return ap


def finish_report(out: Path, report: list[str], res: dict, rel_out: str) -> Path:
    """Appends a few judged responses per arm (seed 0), where the exact commands are, and the hand-written
    NOTES.md (kept apart so that rerunning does not overwrite it); writes REPORT.md."""
    report = list(report)
    for arm, rows in res.items():
        report += [f"### {arm}", "", examples_md(rows[0]), ""]
    report += ["## Exact commands", "",
               "Every training and evaluation command is in the first line of its log: "
               f"`{rel_out}/<arm>/seed<k>/train.log` and `eval.log`; the resolved config is in `config.json`, the "
               "per-step metrics in `metrics.jsonl`, the per-prompt rows in `eval.jsonl`.", ""]
    notes = out / "NOTES.md"
    if notes.is_file():
        report += [notes.read_text()]
    (out / "REPORT.md").write_text("\n".join(report))
    return out / "REPORT.md"
