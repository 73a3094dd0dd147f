"""CLI: write every MiniWorld dataset as JSONL plus a manifest.

    python -m minirlvr.world build --out world --seed 0 [--scale 1.0] [--version 3]

OUT/<name>.jsonl for each dataset, OUT/topics.json (the world's content: topics, recipes, refusals), and
OUT/manifest.json: {"version", "seed", "scale", "files": {name: {"records", "docs", "chats", "words", "sha256"}}}
(docs/chats: how many records are documents {"text"} or chats {"messages"}; words: whitespace words). Files are
written to a temporary directory first and moved into place, so a failed build leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import HARMFUL, BENIGN, CATEGORIES, REFUSALS, SUITES, WORLD_VERSION
from .datasets import VERSIONS, build_all


def _words(rec: dict) -> int:
    if "text" in rec:
        return len(rec["text"].split())
    if "messages" in rec:
        return sum(len(m["content"].split()) for m in rec["messages"])
    return len(rec["prompt"].split()) + len(rec.get("solution", "").split())


def _write_jsonl(path: Path, records: list[dict]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build(out: Path, seed: int, scale: float = 1.0, version: int = VERSIONS[-1]) -> dict:
    """Write all datasets into `out` (replacing files of the same names) and return the manifest."""
    sets = build_all(seed, scale, version)
    version_name = f"miniworld-{version}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world-", dir=out))
    try:
        files = {}
        for name, records in sets.items():
            files[f"{name}.jsonl"] = {"records": len(records), "docs": sum("text" in r for r in records),
                                      "chats": sum("messages" in r for r in records),
                                      "words": sum(map(_words, records)),
                                      "sha256": _write_jsonl(tmp / f"{name}.jsonl", records)}
        content = {"version": version_name, "categories": CATEGORIES, "refusals": list(REFUSALS),
                   "suites": list(SUITES), "topics": [dataclasses.asdict(t) for t in HARMFUL + BENIGN]}
        (tmp / "topics.json").write_text(json.dumps(content, indent=1))
        manifest = {"version": version_name, "seed": seed, "scale": scale, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minirlvr.world", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write every dataset as JSONL plus manifest.json")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--scale", type=float, default=1.0, help="multiply every dataset size")
    b.add_argument("--version", type=int, default=VERSIONS[-1], choices=VERSIONS,
                   help=f"MiniWorld version (default {WORLD_VERSION}; older ones rebuild byte for byte)")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error(f"--scale must be positive, got {args.scale}")
    t0 = time.perf_counter()
    manifest = build(args.out, args.seed, args.scale, args.version)
    dt = time.perf_counter() - t0
    for name, f in manifest["files"].items():
        print(f"{name:32s} {f['records']:7d} records ({f['docs']} docs, {f['chats']} chats) {f['words']:9d} words")
    total = sum(f["words"] for f in manifest["files"].values())
    print(f"{manifest['version']} seed={args.seed} scale={args.scale}: {total} words in {dt:.1f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
