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
    r, T = sub.response_mask.shape
    if sub.pack:
        hidden, row, col = packed_hidden(model, sub)
    else:
        P = sub.prompt_len
        hidden = model(sub.ids, positions=sub.positions, key_mask=sub.key_mask, return_hidden=True)[:, P - 1:-1]
        hidden, row, col = hidden.reshape(r * T, -1), None, None
    targets = sub.responses.masked_fill(sub.response_mask == 0, -100) if row is None else sub.responses[row, col]
    out = token_logprobs(hidden, model.lm_head.weight, targets.reshape(-1), temperature=temperature,
                         return_entropy=with_entropy)
    out = out if with_entropy else (out,)
    if row is not None:  # scatter the response tokens' values into the [r, T] layout, 0 at padding
        out = tuple(x.new_zeros(r, T).index_put((row, col), x) for x in out)
    out = tuple(x.view(r, T) for x in out)
    return out if with_entropy else out[0]


def packed_hidden(model: Transformer, sub: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """The final hidden states that predict the response tokens, computed with almost no padding and each distinct
    prompt once (or a few times): -> hidden [N, H] and the (row [N], t [N]) of the token each predicts, N = real
    response tokens.

    A GRPO group's G rows share one prompt, and in the padded layout half the columns are padding. Here a group is
    a unit: its prompt, then its G responses one after another, each response seeing the prompt and itself (an
    attention mask), at the positions it has in its own row. Units are packed several to a row of S tokens, and a
    group longer than S is cut into units that each repeat the prompt (pack_units picks S, weighing the tokens
    against the attention over S keys that the mask wastes), so groups of unequal length leave little padding.
    The same function as the padded forward (tests/test_speed.py), a few times fewer tokens, other rounding;
    Batch.pack chooses it.
    """
    W, P = sub.ids.shape[1], sub.prompt_len
    plen, rlen = sub.key_mask[:, :P].sum(1).tolist(), sub.response_mask.sum(1).long().tolist()
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(sub.prompt_id.tolist()):
        groups.setdefault(g, []).append(i)
    members = list(groups.values())
    S, packed = pack_units([(plen[m[0]], [rlen[i] for i in m]) for m in members], key_cost(model))
    src, unit, seg, pos = [], [], [], []  # per packed token: source, unit, segment, position
    pred, row, col = [], [], []  # per response token: where it is predicted, its row and column
    u = 0  # the unit's number
    for r, units in enumerate(packed):
        for g, lo, hi in units:
            first, L = members[g][0], plen[members[g][0]]
            src += range(first * W + P - L, first * W + P)  # the prompt, from the group's first row
            unit += [u] * L
            seg += [-1] * L
            pos += range(L)
            last_prompt = len(src) - 1
            for k, i in enumerate(members[g][lo:hi]):
                n = rlen[i]
                # token t of the response is predicted at its token t - 1; token 0 at the prompt's last token
                pred += [last_prompt] + list(range(len(src), len(src) + n - 1)) if n else []
                src += range(i * W + P, i * W + P + n)
                unit += [u] * n
                seg += [k] * n
                pos += range(L, L + n)
                row += [i] * n
                col += range(n)
            u += 1
        pad = (r + 1) * S - len(src)
        src += [0] * pad
        unit += [-1] * pad
        seg += [-2] * pad
        pos += [0] * pad
    dev = sub.ids.device
    ids = sub.ids.reshape(-1)[torch.tensor(src, device=dev)].view(-1, S)
    unit, seg = torch.tensor(unit, device=dev).view(-1, S), torch.tensor(seg, device=dev).view(-1, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
    # a token sees, at or before it, its own unit's prompt and its own response; padding sees only itself
    same_unit = (unit[:, None, :] == unit[:, :, None]) & (unit[:, None, :] != -1)
    key, query = seg[:, None, :], seg[:, :, None]
    mask = (causal & same_unit & ((key == -1) | (key == query))) | torch.eye(S, dtype=torch.bool, device=dev)
    hidden = model(ids, positions=torch.tensor(pos, device=dev).view(-1, S), attn_mask=mask[:, None],
                   return_hidden=True)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.tensor(pred, device=dev, dtype=torch.long))
    return hidden, torch.tensor(row, device=dev, dtype=torch.long), torch.tensor(col, device=dev, dtype=torch.long)


def pack_units(groups: list[tuple[int, list[int]]], key_cost: float = 0.0
               ) -> tuple[int, list[list[tuple[int, int, int]]]]:
    """Groups (prompt length, [response lengths]) -> (S, rows): each row a list of units (group, lo, hi), a unit
    being the group's prompt then its responses lo..hi-1, at most S tokens together (a unit of one response may be
    longer only if S is). A group longer than S is cut into units in order; units go to rows first fit, longest
    first. S is the candidate width (from the longest prompt + response to the longest group) of least cost
    rows x S x (1 + key_cost x S): the tokens, and the keys each attends to (the attention is dense over a row)."""
    single = max(p + max(rs, default=0) for p, rs in groups)  # every unit holds at least one response
    longest = max(p + sum(rs) for p, rs in groups)
    best = None
    for S in sorted({single + (longest - single) * k // 8 for k in range(9)} | {p + sum(rs) for p, rs in groups
                                                                              if p + sum(rs) > single}):
        pieces = []  # (tokens, group, lo, hi)
        for g, (p, rs) in enumerate(groups):
            lo, n = 0, p
            for k, x in enumerate(rs):
                if n + x > S and k > lo:
                    pieces.append((n, g, lo, k))
                    lo, n = k, p
                n += x
            pieces.append((n, g, lo, len(rs)))
        rows, room = [], []
        for n, g, lo, hi in sorted(pieces, key=lambda x: -x[0]):  # stable: ties keep the groups' order
            j = next((j for j, free in enumerate(room) if free >= n), len(rows))
            if j == len(rows):
                rows.append([])
                room.append(S)
            rows[j].append((g, lo, hi))
            room[j] -= n
        cost = len(rows) * S * (1 + key_cost * S)
        if best is None or cost < best[0]:
            best = (cost, S, rows)
    return best[1], best[2]


def key_cost(model: Transformer) -> float:
    """FLOPs of attending to one more key / FLOPs of a token's linear layers, per layer (forward)."""
    c = model.config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    linear = 2 * (c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size)
    return 4 * q / linear  # q.k and p.v: 2 FLOPs each per head dimension


def rollout(policy: Transformer, tok: Tokenizer, records: list[dict], cfg, seed: int) -> Rollout:
    """cfg.group_size responses to each record's chat prompt, sampled and scored as cfg says (GRPOConfig)."""
    prompts = [chat_prompt_ids(tok, r, cfg.system or None) for r in records]
    with torch.no_grad():
        out = generate(policy, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, top_p=cfg.top_p, stop_ids=tok.stop_ids, num_samples=cfg.group_size,
                       seed=seed, fast=cfg.fast)
    texts = [tok.decode(t, skip_special_tokens=True) for t in out.tokens]
    scored = score_all([records[i] for i in out.prompt_index], texts, cfg.format_reward, load_reward(cfg.reward),
                       cfg.reward_workers)
    device = policy.lm_head.weight.device
    batch = build_batch([prompts[i] for i in out.prompt_index], out.tokens, tok.pad_token_id or 0, device, pack=cfg.fast)
    return Rollout(batch, torch.tensor([s.total for s in scored], device=device),
                   torch.tensor([float(s.correct) for s in scored], device=device), texts)
