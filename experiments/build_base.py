"""Builds the aligned MiniWorld base shipped in assets/miniworld-base, with the project's own commands.

    python experiments/build_base.py               # miniworld-2 -> assets/miniworld-base (25-40 min, 2 cores)
    python experiments/build_base.py --version 3   # miniworld-3 -> assets/miniworld3-base (E1v3)
    python experiments/build_base.py --version 4   # miniworld-4 -> assets/miniworld4-base (E2v4; ~5 min)

    1. python -m minirlvr.world build --out runs/world --seed 0
    2. python train.py pretrain --config experiments/configs/pretrain.toml --out runs/base/pretrain
    3. python train.py sft --config experiments/configs/align.toml --init runs/base/pretrain/model --out runs/base/align
    4. copy the aligned model (weights, config, tokenizer; no optimiser state) to assets/miniworld-base,
       with RECIPE.md (these commands, the configs, the world manifest) and SHA256SUMS.
The unaligned pretrained model is kept as assets/miniworld-pretrained (the "before alignment" reference).
miniworld-4's pretraining text is miniworld-3's byte for byte, so version 4 only aligns: from the shipped
assets/miniworld3-pretrained, on miniworld-4's align_sft (whose code answers are partly sloppy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, finished, sh, world  # noqa: E402

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def ship(src: Path, dst: Path, recipe: str) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    import torch
    from minirlvr import Transformer
    # bf16 halves the repo footprint; every arm (and every number in the reports) starts from these bf16 weights.
    Transformer.from_pretrained(src).save_pretrained(tmp, dtype=torch.bfloat16)
    for f in MODEL_FILES[2:]:
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
    (tmp / "RECIPE.md").write_text(recipe)
    sums = "".join(f"{hashlib.sha256((tmp / f).read_bytes()).hexdigest()}  {f}\n" for f in sorted(MODEL_FILES) if (tmp / f).exists())
    (tmp / "SHA256SUMS").write_text(sums)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", type=int, default=2, help="MiniWorld version (2: the shipped base of E1-F1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when other jobs share the cores)")
    a = ap.parse_args()
    w = world(a.version)
    v = "" if a.version == 2 else str(a.version)
    runs, assets = f"runs/base{v}", f"assets/miniworld{v}"
    # the configs name runs/world; other versions override the data path on the command line
    data = [] if a.version == 2 else ["--data"]
    if a.version == 4:
        return align_only(w, runs, assets, a.threads)
    cmds = [
        [PY, "train.py", "pretrain", "--config", "experiments/configs/pretrain.toml", "--out", f"{runs}/pretrain",
         *(data and [*data, str((w / "pretrain.jsonl").relative_to(ROOT))])],
        [PY, "train.py", "sft", "--config", "experiments/configs/align.toml", "--init", f"{runs}/pretrain/model",
         "--out", f"{runs}/align", *(data and [*data, str((w / "align_sft.jsonl").relative_to(ROOT))])],
    ]
    run_all(cmds, (f"{runs}/pretrain", f"{runs}/align"), a.threads)
    recipe = recipe_text(a.version, w, cmds, ("pretrain", "align"))
    ship(ROOT / f"{runs}/align/model", ROOT / f"{assets}-base", recipe)
    ship(ROOT / f"{runs}/pretrain/model", ROOT / f"{assets}-pretrained", recipe)
    print((ROOT / f"{assets}-base/SHA256SUMS").read_text())


def align_only(w: Path, runs: str, assets: str, threads: int) -> None:
    cmds = [[PY, "train.py", "sft", "--config", "experiments/configs/align.toml", "--init",
             "assets/miniworld3-pretrained", "--out", f"{runs}/align", "--data",
             str((w / "align_sft.jsonl").relative_to(ROOT))]]
    run_all(cmds, (f"{runs}/align",), threads)
    ship(ROOT / f"{runs}/align/model", ROOT / f"{assets}-base", recipe_text(4, w, cmds, ("align",)))
    print((ROOT / f"{assets}-base/SHA256SUMS").read_text())


def run_all(cmds: list[list[str]], outs: tuple[str, ...], threads: int) -> None:
    for c, done in zip(cmds, outs):
        if finished(ROOT / done):
            print(f"  reusing finished run {done}")
            continue
        sh(c, threads=threads)


def recipe_text(version: int, w: Path, cmds: list[list[str]], stages: tuple[str, ...]) -> str:
    manifest = json.loads((w / "manifest.json").read_text())
    cfgs = {p: (ROOT / p).read_text() for p in (f"experiments/configs/{s}.toml" for s in stages)}
    recipe = ["# MiniWorld base: recipe", "", f"Built by `python experiments/build_base.py --version {version}`:", "", "```",
              f"python -m minirlvr.world build --out {w.relative_to(ROOT)} --seed 0 --version {version}"
              f"   # {manifest.get('version')}",
              *[" ".join(c[1:]).replace(PY, "python") for c in cmds], "```", ""]
    for p, text in cfgs.items():
        recipe += [f"`{p}`:", "```toml", text.strip(), "```", ""]
    recipe += ["World manifest (sha256 of each data file):", "```json", json.dumps(manifest, indent=1)[:4000], "```", ""]
    return "\n".join(recipe)


if __name__ == "__main__":
    main()
