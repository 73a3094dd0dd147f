"""The sampler against naive references (cache-free argmax loop, full-forward log-probs, per-row generation),
its sampling rules against transformers' warpers, and its greedy output against transformers' generate."""

import math
import os

import pytest
import torch

from minirlvr import Transformer, generate
from minirlvr.model import ModelConfig
from minirlvr import sampler
from minirlvr.sampler import filter_logits, sample

V = 97


def tiny(kind: str = "llama", seed: int = 0, **kw) -> Transformer:
    base = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, model_type=kind, initializer_range=0.1)
    base.update(kw)
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**base)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that they are exercised
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


MODELS = {
    "llama_gqa": dict(kind="llama"),
    "qwen2_mqa_untied": dict(kind="qwen2", num_key_value_heads=1, tie_word_embeddings=False),
    "llama_mha_bias_headdim": dict(kind="llama", num_key_value_heads=4, attention_bias=True, head_dim=24,
                                   rope_theta=500000.0),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine a second thread makes them much slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return tiny(**MODELS[request.param])


def ragged_prompts(seed: int, lengths=(5, 1, 9, 3)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def argmax_loop(model, prompt, n):
    """The textbook greedy loop: a full forward pass over everything so far, for every new token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def full_forward_logprobs(model, prompt, tokens, temperature):
    """log softmax(logits / T) of each generated token, from one forward pass over prompt + tokens (no cache)."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    logits = model(ids)[0, len(prompt) - 1:-1].double()
    return (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


class Calls:
    """Records the input shape [B, T] of every model forward the sampler runs: the prefill, then the decode steps."""

    def __init__(self, monkeypatch):
        self.shapes = []
        forward = Transformer.forward

        def counted(model, ids, *args, **kw):
            self.shapes.append(tuple(ids.shape))
            return forward(model, ids, *args, **kw)
        monkeypatch.setattr(Transformer, "forward", counted)

    @property
    def prefills(self):
        return self.shapes[:1]

    @property
    def steps(self):
        assert all(T == 1 for _, T in self.shapes[1:])
        return [B for B, _ in self.shapes[1:]]


# ----------------------------------------------------------------------------------------- greedy

@pytest.mark.parametrize("lengths", [(5, 1, 9, 3), (4,), (2, 2), (1, 7)])
def test_greedy_equals_cache_free_argmax_loop(model, lengths):
    prompts = ragged_prompts(sum(lengths), lengths)
    out = generate(model, prompts, max_new_tokens=12)
    for p, toks, lps in zip(prompts, out.tokens, out.logprobs):
        assert toks == argmax_loop(model, p, 12)
        # greedy log-probs are under the full, unscaled softmax
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), full_forward_logprobs(model, p, toks, 1.0),
                                   atol=1e-5, rtol=0)


def test_ragged_batch_equals_each_row_alone(model):
    prompts = ragged_prompts(1, (6, 2, 11, 1, 4))
    batch = generate(model, prompts, max_new_tokens=10)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=10)
        assert batch.tokens[i] == alone.tokens[0]
        torch.testing.assert_close(batch.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_full_forward_recomputation(model, temperature):
    prompts = ragged_prompts(2, (3, 8, 1))
    out = generate(model, prompts, max_new_tokens=16, temperature=temperature, seed=3, num_samples=2)
    for r, (toks, lps) in enumerate(zip(out.tokens, out.logprobs)):
        ref = full_forward_logprobs(model, prompts[out.prompt_index[r]], toks, temperature)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), ref, atol=1e-5, rtol=0)
    # the padded tensors are the same numbers
    for r in range(len(out.tokens)):
        n = len(out.tokens[r])
        assert out.mask[r].sum() == n and out.mask[r, :n].all()
        assert out.tokens_tensor[r, :n].tolist() == out.tokens[r]
        assert out.logprobs_tensor[r, :n].tolist() == pytest.approx(out.logprobs[r], abs=0)


def test_same_seed_same_output_and_rows_differ(model):
    prompts = ragged_prompts(4, (3, 5))
    rng = torch.get_rng_state()
    a = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=11, num_samples=4)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG must not be used"
    b = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=11, num_samples=4)
    c = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=12, num_samples=4)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens
    assert len({tuple(t) for t in a.tokens}) == len(a.tokens), "samples of one prompt should differ"
    assert a.prompt_index == [0, 0, 0, 0, 1, 1, 1, 1]


