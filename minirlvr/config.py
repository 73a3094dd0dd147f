"""Configs are plain dataclasses; values come from defaults, then a TOML file, then `--key value` flags.

    cfg = load_config(GRPOConfig, ["--config", "grpo.toml", "--lr", "1e-5"])

Every error names where the bad value came from (the TOML file or the command line) and the key.
A resumed run takes its config from the checkpoint (resume_config); flags may only repeat it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    pass


def _coerce(value, tp, where: str, key: str):
    """Converts `value` (from TOML or a CLI string) to the field type `tp`, or raises naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for a in args:
            try:
                return _coerce(value, a, where, key)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: key {key!r} expects {tp}, got {value!r}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key {key!r} expects a list, got {value!r}")
        return [_coerce(v, inner, where, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: key {key!r} expects true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: key {key!r} expects {tp.__name__}, got {value!r}")
        try:
            out = tp(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{where}: key {key!r} expects {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(out, float):
            if not out.is_integer():
                raise ConfigError(f"{where}: key {key!r} expects int, got {value!r}")
            out = int(out)
        if not isinstance(out, (int, float)):
            raise ConfigError(f"{where}: key {key!r} expects {tp.__name__}, got {value!r}")
        return tp(out)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key {key!r} expects a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: key {key!r} has unsupported type {tp}")


def _apply(cfg, updates: dict, where: str):
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    for key, value in updates.items():
        k = key.replace("-", "_")
        if k not in hints or k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for {type(cfg).__name__}{hint}")
        setattr(cfg, k, _coerce(value, hints[k], where, k))


def load_config(cls, argv: list[str]):
    """Builds `cls` from defaults, then `--config FILE.toml` (if given), then `--key value` pairs in argv."""
    cfg = cls()
    args = list(argv)
    cli: dict[str, str] = {}
    toml_file = None
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {a!r}")
        if "=" in a:
            key, val = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: key {a!r} has no value")
            key, val = a[2:], args[i + 1]
            i += 2
        if key == "config":
            toml_file = Path(val)
        else:
            cli[key] = val
    if toml_file is not None:
        if not toml_file.is_file():
            raise ConfigError(f"{toml_file}: config file not found")
        try:
            data = tomllib.loads(toml_file.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{toml_file}: invalid TOML ({e})") from None
        _apply(cfg, data, str(toml_file))
    _apply(cfg, cli, "command line")
    cfg._given = {k.replace("-", "_") for k in [*cli, *(data if toml_file is not None else ())]}
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


# What may differ between the pieces of a resumed run (e.g. more steps); everything else continues the saved config.
RESUMABLE = ("out", "resume", "steps", "save_every", "progress", "device")


def resume_config(cfg, saved: dict, where: str, stage: str):
    """Fills cfg from the config a checkpoint saved (`where` names its trainer_state.json), in place.

    A key the user gave (load_config records them; else: a non-default value) must equal the saved one, so a
    flag can never silently fork a resumed run, except RESUMABLE keys, which may change."""
    if saved.get("stage") != stage:
        raise ConfigError(f"{where}: the checkpoint is from stage {saved.get('stage')!r}, not {stage!r}")
    given = getattr(cfg, "_given", None)
    for f in dataclasses.fields(cfg):
        if f.name == "resume" or f.name not in saved:
            continue
        mine, theirs = getattr(cfg, f.name), saved[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in given if given is not None else mine != default:
            if f.name in RESUMABLE:
                continue
            if mine != theirs:
                raise ConfigError(f"{where}: key {f.name!r} is {theirs!r} in the checkpoint but {mine!r} here; a "
                                  "resumed run continues the saved one (leave the key out)")
        setattr(cfg, f.name, theirs)
    return cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: Path) -> None:
    Path(path).write_text(json.dumps({"stage": type(cfg).__name__, **config_to_dict(cfg)}, indent=2) + "\n")
