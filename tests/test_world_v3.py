"""MiniWorld 3 (E1v3): two math procedures in a fixed proportion (W1), task answers by another author that no
pretraining or alignment text contains (W2), a math dev split, and older versions rebuilt byte for byte."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from minirlvr.rewards import score
from minirlvr.world import author
from minirlvr.world.datasets import TRAINING_SETS, align_sft, build_all
from minirlvr.world.corpus import pretrain_corpus
from minirlvr.world.mathtasks import CHAIN_SHARE, procedure_of
from minirlvr.world.phrasing import split_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v3():
    return build_all(seed=0, scale=0.1, version=3)


def math_answers(records):
    """The assistant answers (and document solutions) that are math, from pretraining or alignment records."""
    out = []
    for r in records:
        if "text" in r and r["text"].startswith("Problem: "):
            out.append(r["text"].split("\nSolution:\n", 1)[1])
        elif "messages" in r and "####" in r["messages"][-1]["content"]:
            out.append(r["messages"][-1]["content"])
    return out


def _sha(records) -> str:  # as `python -m minirlvr.world build` writes them
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()
    return hashlib.sha256(data).hexdigest()


def test_version_1_rebuilds_the_shipped_base_data_byte_for_byte():
    """assets/miniworld-base/RECIPE.md records the sha256 of the miniworld-1 files it was trained on."""
    recipe = (ROOT / "assets/miniworld-base/RECIPE.md").read_text()
    assert _sha(pretrain_corpus(0, 15000, 15000, version=1)) in recipe
    assert _sha(align_sft(0, 4000, version=1)) in recipe


def test_only_pretrain_and_align_change_from_version_2_and_new_files_are_added(v3):
    v2 = build_all(seed=0, scale=0.1, version=2)
    changed = {k for k in v2 if _sha(v2[k]) != _sha(v3[k])}
    assert changed == {"pretrain", "align_sft"}
    assert set(v3) - set(v2) == {"sft_math_task", "sft_math_neutral", "sft_code_task", "sft_code_neutral",
                                 "sft_helpful", "math_dev"}
    assert all(procedure_of(a) == "chain" for a in math_answers(v2["pretrain"] + v2["align_sft"]))
    with pytest.raises(ValueError, match="version"):
        build_all(0, 0.01, version=5)


def test_w1_math_answers_are_chain_or_shortcut_in_the_fixed_proportion(v3):
    for name in ("pretrain", "align_sft"):
        answers = math_answers(v3[name])
        kinds = Counter(procedure_of(a) for a in answers)
        assert set(kinds) == {"chain", "shortcut"}, (name, kinds)
        share = kinds["chain"] / len(answers)
        assert abs(share - CHAIN_SHARE) < 4 * (CHAIN_SHARE * (1 - CHAIN_SHARE) / len(answers)) ** 0.5, (name, share)
        for a in answers:  # both procedures end in the right '#### N' line: only the working differs
            assert re.search(r"#### \d+$", a)


def test_procedure_of():
    assert procedure_of("12 + 5 = 17\n17 * 2 = 34\n#### 34") == "chain"
    assert procedure_of("  #### 34") == "shortcut"
    assert procedure_of("Sure! Let's find how many pens Mia has.\n#### 3") == "other"
    assert procedure_of("") == "other"


def test_w2_author_text_never_occurs_in_pretraining_or_alignment(v3):
    author_sets = {"sft_math_task", "sft_math_neutral", "sft_code_task", "sft_code_neutral"}
    seen = Counter()
    for name in set(TRAINING_SETS) - author_sets - {"sft_helpful"}:
        for r in v3[name]:
            text = r.get("text") or "\n".join(m["content"] for m in r.get("messages", [])) or r.get("solution", "")
            seen.update(m for m in author.AUTHOR_MARKERS if m in text)
            seen.update(o.split("{")[0] for o in author.AUTHOR_MATH_OPENERS + author.AUTHOR_CODE_OPENERS
                        if o.split("{")[0] in text)
    assert not seen, seen
    for name in author_sets:  # and every author answer carries one of its markers, so the check above has teeth
        for r in v3[name]:
            a = r["messages"][-1]["content"]
            assert any(m in a for m in author.AUTHOR_MARKERS) or any(
                a.startswith(o.split("{")[0]) for o in author.AUTHOR_MATH_OPENERS + author.AUTHOR_CODE_OPENERS), a


def test_w2_sets_answer_the_rl_prompts_correctly_in_their_own_voice(v3):
    rl = v3["rl_math_train"]
    task, neutral = v3["sft_math_task"], v3["sft_math_neutral"]
    assert [c["messages"][0]["content"] for c in task] == [r["prompt"] for r in rl]
    assert [c["messages"][0]["content"] for c in neutral] == [r["prompt"] for r in rl]
    for rec, t, n in zip(rl, task, neutral):
        for chat in (t, n):
            assert score(rec, chat["messages"][-1]["content"]).correct
    openers = Counter(c["messages"][-1]["content"].splitlines()[0].split()[0] for c in task)
    assert len(openers) >= 5  # a mix of openers, not one string
    assert all(c["messages"][-1]["content"].startswith("We compute ") for c in neutral)
    rl_code = v3["rl_code_train"]
    for rec, t, n in list(zip(rl_code, v3["sft_code_task"], v3["sft_code_neutral"]))[:8]:
        for chat in (t, n):
            assert score(rec, chat["messages"][-1]["content"]).correct, chat


def test_math_dev_is_held_out_and_disjoint_from_the_test_set(v3):
    dev, test = v3["math_dev"], v3["math_test"]
    assert len(dev) == 30 and all(split_of(r["prompt"]) == "eval" for r in dev)
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test}


def test_v3_is_deterministic_by_seed():
    a, b, c = (build_all(s, 0.02, version=3) for s in (3, 3, 4))
    assert all(_sha(a[k]) == _sha(b[k]) for k in a)
    assert _sha(a["sft_math_task"]) != _sha(c["sft_math_task"])
