"""Benchmark: per-token log-probs from hidden states, forward + backward.

Three implementations on SmolLM2-135M's sizes (V=49152, H=576), N=4096 tokens:
  naive      log_softmax(h @ W.T).gather(...)                 (the textbook line)
  trl        full logits, then TRL-style selective log-softmax: gather the
             target logit and subtract a logsumexp computed one sequence
             (row of [B,T,V]) at a time, B=8 x T=512
  ours       kernels.token_logprobs (chunked, recompute in backward, compiled)
  ours-eager the same with compiled=False
Each runs in its own subprocess, so its peak memory is that process's max RSS
(os.wait4 returns the child's rusage). The child also reports its RSS after
building the inputs and before any work ("base"); "work" = peak - base is the
memory the implementation itself needed. Time is the fastest of --repeats
fwd+bwd passes after one warm-up pass (which also compiles, when compiling),
over --rounds rounds that interleave the implementations: the machine is
shared, and the minimum is the figure least disturbed by other processes.
"cpu s" is the process's CPU time for the same pass (all threads): on a busy
machine it is steadier than wall time, and with --threads 1 it is the work.

    .venv/bin/python bench/logprob.py [--n 4096] [--repeats 2] [--rounds 2] [--chunk-size 1024] [--threads 0]
                                      [--dtype bfloat16]

With --dtype bfloat16 the inputs are bf16 and every implementation runs in that dtype as it would under
autocast: naive and trl form bf16 logits; ours forms fp32 logits from the bf16 values (on CUDA a bf16 matmul
with fp32 accumulation; on CPU, which torch gives no such matmul, an fp32 matmul of the bf16-rounded values)
and normalises in fp32. On a CPU without bf16 matmul units (AVX2 only) torch's bf16 matmuls are far slower
than fp32's, so there the time column measures that, not the kernels.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def naive(h, w, t):
    return torch.log_softmax(h @ w.T, dim=-1).gather(1, t[:, None]).squeeze(1)


def trl_style(h, w, t, rows=8):
    logits = (h @ w.T).view(rows, -1, w.shape[0])  # [B,T,V] as a model would return it
    index = t.view(rows, -1)
    selected = logits.gather(-1, index[..., None]).squeeze(-1)
    lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # one row at a time
    return (selected - lse).view(-1)


def ours(h, w, t, chunk_size, compiled):
    from kernels import token_logprobs
    return token_logprobs(h, w, t, chunk_size=chunk_size, compiled=compiled)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:  # current resident set, in pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)  # every implementation gets its inputs in this dtype
    h = torch.randn(args.n, args.h).to(dtype).requires_grad_()
    w = (torch.randn(args.v, args.h) * 0.05).to(dtype).requires_grad_()
    t = torch.randint(0, args.v, (args.n,))
    g = torch.randn(args.n)  # an arbitrary upstream gradient, as an RL loss would send
    fn = {"naive": naive, "trl": trl_style,
          "ours": lambda *a: ours(*a, args.chunk_size, None),
          "ours-eager": lambda *a: ours(*a, args.chunk_size, False)}[args.impl]
    base = rss_mb()
    times, cpu = [], []
    for _ in range(1 + args.repeats):
        h.grad = w.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        logp = fn(h, w, t)
        (logp * g).sum().backward()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    checksum = [float(logp.detach().double().sum()), float(h.grad.double().norm()), float(w.grad.double().norm())]
    print(json.dumps({"base_mb": base, "time_s": min(times[1:]), "cpu_s": min(cpu[1:]),
                      "warmup_s": times[0], "checksum": checksum}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--v", type=int, default=49152)
    ap.add_argument("--h", type=int, default=576)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of h and W; naive and trl then compute the logits in it, ours sums in fp32")
    ap.add_argument("--impls", default="naive,trl,ours,ours-eager", help="comma-separated; naive always runs")
    ap.add_argument("--impl", default=None, help=argparse.SUPPRESS)  # set in child processes
    args = ap.parse_args()
    if args.impl:
        return child(args)

    print(f"N={args.n} V={args.v} H={args.h} {args.dtype}, fwd+bwd, chunk_size={args.chunk_size}, "
          f"best of {args.repeats} x {args.rounds} rounds, "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads")
    impls = ["naive"] + [i for i in args.impls.split(",") if i != "naive"]
    rows = {}
    for _, impl in [(r, i) for r in range(args.rounds) for i in impls]:
        cmd = [sys.executable, os.path.abspath(__file__), "--impl", impl, "--n", str(args.n),
               "--v", str(args.v), "--h", str(args.h), "--chunk-size", str(args.chunk_size),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--dtype", args.dtype]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            sys.exit(f"{impl} failed (status {status})")
        r = json.loads(out.strip().splitlines()[-1])
        r["peak_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
        if impl in rows:  # keep the largest peak and the fastest time over rounds
            r["peak_mb"] = max(r["peak_mb"], rows[impl]["peak_mb"])
            r["time_s"] = min(r["time_s"], rows[impl]["time_s"])
            r["cpu_s"] = min(r["cpu_s"], rows[impl]["cpu_s"])
        rows[impl] = r

    ref = rows["naive"]
    print(f"{'impl':<11} {'peak MB':>8} {'base MB':>8} {'work MB':>8} {'peak/naive':>10} "
          f"{'work/naive':>10} {'time s':>7} {'time/naive':>10} {'cpu s':>7} {'cpu/naive':>9} {'warm-up s':>9}")
    for impl, r in rows.items():
        work, ref_work = r["peak_mb"] - r["base_mb"], ref["peak_mb"] - ref["base_mb"]
        print(f"{impl:<11} {r['peak_mb']:8.0f} {r['base_mb']:8.0f} {work:8.0f} "
              f"{r['peak_mb'] / ref['peak_mb']:10.2f} {work / ref_work:10.2f} {r['time_s']:7.2f} "
              f"{r['time_s'] / ref['time_s']:10.2f} {r['cpu_s']:7.2f} {r['cpu_s'] / ref['cpu_s']:9.2f} "
              f"{r['warmup_s']:9.2f}")
    for impl, r in rows.items():  # same inputs, so the results must agree
        d = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(r["checksum"], ref["checksum"]))
        print(f"{impl:<11} checksum rel. diff vs naive {d:.1e}")


if __name__ == "__main__":
    main()