def test_sample_frequencies_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]]).expand(20000, 5)
    g = torch.Generator().manual_seed(0)
    tokens, lps = sample(logits, 0.8, 0, 1.0, g)
    probs = (logits[0] / 0.8).softmax(-1)
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert (freq - probs).abs().max() < 0.015  # 4+ binomial standard deviations
    torch.testing.assert_close(lps, probs.log()[tokens], atol=1e-6, rtol=0)


def naive_allowed(logits: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """The allowed set of one row [V], by sorting in Python."""
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    if top_k:
        kth = float(logits[order[top_k - 1]])
        order = [i for i in order if float(logits[i]) >= kth]
    p = torch.softmax(logits[order].double(), -1).tolist()
    keep, mass = [], 0.0
    for i, pi in zip(order, p):
        if mass >= top_p:
            break
        keep.append(i)
        mass += pi
    return set(keep)


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.6), (20, 0.8), (1, 1.0)])
def test_filter_logits_matches_naive_and_transformers(top_k, top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(top_k)) * 2
    out = filter_logits(logits, top_k, top_p)
    for row, orow in zip(logits, out):
        assert set(torch.isfinite(orow).nonzero().squeeze(-1).tolist()) == naive_allowed(row, top_k, top_p)
    transformers = pytest.importorskip("transformers")
    ref = logits.clone()
    if top_k:
        ref = transformers.TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = transformers.TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(torch.isfinite(ref), torch.isfinite(out))


@pytest.mark.parametrize("top_k, top_p", [(4, 1.0), (0, 0.5), (8, 0.7)])
def test_top_k_top_p_samples_lie_in_the_allowed_set_with_renormalised_logprobs(model, top_k, top_p):
    prompts = ragged_prompts(5, (4, 2))
    T = 0.9
    out = generate(model, prompts, max_new_tokens=12, temperature=T, top_k=top_k, top_p=top_p, seed=1, num_samples=3)
    for r, (toks, lps) in enumerate(zip(out.tokens, out.logprobs)):
        ids = torch.tensor([prompts[out.prompt_index[r]] + toks])
        with torch.no_grad():
            logits = model(ids)[0, -len(toks) - 1:-1] / T
        for t, (tok, lp) in enumerate(zip(toks, lps)):
            allowed = naive_allowed(logits[t], top_k, top_p)
            assert tok in allowed
            p = logits[t].double().softmax(-1)
            assert lp == pytest.approx(math.log(p[tok] / p[list(allowed)].sum()), abs=1e-5)


# ----------------------------------------------------------------------------------------- stopping, groups

def cut(row: list[int], stop, n: int | None = None) -> list[int]:
    """A free-running row as it should come out with stop ids and a token limit: up to and including a stop."""
    row = row[:n]
    first = next((t for t, x in enumerate(row) if x in stop), None)
    return row if first is None else row[:first + 1]


def test_stop_tokens_and_max_new_tokens(model, monkeypatch):
    prompts = ragged_prompts(6, (3, 6, 2))
    free = generate(model, prompts, max_new_tokens=10).tokens
    stop = {free[0][2], free[1][5]}  # rows end at their first stop token, wherever it comes from
    calls = Calls(monkeypatch)
    out = generate(model, prompts + [prompts[2]], max_new_tokens=10, stop_ids=stop)
    expected = [cut(row, stop) for row in free + [free[2]]]
    assert out.tokens == expected and len(expected[0]) <= 3
    assert out.mask.sum(1).tolist() == [len(e) for e in expected]
    assert out.tokens_tensor.shape[1] == max(len(e) for e in expected)
    # the loop exits once every row is done: one prefill, then one decode step per token after the first
    assert calls.prefills == [(4, 6)] and len(calls.steps) == max(len(e) for e in expected) - 1
    for n in (1, 4):
        assert generate(model, prompts, max_new_tokens=n, stop_ids=stop).tokens == [cut(f, stop, n) for f in free]
    assert generate(model, prompts, max_new_tokens=0).tokens == [[], [], []]


