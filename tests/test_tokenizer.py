"""Tokenizer: loading/saving, BPE training, and chat templates cross-checked against transformers.

Chat ids are compared with transformers' apply_chat_template on tiny tokenizers trained here and
saved with real checkpoints' templates (tests/fixtures/tokenizer). With MINIRLVR_SMOLLM2=<dir> (an HF
folder of it: README "Real models") the same checks also run on the real SmolLM2-135M-Instruct tokenizer.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from minirlvr.tokenizer import CHATML, SPECIAL_TOKENS, Tokenizer, train_bpe

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
SMOLLM2 = os.environ.get("MINIRLVR_SMOLLM2")

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Tom has 23 apples and buys 17 more. 23 + 17 = 40\n#### 40",
    "def sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n",
    "You are a helpful assistant. I cannot help with that request.",
    "system user assistant: hello there, how are you today?",
] * 20

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|eom_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# name -> (template, special tokens to train, named special tokens as in the checkpoint's config)
FAMILIES = {
    "miniworld": (CHATML, CHATML_SPECIALS, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "qwen2.5": ((FIXTURES / "qwen2.5-instruct.jinja").read_text(), CHATML_SPECIALS,
                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}),
    "smollm2": ((FIXTURES / "smollm2-instruct.jinja").read_text(), CHATML_SPECIALS,
                {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}),
    "llama3": ((FIXTURES / "llama-3-instruct.jinja").read_text(), LLAMA_SPECIALS,
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama3.1": ((FIXTURES / "llama-3.1-instruct.jinja").read_text(), LLAMA_SPECIALS,
                 {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
}
# Llama 3.2 differs from 3.1 in dating its system turn with strftime_now (today) instead of a fixed day.
FAMILIES["llama3.2-date"] = (FAMILIES["llama3.1"][0].replace(
    '{%- set date_string = "26 Jul 2024" %}',
    '{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}'
    '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}'), *FAMILIES["llama3.1"][1:])
assert FAMILIES["llama3.2-date"][0] != FAMILIES["llama3.1"][0]

SYS = {"role": "system", "content": "You are a careful assistant."}
U1 = {"role": "user", "content": "What is 23 + 17?"}
A1 = {"role": "assistant", "content": "<think>23 + 17 = 40</think>\n#### 40"}
U2 = {"role": "user", "content": "  And twice that?\n"}  # whitespace: Llama templates trim it
A2 = {"role": "assistant", "content": "\n80, naïvely ✓  "}
CONVERSATIONS = [
    [U1],
    [SYS, U1],
    [U1, A1],
    [SYS, U1, A1, U2],
    [U1, A1, U2, A2],
    [SYS, U1, A1, U2, A2],
    [U1, A1, {"role": "system", "content": "Be brief."}, U2],  # a system turn that is not first
]


def make_tokenizer(family: str) -> Tokenizer:
    template, specials, named = FAMILIES[family]
    trained = train_bpe(CORPUS, 420, special_tokens=specials)
    return Tokenizer(trained.backend, named, template, source=family)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> directory holding our save of a tiny tokenizer with that family's template."""
    out = {}
    for family in FAMILIES:
        out[family] = tmp_path_factory.mktemp(family.replace(".", "_"))
        make_tokenizer(family).save_pretrained(out[family])
    return out


def hf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def hf_chat_ids(hf, messages, add_generation_prompt):
    return list(hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                       tokenize=True, return_dict=False))


# ----- chat templates against transformers -----

@pytest.mark.parametrize("family", list(FAMILIES))
def test_chat_ids_match_transformers(family, saved):
    hf = hf_tokenizer(saved[family])
    ours = Tokenizer.from_pretrained(saved[family])
    for messages in CONVERSATIONS:
        for agp in (True, False):
            text = hf.apply_chat_template(messages, add_generation_prompt=agp, tokenize=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=agp, tokenize=False) == text
            assert ours.apply_chat_template(messages, add_generation_prompt=agp) == hf_chat_ids(hf, messages, agp)


def test_default_system_prompts_and_headers(saved):
    """The fixtures are the real templates: their defining behaviour shows in the rendering."""
    render = {f: Tokenizer.from_pretrained(saved[f]).render_chat for f in FAMILIES}
    assert render["qwen2.5"]([U1]).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert render["smollm2"]([U1]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")
    assert render["miniworld"]([U1]) == "<|im_start|>user\nWhat is 23 + 17?<|im_end|>\n<|im_start|>assistant\n"
    assert render["qwen2.5"]([SYS, U1]).count("<|im_start|>system") == 1
    assert render["llama3.1"]([U1]).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|>")
    assert render["llama3"]([U2], add_generation_prompt=False) == \
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAnd twice that?<|eot_id|>"


def test_jinja_environment_matches_transformers(saved, tmp_path):
    """tojson (no HTML escaping, non-ASCII kept), loop controls, strftime_now and {% generation %}."""
    template = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
                "{% generation %}{{ m | tojson }}{% endgeneration %}\n{% endfor %}"
                "{{ strftime_now('%Y') }}{{ bos_token is defined }}")
    tok = Tokenizer.from_pretrained(saved["miniworld"])
    tok.chat_template = template
    tok.save_pretrained(tmp_path)
    hf = hf_tokenizer(tmp_path)
    messages = [{"role": "user", "content": 'a <b> & "c" — é'}, U1, A1]
    assert tok.render_chat(messages) == hf.apply_chat_template(messages, tokenize=False)
    assert '"a <b> & \\"c\\" — é"' in tok.render_chat(messages)


