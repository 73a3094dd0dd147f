"""One rollout: generate -> score -> one batch -> response log-probs.

    ro = rollout(policy, tok, records, cfg, seed)            # R = P * G rows, prompt-major
    logp = response_logprobs(policy, ro.batch, temperature)  # [R, T] log pi(response token | prefix)

The batch is the sampler's layout (sampler.build_batch): each prompt left-padded to P tokens, then its
response right-padded to T tokens, so the hidden state at column P-1+t predicts response token t for
every row at once. RL (old, reference and current policy log-probs) and evaluation (token entropies)
read log-probs through response_logprobs, and only through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import token_logprobs
from minirlvr.data import chat_prompt_ids
from minirlvr.model import Transformer
from minirlvr.rewards import load_reward, score_all
from minirlvr.sampler import Batch, build_batch, generate
from minirlvr.tokenizer import Tokenizer

Tensor = torch.Tensor


@dataclass
class Rollout:
    batch: Batch           # R rows: prompt + sampled response
    rewards: Tensor        # [R] total reward (task + shaping)
    correct: Tensor        # [R] 1.0 where the task reward is full
    texts: list[str]       # the decoded responses

    def rows(self, index: slice) -> "Rollout":
        return Rollout(self.batch.rows(index), self.rewards[index], self.correct[index], self.texts[index])


def response_logprobs(model: Transformer, batch: Batch, temperature: float = 1.0,
                      rows: slice | Tensor = slice(None), with_entropy: bool = False):
    """log pi(response token t | prompt, response[:t]) [r, T] under softmax(logits / temperature), 0 at
    padding (and the entropy of that distribution [r, T] with with_entropy), for the rows `rows`."""
    sub = batch.rows(rows)
    P = sub.prompt_len
    hidden = model(sub.ids, positions=sub.positions, key_mask=sub.key_mask, return_hidden=True)[:, P - 1:-1]
    targets = sub.responses.masked_fill(sub.response_mask == 0, -100)
    r, T = targets.shape
    out = token_logprobs(hidden.reshape(r * T, -1), model.lm_head.weight, targets.reshape(-1),
                         temperature=temperature, return_entropy=with_entropy)
    if with_entropy:
        return out[0].view(r, T), out[1].view(r, T)
    return out.view(r, T)


def rollout(policy: Transformer, tok: Tokenizer, records: list[dict], cfg, seed: int) -> Rollout:
    """cfg.group_size responses to each record's chat prompt, sampled and scored as cfg says (GRPOConfig)."""
    prompts = [chat_prompt_ids(tok, r, cfg.system or None) for r in records]
    with torch.no_grad():
        out = generate(policy, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, stop_ids=tok.stop_ids, num_samples=cfg.group_size,
                       seed=seed)
    texts = [tok.decode(t, skip_special_tokens=True) for t in out.tokens]
    scored = score_all([records[i] for i in out.prompt_index], texts, cfg.format_reward, load_reward(cfg.reward),
                       cfg.reward_workers)
    device = policy.lm_head.weight.device
    batch = build_batch([prompts[i] for i in out.prompt_index], out.tokens, tok.pad_token_id or 0, device)
    return Rollout(batch, torch.tensor([s.total for s in scored], device=device),
                   torch.tensor([float(s.correct) for s in scored], device=device), texts)
