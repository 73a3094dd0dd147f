"""Benchmark: where `eval.py run` spends its time, this code against a baseline revision, in one run.

    python bench/eval.py --baseline main [--fast] [--rounds 2] [--limit 0] [--code-only]

Each side runs `eval.py run --model assets/miniworld3-base --world runs/world3 --sets math_test code_test
--temperature 1.0 --samples 8` (first --limit prompts of each set if > 0) in its own subprocess; the baseline is
`git archive REV` unpacked to a temporary folder. Sides alternate (baseline, this, baseline, this, ...) so that
load on a shared machine hits both alike. Each phase gets wall seconds and CPU seconds (this process and its
reaped children: the sandboxes; a pool of sandboxes is closed after each run_codes so that its CPU counts), through timers wrapped around the functions evaluate() calls: generate,
prompt ids (tokenisation), decode, math verify, code sandbox (run_codes), safety judge, write rows.
A revision that judged batches beside generation (in a thread) has overlapping phases: their times (CPU is the
whole process's) can sum to more than the total.
--code-only times just the code scoring: every code row of a finished eval file (--rows) scored by run_codes
(or, with --one-at-a-time N, its first N as GRPO's rewards score them), and checks both sides give the same verdicts.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from sides import checkout, run_side  # bench/sides.py (bench/ is this script's folder)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PHASES = ("generate", "prompt ids", "decode", "math verify", "code sandbox", "safety judge", "write rows")


def cpu() -> float:
    import resource
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def child(args):
    times = {p: [0.0, 0.0] for p in PHASES}

    def timed(name, fn):
        def wrapper(*a, **kw):
            w, c = time.perf_counter(), cpu()
            try:
                return fn(*a, **kw)
            finally:
                times[name][0] += time.perf_counter() - w
                times[name][1] += cpu() - c
        return wrapper

    w0, c0 = time.perf_counter(), cpu()
    import minirlvr.code_verifier as cv
    if args.code_only:
        rows = [json.loads(l) for l in open(args.rows)]
        rows = [r for r in rows if r["kind"] == "code"]
        w1, c1 = time.perf_counter(), cpu()
        if args.one_at_a_time:      # as GRPO scores code rewards: rewards.score_all, one run_code per response
            from minirlvr.rewards import score_all
            rows = rows[:args.one_at_a_time]
            verdicts = [x.task for x in score_all([{"tests": r["gold"]} for r in rows], [r["response"] for r in rows])]
        else:
            verdicts = [[x.passed, x.total, x.status] for x in cv.run_codes([(r["response"], r["gold"]) for r in rows])]
        getattr(cv, "close_pool", lambda: None)()
        times["code sandbox"] = [time.perf_counter() - w1, cpu() - c1]
    else:
        import minirlvr.evaluate as ev
        import minirlvr.judge as jd
        import minirlvr.sampler as sm
        import minirlvr.verifier as vf
        from minirlvr.tokenizer import Tokenizer
        sys.path.insert(0, os.getcwd())
        import eval as cli
        sm.generate = timed("generate", sm.generate)
        ev.chat_prompt_ids = timed("prompt ids", ev.chat_prompt_ids)
        Tokenizer.decode = timed("decode", Tokenizer.decode)
        run_codes = cv.run_codes
        cv.run_codes = timed("code sandbox", lambda *a, **kw: (run_codes(*a, **kw), getattr(cv, "close_pool", list)())[0])
        vf.verify_math, vf.extract_answer = timed("math verify", vf.verify_math), timed("math verify", vf.extract_answer)
        jd.judge_reasoning = timed("safety judge", jd.judge_reasoning)
        evaluate = cli.evaluate
        cli.evaluate = lambda *a, on_rows=None, **kw: evaluate(*a, on_rows=timed("write rows", on_rows), **kw)
        out = os.path.join(tempfile.mkdtemp(prefix="bench_eval_"), "rows.jsonl")
        argv = ["run", "--model", args.model, "--world", args.world, "--sets", "math_test", "code_test",
                "--temperature", "1.0", "--samples", str(args.samples), "--limit", str(args.limit), "--out", out]
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                cli.main(argv + (["--fast"] if args.fast else []))
            finally:
                sys.stdout = stdout
        verdicts = [[r.get("correct"), r.get("pass_rate")] for r in map(json.loads, open(out)) if r["kind"] == "code"]
    total = [time.perf_counter() - w0, cpu() - c0]
    print("RESULT " + json.dumps({"total": total, **times, "verdicts": verdicts}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare with (e.g. main, HEAD~1)")
    ap.add_argument("--model", default=os.path.join(ROOT, "assets/miniworld3-base"))
    ap.add_argument("--world", default=os.path.join(ROOT, "runs/world3"))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="first N prompts of each set (0: all)")
    ap.add_argument("--fast", action="store_true", help="both sides with eval.py run --fast")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--code-only", action="store_true", help="only score the code rows of --rows")
    ap.add_argument("--rows", help="an eval.py run file (for --code-only)")
    ap.add_argument("--one-at-a-time", type=int, default=0, metavar="N", help="with --code-only: score the first N "
                    "code rows as GRPO does (rewards.score_all: run_code per response, 8 threads)")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)
    base = checkout(ROOT, args.baseline)
    sides = {f"baseline ({args.baseline})": base, "this": ROOT}
    runs = {k: [] for k in sides}
    what = f"code scoring of {args.rows}" if args.code_only else \
        f"eval.py run math_test+code_test x {args.samples} samples, limit {args.limit or 'none'}, fast {args.fast}"
    print(f"{what}; {args.rounds} rounds per side, alternating; load average {os.getloadavg()[0]:.1f}", flush=True)
    flags = ["--model", args.model, "--world", args.world, "--samples", str(args.samples), "--limit", str(args.limit)]
    flags += (["--fast"] if args.fast else []) + (["--code-only", "--rows", os.path.abspath(args.rows),
                                                   "--one-at-a-time", str(args.one_at_a_time)] if args.code_only else [])
    for r in range(args.rounds):
        for name, code in sides.items():
            env = {**os.environ, "PYTHONPATH": code}
            runs[name].append(run_side(name, [sys.executable, os.path.join(ROOT, "bench/eval.py"), "--side", "x",
                                              "--baseline", args.baseline] + flags, code, env))
            print(f"  round {r + 1} {name}: wall {runs[name][-1]['total'][0]:.1f} s, "
                  f"cpu {runs[name][-1]['total'][1]:.1f} s", flush=True)
    keys = ("total",) + PHASES
    print(f"{'phase (median s)':<18}" + "".join(f"{n[:18]:>20}{'':>20}" for n in sides) + f"{'baseline / this':>20}")
    print(f"{'':<18}" + f"{'wall':>20}{'cpu':>20}" * 2 + f"{'wall':>10}{'cpu':>10}")
    for k in keys:
        m = [[statistics.median(x[k][i] for x in v) for i in (0, 1)] for v in runs.values()]
        ratio = [f"{a / b:9.2f}x" if b > 0.005 else f"{'-':>10}" for a, b in zip(m[0], m[1])]
        print(f"{k:<18}" + "".join(f"{x:20.2f}" for side in m for x in side) + "".join(ratio))
    same = len({json.dumps(x["verdicts"]) for v in runs.values() for x in v}) == 1
    print("same code verdicts on both sides" if same else "CODE VERDICTS DIFFER between sides or rounds")


if __name__ == "__main__":
    main()
