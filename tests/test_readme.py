"""README's commands run as written, in order, at tiny sizes; its links stay inside the repository.

The commands of the sections a new user follows (set-up, Use, Real models, Tests) are read from README.md
itself, so an edit that breaks one fails here. They run through bash in a scratch folder that looks like a
clone (symlinks to the repository's files, its own runs/), with the venv's programs first on PATH (what
`source .venv/bin/activate` does). Sizes are shrunk by TINY; a few commands cannot run here and are skipped
for the reason in SKIP; the real-model commands run when MINIRLVR_SMOLLM2 and MINIRLVR_GSM8K are set.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ("minirlvr", "Use", "Real models", "Tests")   # "minirlvr": the top of the README

# (pattern, replacement): training and evaluation budgets cut to what checks that a command works; steps
# shrink in proportion, so that a resume with more steps still has steps to do
TINY = [(r"--steps (\d+)", lambda m: f"--steps {max(1, int(m.group(1)) // 20)}"),
        (r"--prompts_per_step \d+", "--prompts_per_step 2"),
        (r"--group_size \d+", "--group_size 2"), (r"--limit \d+", "--limit 1"),
        (r"--max_new_tokens \d+", "--max_new_tokens 16")]
# a command containing the key is not run, for the reason given (each key must still match a command)
SKIP = {
    "make ": "make test is what runs this test; make demo takes minutes",
    "source .venv/bin/activate": "the venv's programs are already first on PATH",
    "pip install": "downloads from the network",
    "hf download": "downloads from the network",
    "load_dataset": "downloads from the network",
    "python -m pytest": "the test suite itself",
}
# README paths that stand for downloaded files, and the variable that points the test at a local copy
REAL = {"models/SmolLM2-135M-Instruct": "MINIRLVR_SMOLLM2", "data/gsm8k": "MINIRLVR_GSM8K"}


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of every fenced block, section = the nearest heading above it."""
    out, section, lang, code = [], "", None, []
    for line in README.read_text(encoding="utf-8").splitlines():
        if lang is None and line.startswith("#"):
            section = line.lstrip("#").strip()
        elif lang is None and line.startswith("```"):
            lang, code = line[3:].strip(), []
        elif lang is not None and line.startswith("```"):
            out.append((section, lang, "\n".join(code)))
            lang = None
        elif lang is not None:
            code.append(line)
    return out


def commands() -> list[str]:
    """The shell commands of the user's sections, backslash continuations joined, in README order."""
    cmds = []
    for section, lang, code in readme_blocks():
        if section in SECTIONS and lang == "bash":
            cmds += [c.strip() for c in code.replace("\\\n", " ").splitlines() if c.strip()]
    return cmds


def tiny(cmd: str) -> str:
    for pattern, repl in TINY:
        cmd = re.sub(pattern, repl, cmd)
    return cmd


def scratch_clone(tmp: Path) -> Path:
    """A folder that reads like a clone of the repository without sharing its runs/ (or anyone's outputs)."""
    work = tmp / "clone"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git", ".venv", "models", "data"):
            (work / entry.name).symlink_to(entry)
    for readme_path, var in REAL.items():
        if os.environ.get(var):
            target = work / readme_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(os.environ[var]).resolve())
    return work


def test_readme_commands_run_in_order(tmp_path):
    work = scratch_clone(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    cmds = commands()
    assert len(cmds) >= 10, cmds
    for key in SKIP:
        assert any(key in c for c in cmds), f"SKIP entry {key!r} matches no README command: remove it"
    ran = []
    for cmd in cmds:
        if any(key in cmd for key in SKIP):
            continue
        needs = [var for path, var in REAL.items() if path in cmd]
        if any(not os.environ.get(var) for var in needs):
            continue                                  # a real-model command, and no local copy to point it at
        p = subprocess.run(["bash", "-c", tiny(cmd)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"README command failed:\n{tiny(cmd)}\n{p.stdout[-1500:]}\n{p.stderr[-3000:]}"
        ran.append(cmd)
    assert any("train.py grpo" in c for c in ran) and any("eval.py compare" in c for c in ran)
    assert any("--resume" in c for c in ran)
    state = json.loads((work / "runs/grpo/model/trainer_state.json").read_text())
    assert state["step"] == 4 and state["config"]["steps"] == 4   # 60 // 20 steps, then resumed to 80 // 20
    for made in ("runs/grpo/curves.png", "runs/eval/miniworld-base.jsonl", "runs/eval/grpo.jsonl",
                 "runs/grpo_ddp/model/config.json"):
        assert (work / made).is_file(), made


def test_readme_python_snippet_runs(tmp_path):
    snippets = [code for section, lang, code in readme_blocks() if section == "Use" and lang == "python"]
    assert snippets
    p = subprocess.run([sys.executable, "-c", snippets[0]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-2000:]


def test_readme_links_stay_in_the_repository():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target = (ROOT / link).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"README link {link!r} leaves the repo or is missing"
    users = "\n".join(code for section, _, code in readme_blocks() if section in SECTIONS)
    assert "../" not in users and not re.search(r"(^|\s)/(work|home|tmp|Users)/", users)


def test_code_tests_and_docs_name_no_path_outside_the_repository():
    """A clone must not point at the machine it was written on (a sibling ../shared folder, a /work/ model):
    the docstrings, defaults and skip messages a user reads name README's places (models/, data/) instead."""
    outside = re.compile(r"\.\./shared|(^|[\s\"'(=])/(work|home|Users)/")
    files = [*ROOT.glob("*.py"), ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", *ROOT.glob("docs/**/*.md"),
             *ROOT.glob("tests/**/*.md"), *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py"),
             *ROOT.glob("minirlvr/**/*.py"), *ROOT.glob("kernels/*.py")]
    bad = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files if f != Path(__file__).resolve()
           for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not bad, "\n".join(bad)
