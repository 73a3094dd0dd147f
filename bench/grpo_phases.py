"""Benchmark: where a MiniWorld GRPO step spends its time, this code against a baseline revision, in one run.

    python bench/grpo_phases.py --baseline HEAD~1 [--fast | --fast-this] [--rounds 3] [--steps 4]

Each side is `train_grpo` exactly as `python train.py grpo` runs it (P=16 prompts x G=8 samples on
assets/miniworld3-base, stop tokens on, so responses have their natural, unequal lengths), in its own subprocess
with one thread; the baseline is `git archive REV` unpacked to a temporary folder. The sides alternate (baseline,
this, baseline, this, ...) so that load on a shared machine hits both alike. Times are CPU seconds (one thread:
the work itself, steadier than wall time when other jobs share the cores), medians over the measured steps of all
rounds, split as the loop splits them (metrics.jsonl's time_* fields): generate (sampling, decoding, rewards),
logprob (the no-grad old and reference passes), update (forward + backward + optimizer). `slots` is the tokens
the update's forward processes per step (padding and repeated prompts included), `needed` the tokens it must
process: each group's prompt once and every response. Both sides draw the same prompts and, when the sampler is
unchanged, the same responses.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from sides import checkout, run_side  # bench/sides.py (bench/ is this script's folder)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def child(cfg: dict):
    import time
    import torch
    torch.set_num_threads(1)
    time.time = time.process_time  # the loop's phase times, in CPU seconds
    from minirlvr import grpo, run as metrics
    from minirlvr.model import Transformer
    slots, rows = [0], []
    forward = Transformer.forward

    def counting(self, ids, *a, **kw):  # the update's forwards (the only ones with grad)
        if torch.is_grad_enabled():
            slots[0] += ids.numel()
        return forward(self, ids, *a, **kw)

    def record(self, row):
        if "time_s" not in row:  # samples.jsonl
            return
        rows.append({**row, "slots": slots[0]})
        slots[0] = 0

    Transformer.forward, metrics.MetricsLog.write = counting, record
    real = []
    rollout = grpo.step_rollout

    def counted_rollout(run, c, step):
        ro = rollout(run, c, step)
        b = ro.batch
        first = [i for i, g in enumerate(b.prompt_id.tolist()) if g not in b.prompt_id[:i].tolist()]
        real.append((int(b.key_mask[first, :b.prompt_len].sum()), int(b.response_mask.sum())))
        return ro

    grpo.step_rollout = counted_rollout
    grpo.train_grpo(grpo.GRPOConfig(
        out=tempfile.mkdtemp(prefix="bench_phases_"), init=cfg["model"], data=[cfg["data"]], steps=cfg["steps"],
        prompts_per_step=cfg["prompts"], group_size=cfg["group"], seed=cfg["seed"], fast=cfg["fast"],
        kl_coef=cfg["kl_coef"], progress=False, save_every=0))
    print("RESULT " + json.dumps([{"generate": r["time_generate"], "logprob": r["time_logprob"],
                                   "update": r["time_update"], "step": r["time_s"], "slots": r["slots"],
                                   "real": p + n, "prompt": p, "response": n, "reward": r["reward_mean"]}
                                  for r, (p, n) in zip(rows, real)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare with (e.g. HEAD~1, main)")
    ap.add_argument("--model", default=os.path.join(ROOT, "assets/miniworld3-base"))
    ap.add_argument("--data", default=os.path.join(ROOT, "runs/world3/rl_math_train.jsonl"),
                    help="python -m minirlvr.world build --out runs/world3 --version 3 makes it")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per side per round; the first is warm-up")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="both sides with GRPOConfig.fast")
    ap.add_argument("--fast-this", action="store_true", help="only this side with GRPOConfig.fast (the baseline's "
                    "default path against this code's fast path)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kl_coef", type=float, default=0.05, help="beta (0: no reference pass)")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = dict(model=args.model, data=args.data, prompts=args.prompts, group=args.group, steps=args.steps,
               fast=args.fast, seed=args.seed, kl_coef=args.kl_coef)
    if args.side:
        return child(cfg)
    if not os.path.exists(args.data):
        sys.exit(f"{args.data} is missing; make it with: python -m minirlvr.world build --out runs/world3 --version 3")

    base = checkout(ROOT, args.baseline)
    sides = {f"baseline ({args.baseline})": (base, args.fast), "this": (ROOT, args.fast or args.fast_this)}
    steps = {k: [] for k in sides}
    fast = "both sides" if args.fast else "this side" if args.fast_this else "neither"
    print(f"GRPO step phases, {os.path.basename(args.model)}: P={args.prompts} x G={args.group}, fast: {fast}, "
          f"{args.rounds} rounds x {args.steps} steps per side (first of each dropped), 1 thread, CPU seconds; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.rounds):
        for name, (code, fast) in sides.items():
            env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
            rows = run_side(name, [sys.executable, os.path.join(ROOT, "bench/grpo_phases.py"), "--side", "x",
                                   "--baseline", args.baseline, "--model", args.model, "--data", args.data,
                                   "--prompts", str(args.prompts), "--group", str(args.group), "--steps",
                                   str(args.steps), "--seed", str(args.seed), "--kl_coef", str(args.kl_coef)]
                           + (["--fast"] if fast else []), code, env)
            steps[name] += rows[1:]
            print(f"  round {r + 1} {name}: step {statistics.median(s['step'] for s in rows[1:]):.2f} s", flush=True)
    keys = ("step", "generate", "logprob", "update")
    med = {n: {k: statistics.median(s[k] for s in v) for k in keys + ("slots", "real")} for n, v in steps.items()}
    print(f"{'side':<22}" + "".join(f"{k:>10}" for k in keys) + f"{'slots':>9}{'needed':>8}{'slots/needed':>13}")
    for n, m in med.items():
        print(f"{n:<22}" + "".join(f"{m[k]:10.2f}" for k in keys) + f"{m['slots']:9.0f}{m['real']:8.0f}"
              f"{m['slots'] / max(m['real'], 1):13.2f}")
    b, t = med.values()
    print(f"{'baseline / this':<22}" + "".join(f"{b[k] / t[k]:9.2f}x" for k in keys))
    rewards = [[s["reward"] for s in v] for v in steps.values()]
    print("same rewards step for step" if rewards[0] == rewards[1] else "rewards differ (another sampler)")
    limits(args, steps["this"])


def limits(args, rows: list[dict]) -> None:
    """The least time any fp32 implementation could take for this side's work: the FLOPs of the tokens a step
    needs (each group's prompt once and every response: generated once, scored once by the reference, then
    forward + backward, 3x, in the update) at this machine's one-thread matmul peak, measured now."""
    from sampler import matmul_peak, work_per_step  # bench/sampler.py
    from minirlvr import Transformer
    peak = max(matmul_peak().values())
    P, R = args.prompts, args.prompts * args.group
    prompt, response = (statistics.median(s[k] for s in rows) for k in ("prompt", "response"))
    _, per_token = work_per_step(Transformer.from_pretrained(args.model), 1, prompt / P + response / R / 2)
    passes = {"generate": 1, "logprob": 1 if args.kl_coef > 0 else 0, "update": 3}
    bound = {k: n * (prompt + response) * per_token / peak for k, n in passes.items()}
    bound["step"] = sum(bound.values())
    print(f"limit: {prompt + response:.0f} tokens needed per step x {per_token / 1e6:.2f} MFLOP per token per pass, at "
          f"{peak / 1e9:.0f} GFLOP/s (one-thread fp32 matmul peak, measured now); CPU s at the peak / share of it:")
    print(f"{'at peak':<22}" + "".join(f"{bound[k]:10.2f}" for k in ("step", *passes)))
    med = {k: statistics.median(s[k] for s in rows) for k in bound}
    print(f"{'this side, of peak':<22}" + "".join(f"{bound[k] / med[k]:10.0%}" if med[k] else f"{'-':>10}"
                                                 for k in ("step", *passes)))


if __name__ == "__main__":
    main()
