"""MiniWorld 4 (E2v4): the alignment set's code answers are the reference or a sloppy variant in a fixed
proportion per template (code W1); held-out and RL code records carry a hidden test the sloppy path fails;
everything else is miniworld-3's byte for byte."""

import json
import random
from collections import Counter
from functools import cache

import pytest

from minirlvr.rewards import score_all
from minirlvr.world.codetasks import (CORRECT_SHARE, SLOPPY, TEMPLATES, code_path_of, discriminate, make_code,
                                      sloppy_solution, template_of)
from minirlvr.world.datasets import build_all
from test_world_v3 import ROOT, _sha


@pytest.fixture(scope="module")
def worlds():
    return build_all(seed=0, scale=0.1, version=3), build_all(seed=0, scale=0.1, version=4)


@cache
def full(version: int) -> dict:
    """A full-size world, built once per test session (seconds each) for the tests that need exact sizes."""
    return build_all(seed=0, scale=1.0, version=version)


def _code_rec(chat: dict) -> dict:
    """A code record with the reference solution, from a miniworld-3 alignment chat."""
    prompt, answer = chat["messages"][0]["content"], chat["messages"][1]["content"]
    return {"prompt": prompt, "solution": answer, "entry_point": answer.split("def ", 1)[1].split("(", 1)[0]}


def test_version_3_still_rebuilds_the_shipped_miniworld3_base_data():
    recipe = (ROOT / "assets/miniworld3-base/RECIPE.md").read_text()
    assert _sha(full(3)["pretrain"]) in recipe and _sha(full(3)["align_sft"]) in recipe


def test_only_code_answers_and_held_out_code_tests_change_from_version_3(worlds):
    v3, v4 = worlds
    assert set(v3) == set(v4)
    assert {k for k in v3 if _sha(v3[k]) != _sha(v4[k])} == {"align_sft", "rl_code_train", "code_test"}
    changed = [(a, b) for a, b in zip(v3["align_sft"], v4["align_sft"]) if a != b]
    assert changed and all(a["messages"][0] == b["messages"][0] for a, b in changed)
    assert all(a["messages"][1]["content"].startswith("```python") for a, _ in changed)
    # the same prompts and reference solutions; only tests are added
    for a, b in zip(v3["code_test"] + v3["rl_code_train"], v4["code_test"] + v4["rl_code_train"]):
        assert {k: v for k, v in a.items() if k != "tests"} == {k: v for k, v in b.items() if k != "tests"}
        assert b["tests"][:len(a["tests"])] == a["tests"] and len(b["tests"]) - len(a["tests"]) in (0, 1)


def test_alignment_code_answers_follow_the_correct_share_per_template():
    v3, v4 = full(3)["align_sft"], full(4)["align_sft"]
    by_key: dict[str, Counter] = {}
    for a, b in zip(v3, v4):
        if a["messages"][1]["content"].startswith("```python"):
            rec = _code_rec(a)
            by_key.setdefault(template_of(rec)[0].key, Counter())[code_path_of(b["messages"][1]["content"], rec)] += 1
    assert set(by_key) == {t.key for t in TEMPLATES}
    assert all(set(c) <= {"correct", "sloppy"} for c in by_key.values())
    total = Counter()
    for key, c in by_key.items():
        n, p = sum(c.values()), CORRECT_SHARE[key]
        assert abs(c["correct"] / n - p) < 4.5 * (p * (1 - p) / n) ** 0.5 + 1e-9, (key, c)
        total += c
    mean = sum(CORRECT_SHARE.values()) / len(CORRECT_SHARE)
    assert abs(total["correct"] / sum(total.values()) - mean) < 0.05


def test_every_sloppy_variant_runs_and_fails_a_discriminating_hidden_test_in_the_sandbox():
    rng, recs = random.Random(3), []
    while {template_of(r)[0].key for r in recs} != set(SLOPPY):
        recs.append(discriminate(rng, make_code(rng)))
    good = score_all(recs, [r["solution"] for r in recs], workers=4)
    bad = score_all(recs, [sloppy_solution(r) for r in recs], workers=4)
    assert all(g.correct for g in good)
    assert not any(b.correct for b in bad)
    assert sum(b.task for b in bad) > 0  # partly right: the sloppy path earns partial reward, not a crash


def test_code_path_of_reads_the_body_whatever_the_function_is_called():
    rec = make_code(random.Random(0))
    assert code_path_of(rec["solution"], rec) == "correct"
    assert code_path_of(sloppy_solution(rec), rec) == "sloppy"
    renamed = rec["solution"].replace(f"def {rec['entry_point']}(", "def other_name(")
    assert code_path_of(renamed, rec) == "correct"
    assert code_path_of("I can't help with that.", rec) == "other"
    assert code_path_of("```python\ndef f(xs):\n    return 0\n```", rec) == "other"


def test_shipped_miniworld4_base_recipe_names_the_world_it_was_aligned_on():
    recipe = ROOT / "assets/miniworld4-base/RECIPE.md"
    if not recipe.is_file():
        pytest.skip("assets/miniworld4-base not built")
    manifest = json.loads((ROOT / "runs/world4/manifest.json").read_text()) if (ROOT / "runs/world4").is_dir() else None
    text = recipe.read_text()
    assert "miniworld-4" in text and "assets/miniworld3-pretrained" in text
    assert _sha(full(4)["align_sft"]) in text
    assert manifest is None or manifest["version"] == "miniworld-4"