def test_all_rows_stopping_at_once_exits_early(model, monkeypatch):
    prompts = ragged_prompts(7, (3, 4))
    free = generate(model, prompts, max_new_tokens=6).tokens
    calls = Calls(monkeypatch)
    out = generate(model, prompts, max_new_tokens=50, stop_ids=[free[0][0], free[1][0]])
    assert out.tokens == [free[0][:1], free[1][:1]] and len(calls.prefills) == 1 and calls.steps == []


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_groups_prefill_once_and_equal_repeated_prompts(model, temperature, monkeypatch):
    prompts = ragged_prompts(8, (5, 2, 7))
    G = 3
    calls = Calls(monkeypatch)
    grouped = generate(model, prompts, max_new_tokens=9, temperature=temperature, seed=4, num_samples=G)
    assert calls.prefills == [(3, 7)], "each distinct prompt is prefilled once"
    assert calls.steps == [3 * G] * 8
    flat = generate(model, [p for p in prompts for _ in range(G)], max_new_tokens=9, temperature=temperature, seed=4)
    assert grouped.tokens == flat.tokens
    torch.testing.assert_close(grouped.logprobs_tensor, flat.logprobs_tensor, atol=1e-5, rtol=0)
    assert grouped.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_finished_rows_are_dropped_and_the_rest_is_unchanged(model, monkeypatch):
    prompts = ragged_prompts(9, (3, 3, 5, 2, 4, 6))
    free = generate(model, prompts, max_new_tokens=12).tokens
    stop = {free[0][1], free[1][1], free[2][2]}  # half the rows (or more) stop within three tokens
    expected = [cut(row, stop) for row in free]
    calls = Calls(monkeypatch)
    out = generate(model, prompts, max_new_tokens=12, stop_ids=stop)
    assert out.tokens == expected
    n_live = [sum(len(e) > t for e in expected) for t in range(12)]  # rows still going after token t
    assert 0 < n_live[2] <= 3, "test data: half the rows should be done after three tokens"
    # dropped once half are done: later decode steps run on the live rows only
    assert calls.steps[2:] == [n_live[2]] * (len(calls.steps) - 2)


def test_outputs_are_ordinary_tensors_and_bad_input_fails(model):
    out = generate(model, [[1, 2]], max_new_tokens=3)
    w = torch.ones(3, requires_grad=True)
    (w * out.mask[0] * out.logprobs_tensor[0]).sum().backward()  # not inference tensors
    for kw, msg in [(dict(prompts=[]), "non-empty"), (dict(prompts=[[1], []]), r"prompts\[1\] is empty"),
                    (dict(prompts=[[1, V]]), r"prompts\[0\] has a token id outside"),
                    (dict(top_p=0.0), "top_p"), (dict(temperature=-1.0), "temperature"),
                    (dict(num_samples=0), "num_samples"), (dict(max_new_tokens=-1), "max_new_tokens")]:
        args = dict(prompts=[[1, 2]])
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            generate(model, **args)


# ----------------------------------------------------------------------------------------- other paths

def test_without_onednn_the_plain_path_is_also_exact(model, monkeypatch):
    """The plain nn.Linear path, used where oneDNN packing is unavailable (e.g. on GPU)."""
    monkeypatch.setattr(sampler, "USE_ONEDNN", False)
    prompts = ragged_prompts(12, (4, 9, 1))
    out = generate(model, prompts, max_new_tokens=8)
    assert out.tokens == [argmax_loop(model, p, 8) for p in prompts]
    out = generate(model, prompts, max_new_tokens=8, temperature=0.8, seed=2)
    for p, toks, lps in zip(prompts, out.tokens, out.logprobs):
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), full_forward_logprobs(model, p, toks, 0.8),
                                   atol=1e-5, rtol=0)


def test_fast_linears_swap_how_linears_compute_and_restore_them(model):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        before = model(ids)
        with sampler.fast_linears(model, batch=4):
            packed = model(ids)
            swapped = [m for m in model.modules() if {"forward", "qkv", "gate_up"} & set(vars(m))]
        after = model(ids)
    assert not [m for m in model.modules() if {"forward", "qkv", "gate_up"} & set(vars(m))], "all restored"
    assert torch.equal(before, after)
    torch.testing.assert_close(packed, before, atol=1e-5, rtol=0)
    if sampler.USE_ONEDNN:  # per layer: attention and MLP (fused), o_proj and down_proj; and lm_head
        assert len(swapped) == 4 * model.config.num_hidden_layers + 1


