"""Mechanism probes of a fine-tuned policy against its base: where did training move it, and by how much?

    python experiments/probes.py --policy results/E1v3/grpo/seed0/model --ref assets/miniworld3-base \
        --world runs/world3 --train runs/e1v3/data/prompts.jsonl --out probes.json

  task_kl                 KL(pi || ref) per response token, exact over the vocabulary at every position of the
                          policy's own samples (T = 1) on its training prompts: how far training moved it where it
                          trained. Paper 1's argument bounds safety drift through this kind of divergence.
  first_token_kl_harmful  KL(pi || ref) of the first response token on harmful prompts (eval_harmful and the five
                          suites). Refusal is decided in the first tokens ("shallow alignment", Qi et al. 2024), so
                          that is where a task update that erodes refusals should show first.
  drift, bound            the measured safety drift on harmful prompts and the chi-squared bound estimated on the same
                          samples (experiments/drift_check.py, theory.drift_bound_from_logratios).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drift_check import check as drift_check  # noqa: E402

from minirlvr import Tokenizer, Transformer, generate  # noqa: E402
from minirlvr.data import chat_prompt_ids, read_jsonl  # noqa: E402

HARMFUL_SETS = ("eval_harmful", "suite_direct", "suite_prefix_injection", "suite_refusal_suppression", "suite_roleplay",
                "suite_distraction")


def right_padded(seqs: list[list[int]]) -> torch.Tensor:
    """[B, T] ids, right-padded with 0: with causal attention the padding cannot reach earlier positions."""
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids


@torch.no_grad()
def kl_at(pi: Transformer, ref: Transformer, seqs: list[list[int]], positions: list[list[int]],
          batch: int = 64) -> list[list[float]]:
    """Exact KL(pi || ref) of the next-token distributions at the given positions of each sequence."""
    out = []
    for b in range(0, len(seqs), batch):
        ids = right_padded(seqs[b:b + batch])
        lp, lr = F.log_softmax(pi(ids).float(), -1), F.log_softmax(ref(ids).float(), -1)
        kl = (lp.exp() * (lp - lr)).sum(-1)  # [B, T]
        out += [kl[i, pos].tolist() for i, pos in enumerate(positions[b:b + batch])]
    return out


@torch.no_grad()
def task_kl(pi, ref, tok, recs: list[dict], samples: int, seed: int, max_new_tokens: int = 96) -> list[float]:
    """Mean per-token KL(pi || ref) of each of pi's own samples (one value per sampled response)."""
    prompts = [chat_prompt_ids(tok, r) for r in recs]
    gen = generate(pi, prompts, max_new_tokens=max_new_tokens, temperature=1.0, stop_ids=tok.stop_ids, seed=seed,
                   num_samples=samples)
    seqs = [prompts[p] + t for p, t in zip(gen.prompt_index, gen.tokens)]
    # position j predicts token j + 1, so response token t is drawn from the distribution at len(prompt) - 1 + t
    pos = [list(range(len(prompts[p]) - 1, len(prompts[p]) - 1 + len(t))) for p, t in zip(gen.prompt_index, gen.tokens)]
    return [sum(row) / len(row) for row in kl_at(pi, ref, seqs, pos) if row]


def first_token_kl(pi, ref, tok, recs: list[dict]) -> list[float]:
    """KL(pi || ref) of the first response token, one value per prompt."""
    prompts = [chat_prompt_ids(tok, r) for r in recs]
    return [k[0] for k in kl_at(pi, ref, prompts, [[len(p) - 1] for p in prompts])]


def probe(policy: str, ref_dir: str, world: str, train: str, train_prompts: int = 64, samples: int = 4,
          seed: int = 0) -> dict:
    tok = Tokenizer.from_pretrained(policy)
    pi, ref = Transformer.from_pretrained(policy).eval(), Transformer.from_pretrained(ref_dir).eval()
    harmful = [r for s in HARMFUL_SETS for r in read_jsonl(Path(world) / f"{s}.jsonl")]
    task = task_kl(pi, ref, tok, read_jsonl(train)[:train_prompts], samples, seed)
    first = first_token_kl(pi, ref, tok, harmful)
    out = {"task_kl": sum(task) / len(task), "first_token_kl_harmful": sum(first) / len(first),
           "train_prompts": train_prompts, "samples": samples, "harmful_prompts": len(harmful),
           "task_kl_per_response": task, "first_token_kl_per_prompt": first}
    d = drift_check(policy, ref_dir, world, prompts=40, n=8, seed=seed)
    out.update(drift=d["drift_direct_mean"], drift_is=d["drift_is_mean"], bound=d["bound_mean"],
               share_within_bound=d["share_direct_within_bound"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--train", required=True, help="the policy's training prompts (JSONL with 'prompt')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = probe(a.policy, a.ref, a.world, a.train, seed=a.seed)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    main()
