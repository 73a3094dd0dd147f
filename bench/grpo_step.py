"""Benchmark: one GRPO step, our loop (minirlvr.grpo.train_grpo) vs TRL's GRPOTrainer, same work, same run.

One configuration, run two ways, each side in its own subprocess (so max RSS is that side's peak memory):
  ours  train_grpo(GRPOConfig(...)), exactly as `python train.py grpo` runs it
  trl   trl.GRPOTrainer on the same HF directory, transformers' generate, fp32, no vLLM
Both get: the model (fp32), the same prompts in the same order (P per step, TRL's dataset is laid out in the
order our loop draws rows, and TRL does not shuffle), G samples each, temperature 1 with no top-k/top-p,
mu (num_iterations), beta with a frozen reference model and the k3 KL estimator, clip 0.2, token-mean loss
over the whole batch (TRL's "dapo"), AdamW at a constant learning rate, grad clip 1.0, one optimizer step
per mu x batch of P x G completions, the MiniWorld math reward (minirlvr.rewards.score) on the decoded text.
Equal work: every completion is exactly --max-new-tokens long on both sides. Ours gets no stop tokens (the
tokenizer's stop_ids are emptied in our subprocess); TRL gets min_new_tokens = max_completion_length, which
masks the EOS logits, so no completion ends early. The tokens generated per step are printed for both.
TRL's GRPOConfig defaults that would make it do different work are set to ours: bf16 -> False (fp32),
activation (gradient) checkpointing -> False (we do not recompute activations), lr schedule -> constant.

Reported per side, after --warmup steps (ours compiles its kernels in the first step): median seconds per
step, wall and CPU (with one thread CPU time is the work itself, steadier than wall time when other jobs share
the cores; two threads on a busy machine wait for each other and swing by 5x, so --threads defaults to 1 on
both sides), the split between generate (sampling + reward), log-prob (no-grad reference / old forward) and
update (the rest), tokens generated per step, and peak memory (max RSS) with the part above the RSS after imports.
TRL's split comes from timing its _generate_and_score_completions and no-grad _get_per_token_logps_and_entropies.
The last lines put our step against this machine's limits (matmul peak, copy bandwidth, measured in the run).

Default model: assets/miniworld-base (P=8, G=8, 64 new tokens, 2 warm-up + 4 steps). With MINIRLVR_SMOLLM2
set (to an HF folder of it, or to 1 for models/SmolLM2-135M-Instruct: README "Real models"): SmolLM2-135M-Instruct
(P=2, G=4, 48 new tokens, 1 warm-up + 2 steps). Prompts: runs/world/rl_math_train.jsonl
(`python -m minirlvr.world build --out runs/world --seed 0` makes it).

Environment: TRL comes from the `bench` extra, in a venv of its own so that the main .venv is untouched:
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 && .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python bench/grpo_step.py [--threads 1] [--steps 4] [--warmup 2] [--rounds 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sides import result  # bench/sides.py (bench/ is this script's folder)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CONFIGS = {
    "miniworld": dict(model=os.path.join(ROOT, "assets/miniworld-base"), prompts=8, group=8, max_new_tokens=64,
                      steps=4, warmup=2),
    "smollm2": dict(model=os.path.join(ROOT, "models/SmolLM2-135M-Instruct"), prompts=2, group=4, max_new_tokens=48,
                    steps=2, warmup=1),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:  # current resident set, in pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def step_prompts(records: list[dict], cfg: dict) -> list[dict]:
    """The records our loop draws, step after step; TRL reads its dataset in this order (no shuffle)."""
    from minirlvr.data import row_batch
    n = cfg["warmup"] + cfg["steps"]
    return [records[i] for s in range(n) for i in row_batch(len(records), s, cfg["prompts"], cfg["seed"]).tolist()]


# ------------------------------------------------------------------------------------------- ours

def run_ours(cfg: dict) -> dict:
    from minirlvr import grpo, run as metrics, tokenizer
    # Equal work: no stop token, every row samples exactly max_new_tokens (TRL's side: min_new_tokens).
    tokenizer.Tokenizer.stop_ids = property(lambda self: [])
    rows, cpu = [], []
    write = metrics.MetricsLog.write

    def record(self, row):  # the loop logs once at the end of each step: note the CPU time there too
        rows.append(dict(row))
        cpu.append(time.process_time())
        write(self, row)

    metrics.MetricsLog.write = record
    base = rss_mb()
    cpu0 = time.process_time()
    grpo.train_grpo(grpo.GRPOConfig(
        out=tempfile.mkdtemp(prefix="bench_grpo_ours_"), init=cfg["model"], data=[cfg["data"]],
        steps=cfg["warmup"] + cfg["steps"], prompts_per_step=cfg["prompts"], group_size=cfg["group"],
        max_new_tokens=cfg["max_new_tokens"], temperature=1.0, lr=cfg["lr"], mu=cfg["mu"], kl_coef=cfg["beta"],
        kl_estimator="k3", agg="token_mean", grad_clip=1.0, seed=cfg["seed"], progress=False))
    cpu_steps = [b - a for a, b in zip([cpu0] + cpu[:-1], cpu)]
    R = cfg["prompts"] * cfg["group"]
    return {"base_mb": base, "steps": [
        {"wall": r["time_s"], "cpu": c, "generate": r["time_generate"], "logprob": r["time_logprob"],
         "update": r["time_update"], "tokens": r["response_len"] * R, "reward": r["reward_mean"]}
        for r, c in zip(rows, cpu_steps)]}


# -------------------------------------------------------------------------------------------- TRL

def run_trl(cfg: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from minirlvr.data import read_many, prompt_of
    from minirlvr.rewards import score

    recs = step_prompts(read_many([cfg["data"]]), cfg)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt_of(r)}], "answer": str(r["answer"])}
                              for r in recs])
    tokens = []

    def math_reward(completions, answer, completion_ids, **_):  # the same reward our loop computes
        tokens.append(sum(len(c) for c in completion_ids))
        return [score({"answer": a}, c[0]["content"]).total for c, a in zip(completions, answer)]

    T, R, mu = cfg["max_new_tokens"], cfg["prompts"] * cfg["group"], cfg["mu"]
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_grpo_trl_"), use_cpu=True, bf16=False, fp16=False,
        model_init_kwargs={"dtype": "float32"}, activation_checkpointing=False,
        per_device_train_batch_size=R, gradient_accumulation_steps=1,  # one optimizer step = P x G completions
        num_generations=cfg["group"], max_completion_length=T, generation_kwargs={"min_new_tokens": T},
        temperature=1.0, top_k=0, top_p=1.0, num_iterations=mu, beta=cfg["beta"], epsilon=0.2, loss_type="dapo",
        scale_rewards="group", learning_rate=cfg["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_steps=(cfg["warmup"] + cfg["steps"]) * mu, shuffle_dataset=False,
        seed=cfg["seed"], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
    base = rss_mb()
    trainer = GRPOTrainer(model=cfg["model"], reward_funcs=math_reward, args=args, train_dataset=data)

    # The split: wrap the rollout (generate + reward + no-grad log-probs) and the no-grad log-prob forwards.
    spent = {"rollout": 0.0, "logprob": 0.0}

    def timed(fn, key, only_no_grad=False):
        def wrapper(*a, **kw):
            if only_no_grad and torch.is_grad_enabled():
                return fn(*a, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "rollout")
    trainer._get_per_token_logps_and_entropies = timed(trainer._get_per_token_logps_and_entropies, "logprob", True)
    marks = []  # (wall, cpu, rollout, logprob) at the end of each optimizer step

    class Marks(TrainerCallback):
        def on_train_begin(self, *_, **__):
            marks.append((time.perf_counter(), time.process_time(), 0.0, 0.0))

        def on_step_end(self, *_, **__):
            marks.append((time.perf_counter(), time.process_time(), spent["rollout"], spent["logprob"]))

    trainer.add_callback(Marks())
    trainer.train()
    steps = []
    for k in range((len(marks) - 1) // mu):  # one of our steps = mu optimizer steps of TRL on one rollout
        a, b = marks[k * mu], marks[(k + 1) * mu]
        wall, lp = b[0] - a[0], b[3] - a[3]
        gen = (b[2] - a[2]) - lp
        steps.append({"wall": wall, "cpu": b[1] - a[1], "generate": gen, "logprob": lp,
                      "update": wall - gen - lp, "tokens": tokens[k] if k < len(tokens) else float("nan")})
    return {"base_mb": base, "steps": steps}


# ------------------------------------------------------------------------------------------ driver

def child(side: str, cfg: dict):
    import torch
    torch.set_num_threads(cfg["threads"])
    out = (run_ours if side == "ours" else run_trl)(cfg)
    print("RESULT " + json.dumps(out))


def flops_and_bytes(cfg: dict, prompt_len: float) -> tuple[float, float]:
    """(matmul FLOPs, bytes of weights streamed by decoding) of one step: generation forward, reference forward,
    update forward + backward (x3), over P x G rows of prompt + T tokens (attention scores are left out)."""
    from minirlvr import Transformer
    m = Transformer.from_pretrained(cfg["model"])
    c = m.config
    params = sum(p.numel() for n, p in m.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    if c.tie_word_embeddings:
        params += m.lm_head.weight.numel()
    R, T = cfg["prompts"] * cfg["group"], cfg["max_new_tokens"]
    gen_tokens = R * T + cfg["prompts"] * prompt_len  # each group's prompt is prefilled once
    seq_tokens = R * (prompt_len + T)
    passes = (1 if cfg["beta"] > 0 else 0) + (1 if cfg["mu"] > 1 else 0) + 3 * cfg["mu"]
    return 2 * params * (gen_tokens + passes * seq_tokens), 4 * params * T  # decode: fp32 weights once per token


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="smollm2" if os.environ.get("MINIRLVR_SMOLLM2") else "miniworld",
                    choices=list(CONFIGS))
    ap.add_argument("--model", default=None, help="HF dir (default: the config's)")
    ap.add_argument("--data", default=os.path.join(ROOT, "runs/world/rl_math_train.jsonl"))
    ap.add_argument("--prompts", type=int, default=None, help="P, prompts per step")
    ap.add_argument("--group", type=int, default=None, help="G, samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="completion length (forced on both sides)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps after warm-up")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--mu", type=int, default=1, help="inner epochs (TRL's num_iterations)")
    ap.add_argument("--beta", type=float, default=0.05, help="KL coefficient (both load a reference when > 0)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    ap.add_argument("--rounds", type=int, default=1, help="alternate ours/TRL this many times, keep the faster")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)  # set in child processes
    ap.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args.side, json.loads(args.cfg))

    cfg = dict(CONFIGS[args.config])
    env_dir = os.environ.get("MINIRLVR_SMOLLM2", "")
    if args.config == "smollm2" and os.path.isdir(env_dir):
        cfg["model"] = env_dir
    for k in ("model", "prompts", "group", "max_new_tokens", "steps", "warmup"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg.update(data=args.data, mu=args.mu, beta=args.beta, lr=args.lr, seed=args.seed, threads=args.threads)
    for path, fix in [(cfg["data"], "python -m minirlvr.world build --out runs/world --seed 0"),
                      (cfg["model"], "hf download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir "
                                     "models/SmolLM2-135M-Instruct")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing; make it with: {fix}")

    import torch
    torch.set_num_threads(args.threads)
    from minirlvr import Tokenizer
    from minirlvr.data import chat_prompt_ids, read_many
    tok = Tokenizer.from_pretrained(cfg["model"])
    recs = step_prompts(read_many([cfg["data"]]), cfg)
    prompt_len = statistics.mean(len(chat_prompt_ids(tok, r)) for r in recs)
    print(f"GRPO step, {os.path.basename(os.path.normpath(cfg['model']))}: P={cfg['prompts']} prompts x "
          f"G={cfg['group']} samples, prompt {prompt_len:.0f} tokens (mean) + {cfg['max_new_tokens']} new tokens "
          f"(forced), mu={cfg['mu']}, beta={cfg['beta']}, lr={cfg['lr']}, fp32, {args.threads} threads; "
          f"{cfg['warmup']} warm-up + {cfg['steps']} measured steps; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")

    results = {}
    for side in [s for _ in range(args.rounds) for s in ("ours", "trl")]:  # alternate: load hits both alike
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--cfg", json.dumps(cfg)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            sys.exit(f"{side} failed (status {status})")
        r = result(out)
        r["peak_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
        r["steps"] = r["steps"][cfg["warmup"]:]
        med = lambda key: statistics.median(s[key] for s in r["steps"])  # noqa: E731
        r.update({k: med(k) for k in ("wall", "cpu", "generate", "logprob", "update", "tokens")})
        if side not in results or r["wall"] < results[side]["wall"]:
            results[side] = {**r, "peak_mb": max(r["peak_mb"], results.get(side, {}).get("peak_mb", 0))}

    ours, trl = results["ours"], results["trl"]
    print(f"{'side':<5} {'s/step':>7} {'cpu s/step':>10} {'generate':>9} {'logprob':>8} {'update':>7} "
          f"{'tokens/step':>11} {'peak MB':>8} {'working MB':>10}   (medians over measured steps)")
    for side, r in results.items():
        print(f"{side:<5} {r['wall']:7.2f} {r['cpu']:10.2f} {r['generate']:9.2f} {r['logprob']:8.2f} "
              f"{r['update']:7.2f} {r['tokens']:11.0f} {r['peak_mb']:8.0f} {r['peak_mb'] - r['base_mb']:10.0f}")
    print(f"TRL / ours: {trl['wall'] / ours['wall']:.2f}x wall, {trl['cpu'] / ours['cpu']:.2f}x CPU time per step "
          f"(generate {trl['generate'] / ours['generate']:.2f}x, log-prob "
          f"{trl['logprob'] / max(ours['logprob'], 1e-9):.2f}x, update {trl['update'] / ours['update']:.2f}x); "
          f"peak memory {trl['peak_mb'] / ours['peak_mb']:.2f}x")
    print("per-step wall s, ours: " + " ".join(f"{s['wall']:.2f}" for s in ours["steps"])
          + "; trl: " + " ".join(f"{s['wall']:.2f}" for s in trl["steps"]))

    # Distance to the machine's limits, measured now with the same thread count.
    from sampler import copy_bandwidth, matmul_peak
    bw, peak = copy_bandwidth(), max(matmul_peak().values())
    flops, decode_bytes = flops_and_bytes(cfg, prompt_len)
    bound = flops / peak  # no fp32 implementation of this step can take less (CPU s with one thread)
    print(f"machine: {peak / 1e9:.0f} GFLOP/s fp32 matmul, {bw / 1e9:.1f} GB/s copy. One step is {flops / 1e9:.1f} "
          f"GFLOP of matmuls: {bound:.2f} s at peak; ours runs at {bound / ours['cpu']:.0%} of peak (CPU time), "
          f"TRL at {bound / trl['cpu']:.0%}, so at equal work nothing can beat TRL by more than "
          f"{trl['cpu'] / bound:.1f}x. Decoding streams the weights {cfg['max_new_tokens']} times: "
          f"{decode_bytes / bw:.2f} s at copy bandwidth (our generate: {ours['generate']:.2f} s wall)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (2 cores: above ~0.5, other processes were running)")


if __name__ == "__main__":
    main()