def test_checking_for_stopped_rows_less_often_changes_nothing(model, monkeypatch):
    """On a GPU the loop looks at which rows stopped (a host sync) only every few steps; the same greedy output
    (sampled rows would differ: the random stream is drawn for the live rows, see the module docstring)."""
    prompts = ragged_prompts(15, (3, 3, 5, 2))
    free = generate(model, prompts, max_new_tokens=12).tokens
    stop = {free[0][1], free[1][2], free[2][4]}
    every_step = generate(model, prompts, max_new_tokens=12, stop_ids=stop)
    monkeypatch.setattr(sampler, "CHECK_EVERY", {"cpu": 5})
    calls = Calls(monkeypatch)
    sparse = generate(model, prompts, max_new_tokens=12, stop_ids=stop)
    assert sparse.tokens == every_step.tokens and sparse.logprobs == every_step.logprobs
    assert len(calls.steps) == 11 or calls.steps[-1] < len(prompts)  # ran on, or dropped rows at a check


def test_bfloat16_model(monkeypatch):
    m = tiny("qwen2").to(torch.bfloat16)
    prompts = ragged_prompts(13, (3, 6))
    for onednn in (True, False):  # where oneDNN cannot pack bf16 (no AVX-512), fast_linears leaves nn.Linear
        monkeypatch.setattr(sampler, "USE_ONEDNN", onednn)
        out = generate(m, prompts, max_new_tokens=8, temperature=1.0, seed=0)
        for p, toks, lps in zip(prompts, out.tokens, out.logprobs):  # bf16 rounding differs between the paths
            torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), full_forward_logprobs(m, p, toks, 1.0),
                                       atol=0.05, rtol=0)


def test_build_batch_lays_out_prompts_and_responses():
    b = sampler.build_batch([[5, 6, 7], [8]], [[1], [2, 3]], pad_id=9)
    assert b.prompt_len == 3 and b.ids.tolist() == [[5, 6, 7, 1, 9], [9, 9, 8, 2, 3]]
    assert b.key_mask.tolist() == [[True] * 4 + [False], [False, False, True, True, True]]
    assert b.positions[1, 2:].tolist() == [0, 1, 2] and b.positions[0, :4].tolist() == [0, 1, 2, 3]
    assert b.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]] and b.responses.tolist() == [[1, 9], [2, 3]]
    assert sampler.build_batch([[1, 2], [3]]).ids.shape == (2, 2)  # prompts only: no response column


# ----------------------------------------------------------------------------------------- vs transformers

def hf_greedy(theirs, prompt, n):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_equals_transformers_generate(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    cls = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
    cfg = cls(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1, tie_word_embeddings=True)
    torch.manual_seed(1)
    theirs = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    prompts = ragged_prompts(10, (6, 1, 12))
    out = generate(ours, prompts, max_new_tokens=16)
    for p, toks in zip(prompts, out.tokens):
        assert toks == hf_greedy(theirs, p, 16)


SMOL = os.environ.get("MINIRLVR_SMOLLM2")


@pytest.mark.skipif(not SMOL, reason="set MINIRLVR_SMOLLM2 to an HF folder of SmolLM2-135M-Instruct (README: Real models)")
def test_smollm2_greedy_equals_transformers_generate():
    transformers = pytest.importorskip("transformers")
    ours = Transformer.from_pretrained(SMOL).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    from minirlvr import Tokenizer
    tok = Tokenizer.from_pretrained(SMOL)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in ("What is 12 + 30?", "Name a colour.")]
    out = generate(ours, prompts, max_new_tokens=24)
    for p, toks in zip(prompts, out.tokens):
        assert toks == hf_greedy(theirs, p, 24)
    out = generate(ours, prompts, max_new_tokens=12, temperature=0.7, seed=0, num_samples=2)
    for r, (toks, lps) in enumerate(zip(out.tokens, out.logprobs)):
        ref = full_forward_logprobs(ours, prompts[out.prompt_index[r]], toks, 0.7)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), ref, atol=1e-4, rtol=0)