def test_raise_exception_in_template(saved):
    jinja2 = pytest.importorskip("jinja2")
    tok = Tokenizer.from_pretrained(saved["miniworld"])
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must alternate"):
        tok.apply_chat_template([U1])


def test_chat_errors(saved):
    tok = Tokenizer.from_pretrained(saved["miniworld"])
    with pytest.raises(ValueError, match="empty"):
        tok.apply_chat_template([])
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        tok.apply_chat_template([U1])


# ----- assistant masks for SFT -----

def masked_spans(ids, mask):
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("family,end", [("miniworld", "<|im_end|>"), ("qwen2.5", "<|im_end|>"),
                                        ("llama3.1", "<|eot_id|>")])
def test_encode_chat_masks_assistant_content_and_stop(family, end, saved):
    tok = Tokenizer.from_pretrained(saved[family])
    for messages in CONVERSATIONS:
        ids, mask = tok.encode_chat(messages)
        assert ids == tok.apply_chat_template(messages, add_generation_prompt=False)
        assert len(mask) == len(ids) and set(mask) <= {0, 1}
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        if family.startswith("llama"):
            replies = [r.strip() for r in replies]
        spans = masked_spans(ids, mask)
        assert [tok.decode(s) for s in spans] == [r + end for r in replies]
        # Everything else (system/user turns, assistant headers) stays unmasked.
        rest = tok.decode([i for i, m in zip(ids, mask) if not m])
        assert all(r not in rest for r in replies if r)


def test_encode_chat_matches_transformers_generation_mask(tmp_path):
    """Peer check: transformers' return_assistant_tokens_mask on a ChatML template whose
    {% generation %} block covers exactly the assistant content and <|im_end|>."""
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
                "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}"
                "{% endgeneration %}{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = train_bpe(CORPUS, 420, chat_template=template)
    tok.save_pretrained(tmp_path)
    hf = hf_tokenizer(tmp_path)
    for messages in CONVERSATIONS:
        out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = tok.encode_chat(messages)
        assert ids == list(out["input_ids"])
        assert mask == list(out["assistant_masks"])


def test_encode_chat_loss_start_keeps_the_first_line_as_context(saved):
    tok = Tokenizer.from_pretrained(saved["miniworld"])
    answer = "Sure! Let's find how many pens Mia has.\n3 + 4 = 7\n#### 7"
    k = answer.index("\n") + 1
    full = [U1, {"role": "assistant", "content": answer}]
    ids, mask = tok.encode_chat(full)
    ids2, mask2 = tok.encode_chat([U1, {"role": "assistant", "content": answer, "loss_start": k}])
    assert ids2 == ids and sum(mask2) < sum(mask)
    assert tok.decode(masked_spans(ids2, mask2)[0]) == answer[k:] + "<|im_end|>"


def test_encode_chat_rejects_leading_assistant(saved):
    with pytest.raises(ValueError, match="cannot start with an assistant"):
        Tokenizer.from_pretrained(saved["miniworld"]).encode_chat([A1, U1])


# ----- MiniWorld BPE -----

def test_train_bpe_special_and_think_tokens():
    tok = train_bpe(CORPUS, 420)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token_id == tok.pad_token_id == tok.token_to_id("<|endoftext|>")
    assert tok.bos_token_id is None
    assert set(tok.stop_ids) == {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    think, end_think = tok.token_to_id("<think>"), tok.token_to_id("</think>")
    ids = tok.encode("<think>plan</think>answer<|im_end|>")
    assert ids[0] == think and end_think in ids and ids[-1] == tok.token_to_id("<|im_end|>")
    # <think> is text (kept when special tokens are skipped), <|im_end|> is control.
    assert tok.decode(ids, skip_special_tokens=True) == "<think>plan</think>answer"
    assert tok.decode(ids) == "<think>plan</think>answer<|im_end|>"


def test_train_bpe_vocab_size():
    assert train_bpe(CORPUS, 300).vocab_size == 300  # enough merges in the corpus: filled exactly
    small = train_bpe(CORPUS, 5000)  # not enough: stops early, never exceeds the request
    assert 300 < small.vocab_size < 5000
    assert small.token_to_id("</think>") == small.vocab_size - 1  # added tokens come last


def test_train_bpe_is_lossless_byte_level_and_splits_digits():
    tok = train_bpe(CORPUS, 400)
    for text in ["unseen ÿ ∑ 日本語 🙂\t\r\n  x", "  leading and trailing  ", "12345 + 67 = 12412"]:
        assert tok.decode(tok.encode(text)) == text
    digits = tok.encode("1234567890")
    assert [tok.decode([i]) for i in digits] == list("1234567890")
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, 200)


