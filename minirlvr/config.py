"""Configs are plain dataclasses; values come from defaults, then a TOML file, then `--key value` flags.

    cfg = load_config(GRPOConfig, ["--config", "grpo.toml", "--lr", "1e-5", "--data", "a.jsonl", "my b.jsonl"])

A list flag takes every following argument up to the next `--key` and never splits one (paths may hold spaces
and commas). TOML values must already have the field's type (`group_size = "8"` is refused); command-line
strings are parsed. Every error names where the bad value came from (the TOML file or the command line) and
the key. A resumed run takes its config from the checkpoint (resume_config); flags may only repeat it, except
the RESUMABLE keys. `config_help` lists every key with its type, default and the comment beside its field.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import tomllib
import types
import typing
from pathlib import Path

from minirlvr.data import utf8_text


class ConfigError(ValueError):
    pass


def _coerce(value, tp, where: str, key: str, parse: bool):
    """`value` as the field type `tp`, or ConfigError naming the key. parse=True: `value` is a command-line
    string (or a list of them) to convert; parse=False: a TOML value, which must already have the type."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: key {key!r} expects {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None or (parse and isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for a in [a for a in typing.get_args(tp) if a is not type(None)]:
            try:
                return _coerce(value, a, where, key, parse)
            except ConfigError:
                continue
        raise bad
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if parse and isinstance(value, str):
            value = [value]                        # `--data=x`: one item, never split
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, inner, where, key, parse) for v in value]
    if parse and isinstance(value, str):
        if tp is bool and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if tp in (int, float):
            try:
                return tp(value)
            except ValueError:
                raise bad from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)                        # TOML `lr = 1` is a float field's 1.0
    if tp in (bool, int, float, str) and type(value) is tp:
        return value
    if tp not in (bool, int, float, str):
        raise ConfigError(f"{where}: key {key!r} has unsupported type {tp}")
    raise bad


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (list, tuple):
        return f"a list ({tp})"
    return {bool: "true/false", int: "int", float: "float", str: "a string"}.get(tp, str(tp))


def _fields(cls) -> dict[str, typing.Any]:
    """Field name -> type of a config class."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _default(cls, key: str):
    f = cls.__dataclass_fields__[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _apply(cfg, updates: dict, where: str, parse: bool):
    types_ = _fields(type(cfg))
    for key, value in updates.items():
        k = key.replace("-", "_")
        if k not in types_:
            close = difflib.get_close_matches(k, list(types_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for {type(cfg).__name__}{hint}")
        setattr(cfg, k, _coerce(value, types_[k], where, k, parse))


def parse_flags(cls, argv: list[str]) -> dict[str, str | list[str]]:
    """`--key value`, `--key=value`; a list key takes every following argument that does not start with `--`."""
    lists = {k for k, tp in _fields(cls).items() if typing.get_origin(tp) in (list, tuple)}
    out: dict[str, str | list[str]] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {a!r}")
        key, eq, val = a[2:].partition("=")
        i += 1
        if key.replace("-", "_") in lists:
            values = [val] if eq else []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            if not values:
                raise ConfigError(f"command line: key {a!r} has no value")
            out[key] = values
        elif eq:
            out[key] = val
        elif i < len(argv):
            out[key], i = argv[i], i + 1
        else:
            raise ConfigError(f"command line: key {a!r} has no value")
    return out


def read_toml(file: Path) -> dict:
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        return tomllib.loads(utf8_text(file, ConfigError))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: invalid TOML ({e})") from None


def load_config(cls, argv: list[str]):
    """Builds `cls` from defaults, then `--config FILE.toml` (if given), then `--key value` pairs in argv."""
    cfg = cls()
    flags = parse_flags(cls, argv)
    toml = {}
    if "config" in flags:
        file = Path(flags.pop("config"))
        toml = read_toml(file)
        _apply(cfg, toml, str(file), parse=False)
    _apply(cfg, flags, "command line", parse=True)
    cfg._given = {k.replace("-", "_") for k in [*flags, *toml]}
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def check(rules) -> None:
    """rules: (key, value, ok, what); the first not ok raises one line naming the key (a config's validate())."""
    for key, value, ok, what in rules:
        if not ok:
            raise ConfigError(f"config: {key!r} {what}, got {value!r}")


def config_help(cls) -> str:
    """One line per key: `--key TYPE (default ...)  the comment beside the field`."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):       # a subclass's comment wins over its base's
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s{4}(\w+)\s*:[^#]*#\s*(.+)$", line)
            if m:
                comments[m.group(1)] = m.group(2).strip()
    rows = [(f"--{k} {tp.__name__ if isinstance(tp, type) else tp}", json.dumps(_default(cls, k)), comments.get(k, ""))
            for k, tp in _fields(cls).items()]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


# What may differ between the pieces of a resumed run: where it writes, how far it goes, how it reports, and
# memory knobs that leave the update the same (up to float rounding). Any other key continues the saved config.
RESUMABLE = ("out", "resume", "overwrite", "steps", "save_every", "progress", "device", "report_to",
             "stop_if_no_signal", "log_samples", "micro_batch_size", "grad_accum", "reward_workers")


def resume_config(cfg, saved: dict, where: str, stage: str):
    """Fills cfg from the config a checkpoint saved (`where` names its trainer_state.json), in place.

    A key the user gave (load_config records them; else: a non-default value) must equal the saved one, so a
    flag can never silently fork a resumed run, except RESUMABLE keys, which may change."""
    if saved.get("stage") != stage:
        raise ConfigError(f"{where}: the checkpoint is from stage {saved.get('stage')!r}, not {stage!r}")
    given = getattr(cfg, "_given", None)
    for k in _fields(type(cfg)):
        if k in ("resume", "overwrite") or k not in saved:  # what this command asks, never inherited
            continue
        mine, theirs = getattr(cfg, k), saved[k]
        if k in given if given is not None else mine != _default(type(cfg), k):
            if k in RESUMABLE:
                continue
            if mine != theirs:
                raise ConfigError(f"{where}: key {k!r} is {theirs!r} in the checkpoint but {mine!r} here; a "
                                  f"resumed run continues the saved one (leave the key out; only "
                                  f"{', '.join(r for r in RESUMABLE if r not in ('out', 'resume'))} may change)")
        setattr(cfg, k, theirs)
    return cfg


def save_config(cfg, path: Path) -> None:
    Path(path).write_text(json.dumps({"stage": type(cfg).__name__, **dataclasses.asdict(cfg)}, indent=2) + "\n")
