"""Checkpoints: an HF-format model directory plus optimiser, RNG and step state. No pickle anywhere.

Layout of `OUT/model/` (rewritten atomically: temp dir, then rename; a crash leaves the previous one):
    config.json, model.safetensors        the model, loadable by transformers and Transformer.from_pretrained
    tokenizer.json, tokenizer_config.json  the tokenizer
    optimizer.safetensors                 AdamW moments and step counts, keyed "<param index>.<name>"
    [critic/]                             PPO's value model, same format
    trainer_state.json                    step, optimiser param groups, RNG state, the resolved config
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minirlvr.hf_io import CheckpointError, read_json, atomic_dir
from minirlvr.model import Transformer


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{idx}.{k}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, file: Path, param_groups: list[dict]) -> None:
    tensors = load_file(str(file))
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    n = sum(len(g["params"]) for g in opt.param_groups)
    if state and max(state) >= n:
        raise CheckpointError(f"{file}: optimiser state has parameter index {max(state)} but the model has {n}")
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(out: Path, model: Transformer, opt: torch.optim.Optimizer | None, step: int, config: dict,
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
    t = load_file(str(Path(ckpt) / "rng.safetensors"))
    torch.set_rng_state(t["torch_rng"])
    if "cuda_rng" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda_rng"])
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))


def _py_rng_to_json():
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]