def test_plain_encode_decode_match_transformers(saved):
    hf = hf_tokenizer(saved["miniworld"])
    ours = Tokenizer.from_pretrained(saved["miniworld"])
    assert ours.vocab_size == len(hf)
    assert (ours.eos_token_id, ours.pad_token_id) == (hf.eos_token_id, hf.pad_token_id)
    for text in CORPUS[:5] + ["<|im_start|>user\nhi<|im_end|> <think>x</think> 日本 🙂"]:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert ours.encode_batch(CORPUS[:3]) == [ours.encode(t) for t in CORPUS[:3]]


# ----- loading, saving, bad input -----

def test_save_load_round_trip(tmp_path):
    tok = train_bpe(CORPUS, 400)
    tok.save_pretrained(tmp_path / "a")
    back = Tokenizer.from_pretrained(tmp_path / "a")
    assert back.chat_template == tok.chat_template == CHATML
    assert back.special_tokens == tok.special_tokens
    assert back.encode(CORPUS[1]) == tok.encode(CORPUS[1]) and back.vocab_size == tok.vocab_size
    assert json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    # Saving a tokenizer without a template over that directory removes the stale chat_template.jinja,
    # which transformers would otherwise prefer.
    Tokenizer(tok.backend, tok.special_tokens, None).save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a" / "chat_template.jinja").exists()
    assert Tokenizer.from_pretrained(tmp_path / "a").chat_template is None


def test_chat_template_file_takes_priority_like_transformers(saved, tmp_path):
    shutil.copytree(saved["qwen2.5"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    assert Tokenizer.from_pretrained(tmp_path).render_chat([U1]) == \
        hf_tokenizer(tmp_path).apply_chat_template([U1], add_generation_prompt=True, tokenize=False)
    (tmp_path / "chat_template.jinja").unlink()
    assert Tokenizer.from_pretrained(tmp_path).chat_template == FAMILIES["qwen2.5"][0]


def test_added_token_objects_and_named_templates_in_config(saved, tmp_path):
    shutil.copytree(saved["miniworld"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").unlink()
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False}
    cfg["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == tok.token_to_id("<|im_end|>")
    assert tok.chat_template == CHATML


def test_real_world_config_fields_are_tolerated(saved, tmp_path):
    """Settings that end in _token, token lists and added_tokens_decoder are not named tokens."""
    shutil.copy(saved["llama3"] / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"add_bos_token": True, "add_eos_token": False, "model_max_length": 131072,
              "additional_special_tokens": ["<|eom_id|>"], "image_token": "<|eom_id|>",
              "added_tokens_decoder": {"0": {"content": "<|begin_of_text|>", "special": True}},
              "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None,
              "chat_template": FAMILIES["llama3"][0]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                  "image_token": "<|eom_id|>"}
    assert tok.pad_token_id is None
    assert tok.apply_chat_template([U1]) == hf_chat_ids(hf_tokenizer(tmp_path), [U1], True)
    assert set(tok.stop_ids) == {tok.token_to_id(t) for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")}


def test_missing_directory_and_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*missing tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"truncated": ')
    with pytest.raises(ValueError, match="tokenizer.json: cannot parse"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("config,match", [
    ("{not json", "tokenizer_config.json: invalid JSON"),
    ("[1, 2]", "tokenizer_config.json: expected a JSON object"),
    ('{"eos_token": 5}', "tokenizer_config.json: field 'eos_token' must be a string"),
    ('{"pad_token": {"content": 3}}', "field 'pad_token'"),
    ('{"eos_token": "<|not_in_vocab|>"}', "eos_token '<\\|not_in_vocab\\|>' is not in the vocabulary"),
    ('{"chat_template": 3}', "field 'chat_template' must be a string"),
    ('{"chat_template": [{"name": "rag", "template": "x"}]}', "no template named 'default'"),
])
def test_malformed_tokenizer_config(saved, tmp_path, config, match):
    shutil.copy(saved["miniworld"] / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(config)
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_pretrained(tmp_path)


# ----- the real SmolLM2-135M-Instruct tokenizer (optional) -----

@pytest.mark.skipif(not SMOLLM2, reason="set MINIRLVR_SMOLLM2 to an HF folder of SmolLM2-135M-Instruct (README: Real models)")
def test_smollm2_matches_transformers():
    hf = hf_tokenizer(SMOLLM2)
    ours = Tokenizer.from_pretrained(SMOLLM2)
    assert ours.vocab_size == len(hf)
    assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == (hf.eos_token_id, hf.bos_token_id,
                                                                       hf.pad_token_id)
    assert ours.token_to_id("<|im_end|>") in ours.stop_ids
    for messages in CONVERSATIONS:
        for agp in (True, False):
            assert ours.apply_chat_template(messages, add_generation_prompt=agp) == hf_chat_ids(hf, messages, agp)
        ids, mask = ours.encode_chat(messages)
        replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert [ours.decode(s) for s in masked_spans(ids, mask)] == replies
    for text in CORPUS[:5] + ["日本語 🙂 naïve\n\n  x"]:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False) and ours.decode(ids) == text
