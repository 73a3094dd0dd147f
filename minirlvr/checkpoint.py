"""Checkpoints without pickle: Hugging Face model directories (checked JSON, single or sharded safetensors,
atomic writes; every error names the file and the field or tensor) and the trainer state beside them. When a
run saves, resumes or stops is run.py's.

A run's folder OUT:
    model/                  the HF folder a user uploads: config.json, model.safetensors, tokenizer files,
                            generation_config.json (every stop id as eos), trainer_state.json (step, config)
    state/step_000040/      what only resuming needs: optimizer.safetensors (AdamW moments and step counts,
                            keyed "<param index>.<name>"), rng.safetensors, trainer_state.json (optimiser
                            param groups, Python RNG), [critic/] (PPO's critic, its optimizer.safetensors)
    config.json, metrics.jsonl, samples.jsonl, [tensorboard/]
Each folder is rewritten atomically (temp dir, then rename). The state goes first and the model's
trainer_state.json commits the step; the previous state/step_N is deleted only after that, so a crash at any
point leaves a checkpoint that resumes. Checkpoints written before the state moved out keep it in model/,
and still load.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and the field/tensor."""


def read_json(file: Path) -> dict:
    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return d


def read_tensors(file: Path, keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError names the file (and the first of `keys` missing)."""
    if not Path(file).is_file():
        raise CheckpointError(f"{file}: file not found")
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
        for k in part if weight_map is not None else ():
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

    A crash or error mid-write removes the temp dir and leaves the previous `path` intact, so nothing already
    written is lost. With keep_others, files already in `path` that the writer did not produce (e.g. tokenizer
    files saved there by someone else) are carried over. The result gets the permissions of any new folder
    (mkdtemp makes 0700 folders and safetensors 0600 files, which other users could not read).
    """

    def __init__(self, path: Path, keep_others: bool = True):
        self.path, self.keep_others = Path(path), keep_others

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        os.umask(umask := os.umask(0))  # the only way to read the umask: set it, then put it back
        for d, _, files in os.walk(self.tmp):
            os.chmod(d, 0o777 & ~umask)
            for f in files:
                os.chmod(os.path.join(d, f), 0o666 & ~umask)
        if self.path.exists():
            for old in self.path.iterdir() if self.keep_others else ():
                if not (self.tmp / old.name).exists():
                    (shutil.copytree if old.is_dir() else shutil.copy2)(old, self.tmp / old.name)
            trash = self.path.with_name(self.path.name + ".old.tmp")
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(self.path, trash)
            os.rename(self.tmp, self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.tmp, self.path)
        return False


@contextlib.contextmanager
def writing(file: Path):
    """A failed write (full disk, file size limit, permissions) as one CheckpointError naming `file`."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{file}: cannot write the checkpoint ({e}); the previous one is kept") from None


# ------------------------------------------------------------------------------------- trainer state

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    return {f"{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
            for idx, st in sd["state"].items() for k, v in st.items()}, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, file: Path, param_groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, t in read_tensors(file).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    n = sum(len(g["params"]) for g in opt.param_groups)
    if state and max(state) >= n:
        raise CheckpointError(f"{file}: optimiser state has parameter index {max(state)} but the model has {n}")
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(out: Path, model, opt: torch.optim.Optimizer, step: int, config: dict, tokenizer,
                    critic=None, critic_opt=None) -> Path:
    """Writes OUT/state/step_N, then OUT/model (the commit), then drops older state. Returns OUT/model."""
    out = Path(out)
    sdir, mdir = state_dir(out / "model", step), out / "model"
    with atomic_dir(sdir, keep_others=False) as tmp:
        v, internal, gauss = random.getstate()
        state = {"step": step, "python_rng": [v, list(internal), gauss]}
        files = {"rng.safetensors": {"torch_rng": torch.get_rng_state(), **(
            {"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}}
        files["optimizer.safetensors"], state["param_groups"] = optimizer_tensors(opt)
        if critic is not None:
            with writing(sdir / "critic"):
                critic.save_pretrained(tmp / "critic")
            files["critic/optimizer.safetensors"], state["critic_param_groups"] = optimizer_tensors(critic_opt)
        for name, tensors in files.items():
            with writing(sdir / name):
                save_file(tensors, str(tmp / name))
        (tmp / "trainer_state.json").write_text(json.dumps(state) + "\n")
    with atomic_dir(mdir, keep_others=False) as tmp:  # nothing carried over: an old layout's optimizer stays out
        with writing(mdir / "model.safetensors"):
            model.save_pretrained(tmp / "staging")
        for f in (tmp / "staging").iterdir():
            f.rename(tmp / f.name)
        (tmp / "staging").rmdir()
        with writing(mdir / "tokenizer.json"):
            tokenizer.save_pretrained(tmp)
        generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.stop_ids,
                      "pad_token_id": tokenizer.pad_token_id}  # transformers' generate stops at every stop id
        (tmp / "generation_config.json").write_text(
            json.dumps({k: v for k, v in generation.items() if v is not None}, indent=2) + "\n")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": config}, indent=2) + "\n")
    for old in sdir.parent.iterdir():
        if old != sdir:
            shutil.rmtree(old, ignore_errors=True)
    return mdir


def state_dir(ckpt: Path, step: int) -> Path:
    return Path(ckpt).parent / "state" / f"step_{step:06d}"


def read_state(ckpt: Path) -> dict:
    """The checkpoint's trainer state: step and config from model/trainer_state.json, merged with the state
    folder's (optimiser param groups, Python RNG); "dir" is that folder (model/ itself in the old layout)."""
    f = Path(ckpt) / "trainer_state.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: not found; --resume needs a directory written by train.py (OUT/model)")
    state = read_json(f)
    for k in ("step", "config"):
        if k not in state:
            raise CheckpointError(f"{f}: field {k!r} is missing")
    if "param_groups" in state:  # the old layout: everything in model/
        return {**state, "dir": Path(ckpt)}
    sdir = state_dir(ckpt, state["step"])
    if not sdir.is_dir():
        raise CheckpointError(f"{sdir}: not found; the optimiser and RNG state of {ckpt} (step {state['step']}) "
                              "live there, beside the model folder")
    return {**read_json(sdir / "trainer_state.json"), **state, "dir": sdir}


def restore_training(state: dict | None, opt: torch.optim.Optimizer) -> int:
    """The optimiser and RNG state of a resumed run (state None: a new run); returns the step to start at."""
    if state is None:
        return 0
    for k in ("param_groups", "python_rng"):
        if k not in state:
            raise CheckpointError(f"{state['dir'] / 'trainer_state.json'}: field {k!r} is missing")
    load_optimizer(opt, state["dir"] / "optimizer.safetensors", state["param_groups"])
    t = read_tensors(state["dir"] / "rng.safetensors", ("torch_rng",))
    torch.set_rng_state(t["torch_rng"])
    if "cuda_rng" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda_rng"])
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))
    return state["step"]
