"""Checkpoints without pickle: Hugging Face model directories (checked JSON, single or sharded safetensors,
atomic writes; every error names the file and the field or tensor) and the trainer state beside them.

Layout of `OUT/model/` (rewritten atomically: temp dir, then rename; a crash leaves the previous one):
    config.json, model.safetensors        the model, loadable by transformers and Transformer.from_pretrained
    tokenizer.json, tokenizer_config.json  the tokenizer
    optimizer.safetensors                 AdamW moments and step counts, keyed "<param index>.<name>"
    [critic/]                             PPO's critic, same format
    trainer_state.json                    step, optimiser param groups, RNG state, the resolved config
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minirlvr import dist
from minirlvr.config import resume_config, save_config
from minirlvr.optim import pick_device


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and the field/tensor."""


def read_json(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    try:
        d = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return d


def read_tensors(file: Path, keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError names the file (and the first of `keys` missing)."""
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({e})") from None
    for k in keys:
        if k not in tensors:
            raise CheckpointError(f"{file}: tensor {k!r} is missing")
    return tensors


def load_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir, single-file or sharded; errors name the file and tensor."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: field 'weight_map' is missing or not an object")
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        weight_map, files = None, ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    state = {}
    for name in files:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{index}: shard {name!r} listed in weight_map does not exist")
        part = read_tensors(f)
        if weight_map is not None:
            for k in part:
                if weight_map.get(k) != name:
                    raise CheckpointError(f"{f}: tensor {k!r} is not mapped to this shard in {index.name}")
        state.update(part)
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise CheckpointError(f"{index}: tensors listed in weight_map but absent from shards: {absent[:8]}")
    return state


class atomic_dir:
    """Context manager yielding a temp dir next to `path`; on success it replaces `path` in one rename.

    A crash mid-write leaves the previous `path` intact (plus a stray .tmp dir), so nothing already
    written is lost. Files already in `path` that the writer did not produce are carried over.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            for old in self.path.iterdir():  # keep e.g. tokenizer files saved there by someone else
                if not (self.tmp / old.name).exists():
                    if old.is_dir():
                        shutil.copytree(old, self.tmp / old.name)
                    else:
                        shutil.copy2(old, self.tmp / old.name)
            trash = self.path.with_name(self.path.name + ".old.tmp")
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(self.path, trash)
            os.rename(self.tmp, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.tmp, self.path)
        return False


# ------------------------------------------------------------------------------------- trainer state

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{idx}.{k}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, file: Path, param_groups: list[dict]) -> None:
    tensors = read_tensors(file)
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    n = sum(len(g["params"]) for g in opt.param_groups)
    if state and max(state) >= n:
        raise CheckpointError(f"{file}: optimiser state has parameter index {max(state)} but the model has {n}")
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(out: Path, model, opt: torch.optim.Optimizer | None, step: int, config: dict,
                    tokenizer=None, critic=None, critic_opt=None, extra: dict | None = None) -> Path:
    """Writes OUT/model atomically. Returns the checkpoint path."""
    path = Path(out) / "model"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp / "staging")
        for f in (tmp / "staging").iterdir():
            f.rename(tmp / f.name)
        (tmp / "staging").rmdir()
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        state = {"step": step, "config": config, "python_rng": _py_rng_to_json(), **(extra or {})}
        tensors = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["cuda_rng"] = torch.cuda.get_rng_state()
        if opt is not None:
            t, groups = optimizer_tensors(opt)
            save_file(t, str(tmp / "optimizer.safetensors"))
            state["param_groups"] = groups
        if critic is not None:
            critic.save_pretrained(tmp / "critic")
            if critic_opt is not None:
                t, groups = optimizer_tensors(critic_opt)
                save_file(t, str(tmp / "critic" / "optimizer.safetensors"))
                state["critic_param_groups"] = groups
        save_file(tensors, str(tmp / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    return path


def start_training(cfg, stage: str) -> tuple[torch.device, dict | None]:
    """What every training loop does first: processes, device and seed; on --resume the checkpoint's config
    (resume_config, so that a chain of resumes continues the first run) and state; OUT/config.json. Returns
    (device, the resumed trainer_state.json or None)."""
    _, _, dev = dist.init()
    device = pick_device(str(dev) if dev else cfg.device)
    torch.manual_seed(cfg.seed)
    state = read_state(Path(cfg.resume)) if cfg.resume else None
    if state is not None:
        resume_config(cfg, state["config"], str(Path(cfg.resume) / "trainer_state.json"), stage)
    if dist.rank() == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.out) / "config.json")
    return device, state


def restore_training(ckpt: str, state: dict | None, opt: torch.optim.Optimizer) -> int:
    """The optimiser and RNG state of a resumed run (state None: a new run); returns the step to start at."""
    if state is None:
        return 0
    load_optimizer(opt, Path(ckpt) / "optimizer.safetensors", state["param_groups"])
    restore_rng(Path(ckpt), state)
    return state["step"]


def save_due(cfg, step: int) -> bool:
    """Rank 0 saves every save_every steps (0: never) and after the last step."""
    return dist.rank() == 0 and (step + 1 == cfg.steps or bool(cfg.save_every and (step + 1) % cfg.save_every == 0))


def read_state(ckpt: Path) -> dict:
    f = Path(ckpt) / "trainer_state.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: not found; --resume needs a directory written by train.py (OUT/model)")
    state = read_json(f)
    for k in ("step", "config"):
        if k not in state:
            raise CheckpointError(f"{f}: field {k!r} is missing")
    return state


def restore_rng(ckpt: Path, state: dict) -> None:
    t = read_tensors(Path(ckpt) / "rng.safetensors", ("torch_rng",))
    torch.set_rng_state(t["torch_rng"])
    if "cuda_rng" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda_rng"])
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))


def _py_rng_to_json():
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]
