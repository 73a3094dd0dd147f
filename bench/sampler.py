"""Benchmark: minirlvr.generate vs transformers' generate, greedy, same weights, same run.

--config smollm2 (default): SmolLM2-135M-Instruct when --model points at an HF folder of it
(README "Real models"), otherwise a random Llama with its config (hidden 576, 30 layers, 9 heads /
3 kv heads, intermediate 1536, vocab 49152, tied). --config miniworld: a random model of the size this
project pretrains (minirlvr.sft.PretrainConfig: hidden 192, 4 layers, vocab 2048), where per-op overhead rules.

For each batch size: tokens/s of both (prefill of --prompt-len tokens + --new-tokens decode steps, the best of
--repeats runs, alternating the two so that load from other processes hits both alike), the ratio, whether
the tokens are equal, and our tokens/s as a fraction of two limits of this machine, measured here too:
  memory   every decode step streams all weights and the KV cache once: B x bandwidth / bytes per step
           (bandwidth from a large tensor copy: bytes read + written per second)
  compute  matmul peak / FLOPs per token (peak: the faster of torch.matmul and oneDNN on a large square
           matmul; FLOPs = 2 x matmul weights + attention over the average context)
Batch 1 is bound by memory, large batches by compute.

    .venv/bin/python bench/sampler.py [--model models/SmolLM2-135M-Instruct] [--batches 1,16] [--new-tokens 128]
        [--threads 1] [--fast]
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minirlvr import Transformer, generate, sampler  # noqa: E402

CONFIGS = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, rope_theta=100000.0),
    "miniworld": dict(vocab_size=2048, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, rope_theta=10000.0),
}


def load_models(config: str, path: str | None, dtype: torch.dtype):
    import transformers
    if config == "smollm2" and path and os.path.exists(os.path.join(path, "model.safetensors")):
        src, name = path, "SmolLM2-135M-Instruct"
    else:
        src, name = tempfile.mkdtemp(prefix="bench_sampler_"), f"random model with {config}'s config"
        torch.manual_seed(0)
        kw = dict(CONFIGS[config])
        theta = kw.pop("rope_theta")
        cfg = transformers.LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval()
    theirs.generation_config.eos_token_id = None  # run every row for exactly --new-tokens, as ours does
    ours = Transformer.from_pretrained(src, dtype=dtype).eval()
    return ours, theirs, name


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def copy_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 10) -> float:
    """Bytes read + written per second by a large tensor copy (far beyond the caches)."""
    x = torch.randn(n_bytes // 4)
    y = torch.empty_like(x).fill_(1.0)  # touch the pages first
    y.copy_(x)
    return 2 * n_bytes / min(seconds(lambda: y.copy_(x)) for _ in range(repeats))


def matmul_peak(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> dict[str, float]:
    """FLOP/s of a large square matmul, through torch.matmul (MKL on CPU) and through oneDNN."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    fns = {"torch.matmul": lambda: a @ b}
    if sampler.USE_ONEDNN:
        bt = b.t().contiguous()
        fns["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    out = {}
    for name, f in fns.items():
        f()
        out[name] = 2 * n**3 / min(seconds(f) for _ in range(repeats))
    return out


def work_per_step(model: Transformer, batch: int, context: float) -> tuple[float, float]:
    """(bytes streamed per decode step: weights + KV cache, FLOPs per generated token) at an average context."""
    c = model.config
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    if c.tie_word_embeddings:
        matmul_params += model.lm_head.weight.numel()  # the tied embedding is the lm_head's weight
    size = model.lm_head.weight.element_size()
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * context * size * batch
    attn_flops = 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * context  # q.k and p.v
    return matmul_params * size + kv_bytes, 2 * matmul_params + attn_flops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="smollm2", choices=list(CONFIGS))
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct", help="SmolLM2 dir (--config smollm2)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-onednn", action="store_true", help="our plain path (nn.Linear), as used on GPU")
    ap.add_argument("--fast", action="store_true", help="also generate(fast=True) (rows marked 'f'): the "
                    "torch.compile'd decode step (sampler.COMPILE); its tokens may differ from the default's by rounding")
    args = ap.parse_args()
    if args.no_onednn:
        sampler.USE_ONEDNN = False
    sampler.COMPILE = sampler.COMPILE or args.fast  # the fast side is the compiled step (opt-in elsewhere)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ours, theirs, name = load_models(args.config, args.model, dtype)
    N, L = args.new_tokens, args.prompt_len
    print(f"model: {name}, {ours.num_params() / 1e6:.1f}M params, {args.dtype}; prompt {L} + {N} new tokens, "
          f"greedy; oneDNN {sampler.USE_ONEDNN}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    bw, peaks = copy_bandwidth(), matmul_peak(dtype=dtype)
    peak = max(peaks.values())
    print(f"machine: copy bandwidth {bw / 1e9:.1f} GB/s; {args.dtype} matmul "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'batch':>5}  {'transformers':>11} {'ours':>8} {'ratio':>6} {'tokens equal':>13} "
          f"{'ours/memory limit':>19} {'ours/compute limit':>19}   (tok/s)")
    g = torch.Generator().manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    for B in batches:
        ids = torch.randint(0, ours.config.vocab_size, (B, L), generator=g)
        prompts = ids.tolist()

        def run_theirs(n=N):
            with torch.inference_mode():
                return theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                       pad_token_id=0)[:, L:].tolist()

        runs = {"transformers": run_theirs,
                "ours": lambda n=N: generate(ours, prompts, max_new_tokens=n).tokens}
        if args.fast:
            runs["ours fast"] = lambda n=N: generate(ours, prompts, max_new_tokens=n, fast=True).tokens
        for k, fn in runs.items():
            t = seconds(lambda: fn(8))  # warm-up (for the fast side: torch.compile, once per process)
            if k == "ours fast" and B == batches[0]:
                print(f"first fast call (compiles the decode step, dynamic shapes): {t:.1f} s")
        best = {k: float("inf") for k in runs}
        for _ in range(args.repeats):  # alternate, so that load from other processes hits all alike
            for k, fn in runs.items():
                best[k] = min(best[k], seconds(fn))
        outs = {k: fn() for k, fn in runs.items()}
        tps = {k: B * N / t for k, t in best.items()}
        step_bytes, flops = work_per_step(ours, B, L + N / 2)
        mem_limit, compute_limit = B * bw / step_bytes, peak / flops
        for k in runs:
            if k == "transformers":
                continue
            equal = sum(x == y for x, y in zip(outs["transformers"], outs[k]))
            first = min((next(t for t in range(N) if x[t] != y[t])
                         for x, y in zip(outs["transformers"], outs[k]) if x != y), default=None)
            eq = f"{equal}/{B}" + ("" if first is None else f" (diff @{first})")
            side = "f" if k == "ours fast" else " "
            print(f"{B:>5}{side}{tps['transformers']:>12.1f} {tps[k]:>8.1f} {tps[k] / tps['transformers']:>5.2f}x {eq:>13} "
                  f"{tps[k] / mem_limit:>6.0%} of {mem_limit:>6.0f}   "
                  f"{tps[k] / compute_limit:>6.0%} of {compute_limit:>6.0f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (2 cores: above ~0.5, other processes were running)")


if __name__ == "__main__":
    main()
