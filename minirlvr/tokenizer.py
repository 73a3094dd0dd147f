"""Tokenizer: Hugging Face `tokenizer.json` through the `tokenizers` library, chat templates, and
byte-level BPE training for MiniWorld.

    tok = Tokenizer.from_pretrained(dir)   # tokenizer.json + tokenizer_config.json (+ chat_template.jinja)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids, mask = tok.encode_chat(messages)  # mask = 1 on assistant tokens, for SFT

Chat templates are rendered the way transformers renders them (the checkpoint's own Jinja template in
a sandbox with trim_blocks/lstrip_blocks, then encoded without adding special tokens), so the ids are
exactly what `AutoTokenizer.apply_chat_template` returns. jinja2 is installed with torch (a requirement
of it), so every template renders through it.
"""

import json
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

from minirlvr.checkpoint import read_json

# MiniWorld's chat format: plain ChatML, no default system prompt.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # first one is eos and pad
THINK_TOKENS = ["<think>", "</think>"]  # ordinary text that must stay one id each

# Tokens that end a turn or a document in the families we load; a sampler stops on any of them.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")

# Pre-tokenizer split in the style of Qwen2/GPT-4: letters, single digits (arithmetic wants digits as
# separate tokens), punctuation runs, newlines and spaces. Each piece is then byte-level encoded.
_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the named special tokens and chat template of a checkpoint."""

    def __init__(self, backend: _Backend, special_tokens: dict[str, str] | None = None,
                 chat_template: str | None = None, source: str = "<memory>"):
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self.source = source  # names the files in error messages
        for key, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise ValueError(f"{source}: {key} {token!r} is not in the vocabulary")

    # ----- loading and saving -----

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} does not exist")
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{path}: missing tokenizer.json (expected {tok_file})")
        try:
            backend = _Backend.from_file(str(tok_file))
        except Exception as e:  # the Rust error says what is wrong but not which file
            raise ValueError(f"{tok_file}: cannot parse tokenizer: {e}") from e
        # special_tokens_map.json is the legacy home of special tokens; tokenizer_config.json wins.
        special = _read_special_tokens(path / "special_tokens_map.json")
        special.update(_read_special_tokens(path / "tokenizer_config.json"))
        return cls(backend, special, _read_chat_template(path), source=str(path))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and chat_template.jinja, loadable by transformers."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  **self.special_tokens}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template  # older transformers read it only from here
        _write_atomic(path / "tokenizer.json", self.backend.to_str(pretty=True))
        _write_atomic(path / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        # transformers prefers chat_template.jinja over the config, so a stale one must not survive.
        jinja_file = path / "chat_template.jinja"
        if self.chat_template is not None:
            _write_atomic(jinja_file, self.chat_template)
        elif jinja_file.exists():
            jinja_file.unlink()

    # ----- plain text -----

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (a checkpoint's embedding may be padded beyond it)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _special_id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self.backend.token_to_id(token)

    eos_token = property(lambda self: self.special_tokens.get("eos_token"))
    bos_token = property(lambda self: self.special_tokens.get("bos_token"))
    pad_token = property(lambda self: self.special_tokens.get("pad_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end an assistant turn or a document: eos plus the end-of-turn tokens in the vocab."""
        ids = {self.backend.token_to_id(t) for t in _STOP_TOKENS} | {self.eos_token_id}
        return sorted(i for i in ids if i is not None)

    # ----- chat -----

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as text, exactly as transformers' chat template renders it."""
        if self.chat_template is None:
            raise ValueError(f"{self.source}: tokenizer has no chat_template")
        if not messages:
            raise ValueError("cannot apply a chat template to an empty conversation")
        # transformers drops None-valued keys (e.g. content=None from OpenAI-style messages).
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        # The template sees the named special tokens (bos_token, eos_token, ...) as variables.
        return _compile_jinja(self.chat_template).render(messages=messages, tools=None, documents=None,
                                                          add_generation_prompt=add_generation_prompt,
                                                          **self.special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = True) -> list[int] | str:
        text = self.render_chat(messages, add_generation_prompt)
        return self.encode(text) if tokenize else text

    def encode_chat(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Ids of a whole conversation and a 0/1 mask marking each assistant turn's tokens: its content
        and the token that closes it (e.g. <|im_end|>, so that SFT learns to stop), not its header.

        Assistant turn i spans from the end of render(messages[:i], generation prompt) to the end of
        render(messages[:i+1]); both are found as the longest common prefix with the full ids, so a
        token that straddles header and content counts as assistant. The span is cut after its last
        stop token (ChatML puts a newline after <|im_end|> that generation never produces).

        An assistant message may carry "loss_start": k, an offset into its content: the first k characters
        are then context, not trained on (e.g. an answer's opening line, to test whether fine-tuning moves
        a model through its first tokens). A token straddling offset k is trained on.
        """
        ids = self.apply_chat_template(messages, add_generation_prompt=False)
        mask = [0] * len(ids)
        stops = set(self.stop_ids)
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            if i == 0:
                raise ValueError("encode_chat: the conversation cannot start with an assistant message")
            start = _common_prefix(ids, self.apply_chat_template(messages[:i], add_generation_prompt=True))
            end = _common_prefix(ids, self.apply_chat_template(messages[: i + 1], add_generation_prompt=False))
            if end <= start:
                raise ValueError(f"encode_chat: assistant message {i} renders to no tokens of its own")
            last_stop = max((j for j in range(start, end) if ids[j] in stops), default=end - 1)
            k = message.get("loss_start", 0)
            if k:
                prefix = self.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
                start = max(start, _common_prefix(ids, self.encode(prefix + message["content"][:k])))
            for j in range(start, last_stop + 1):
                mask[j] = 1
        return ids, mask

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, special={self.special_tokens})"


# ----- BPE training for MiniWorld -----

def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS,
              chat_template: str | None = CHATML, added_tokens: list[str] = THINK_TOKENS,
              min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer (no unknown tokens: every byte has an id).

    special_tokens get the first ids and are skipped by decode(skip_special_tokens=True); the first is
    eos and pad. added_tokens (default <think>, </think>) are single ids that decode as text.
    The vocabulary has at most vocab_size ids (fewer if the corpus has fewer useful merges).
    """
    n_fixed = len(special_tokens) + len(added_tokens)
    if vocab_size < 256 + n_fixed:
        raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {n_fixed} special/added tokens")
    if not special_tokens:
        raise ValueError("train_bpe needs at least one special token (the first is eos)")
    backend = _Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # keeps char offsets exact
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(added_tokens), min_frequency=min_frequency, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    eos = special_tokens[0]
    return Tokenizer(backend, {"eos_token": eos, "pad_token": eos}, chat_template, source="<train_bpe>")


# ----- reading tokenizer_config.json (read_json: a CheckpointError, a ValueError, names the file) -----

_NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_special_tokens(file: Path) -> dict[str, str | None]:
    """The named special tokens (a string, null, or a serialized AddedToken {"content": ...}), plus
    model-specific `*_token` strings such as image_token; like transformers, the template sees them all.
    Other `*_token` fields (e.g. "add_bos_token": true) are settings, not tokens, and are ignored."""
    if not file.is_file():
        return {}
    special = {}
    for key, value in read_json(file).items():
        if not key.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if value is None or isinstance(value, str):
            special[key] = value
        elif key in _NAMED_TOKENS:
            raise ValueError(f"{file}: field {key!r} must be a string, null or an object with a string "
                             f"'content', got {type(value).__name__}")
    return special


def _read_chat_template(path: Path) -> str | None:
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():  # transformers gives the separate file priority over the config entry
        return jinja_file.read_text(encoding="utf-8")
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    template = read_json(config_file).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
        if template is None:
            raise ValueError(f"{config_file}: field 'chat_template' lists no template named 'default'")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{config_file}: field 'chat_template' must be a string, got {type(template).__name__}")
    return template


def _write_atomic(file: Path, text: str) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ----- rendering through jinja2, as transformers does -----

@lru_cache(maxsize=16)
def _compile_jinja(template: str):
    """Compile in an environment that matches transformers' (sandboxed, trim_blocks, lstrip_blocks,
    loop controls, tojson without HTML escaping, raise_exception, strftime_now, {% generation %})."""
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    class GenerationTag(jinja2.ext.Extension):
        # TRL-style templates mark assistant text with {% generation %}...{% endgeneration %};
        # transformers uses it only for masks, so here it renders its body unchanged.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
