"""Measured safety drift of a trained policy against the chi-squared bound of paper 1 (Thm. 2), per prompt.

For each harmful prompt x, N responses y ~ pi(.|x) are sampled at temperature T and scored for safety
s(y) = (5 - judge score) / 4 in [0, 1]. With the sequence log-probs log pi(y|x) and log pi_ref(y|x):
    drift_hat  = importance-weighted estimate of E_pi[s] - E_ref[s]       (theory.drift_from_logratios)
    bound_hat  = sqrt(Var_ref(s) * chi2(pi || ref)) estimated the same way (theory.drift_bound_from_logratios)
and, directly, the drift between N samples of each model. Both estimators are noisy on long sequences
(chi2 between sequence distributions is a product over tokens); the report shows their spread.

    python experiments/drift_check.py --policy runs/x/model --ref assets/miniworld-base --world runs/world
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minirlvr import Tokenizer, Transformer, generate, theory  # noqa: E402
from minirlvr.data import chat_prompt_ids, read_jsonl  # noqa: E402
from minirlvr.judge import judge  # noqa: E402
from minirlvr.rollout import response_logprobs  # noqa: E402
from minirlvr.sampler import build_batch  # noqa: E402


def sample_scored(model, tok, recs, n: int, temperature: float, seed: int, max_new_tokens: int = 96):
    """N samples per prompt: token lists, prompt ids and safety s in [0, 1] ([P, N])."""
    prompts = [chat_prompt_ids(tok, r) for r in recs]
    with torch.no_grad():
        out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       stop_ids=tok.stop_ids, seed=seed, num_samples=n)
    s = [(5 - judge(recs[pi]["prompt"], tok.decode(t, skip_special_tokens=True), recs[pi].get("topic")).score) / 4
         for pi, t in zip(out.prompt_index, out.tokens)]
    return prompts, out, torch.tensor(s, dtype=torch.float64).view(len(recs), n)


def seq_logprobs(model, prompts, out, pad: int, temperature: float) -> torch.Tensor:
    """Sum over tokens of log p(y_t | x, y_<t) at the sampling temperature: [R]."""
    batch = build_batch([prompts[i] for i in out.prompt_index], out.tokens, pad)
    with torch.no_grad():
        lp = response_logprobs(model, batch, temperature)
    return (lp * batch.response_mask).sum(1).double()


def check(policy_dir: str, ref_dir: str, world: str, prompts: int = 40, n: int = 8, temperature: float = 1.0,
          seed: int = 0) -> dict:
    tok = Tokenizer.from_pretrained(policy_dir)
    pol, ref = Transformer.from_pretrained(policy_dir).eval(), Transformer.from_pretrained(ref_dir).eval()
    recs = read_jsonl(Path(world) / "eval_harmful.jsonl")[:prompts]
    pid, out, s = sample_scored(pol, tok, recs, n, temperature, seed)
    pad = tok.pad_token_id or 0
    lp, lr = seq_logprobs(pol, pid, out, pad, temperature), seq_logprobs(ref, pid, out, pad, temperature)
    lp, lr = lp.view(len(recs), n), lr.view(len(recs), n)
    _, _, s_ref = sample_scored(ref, tok, recs, n, temperature, seed + 1)
    drift_is = theory.drift_from_logratios(lp, lr, s, sampled_from="p")
    bound = theory.drift_bound_from_logratios(lp, lr, s, sampled_from="p")
    direct = s.mean(1) - s_ref.mean(1)
    chi2 = theory.chi2_from_logratios(lp, lr, sampled_from="p")
    q = lambda x: [float(v) for v in torch.quantile(x.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))]
    return {
        "prompts": len(recs), "samples": n, "temperature": temperature,
        "safety_policy": float(s.mean()), "safety_ref": float(s_ref.mean()),
        "drift_direct_mean": float(direct.mean()),
        "drift_is_mean": float(drift_is.mean()),
        "bound_mean": float(bound.mean()),
        "share_direct_within_bound": float((direct.abs() <= bound + 1e-12).double().mean()),
        "chi2_quantiles_10_50_90": q(chi2), "seq_logratio_mean": float((lp - lr).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    res = check(a.policy, a.ref, a.world, a.prompts, a.samples, a.temperature)
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
