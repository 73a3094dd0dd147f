"""E1v3's mechanism probes: the exact KL at chosen positions equals a naive per-sequence computation, right
padding changes nothing, and a model's KL to itself is zero."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from minirlvr.model import ModelConfig, Transformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from probes import kl_at  # noqa: E402


def tiny(seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return Transformer(cfg).eval()


def test_kl_at_matches_naive_per_sequence_and_is_zero_against_itself():
    pi, ref = tiny(0), tiny(1)
    seqs = [[1, 5, 7, 9, 2], [3, 4], [8, 8, 8, 1, 2, 3, 4]]  # different lengths: right padding in one batch
    positions = [[0, 2, 4], [1], [3, 6]]
    got = kl_at(pi, ref, seqs, positions, batch=2)
    for s, pos, g in zip(seqs, positions, got):
        with torch.no_grad():
            lp = F.log_softmax(pi(torch.tensor([s]))[0].double(), -1)
            lr = F.log_softmax(ref(torch.tensor([s]))[0].double(), -1)
        want = [float((lp[t].exp() * (lp[t] - lr[t])).sum()) for t in pos]
        assert torch.allclose(torch.tensor(g, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), atol=1e-5)
        assert all(x > 0 for x in g)
    assert all(abs(x) < 1e-6 for row in kl_at(pi, pi, seqs, positions) for x in row)
