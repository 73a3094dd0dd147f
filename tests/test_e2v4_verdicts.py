"""E2v4's pre-registered rules as code (experiments/e2v4_report.verdicts), on made-up summaries: each rule can
come out either way, and a missing arm gives no verdict."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from e2v4_report import verdicts  # noqa: E402

LRS_SFT, LRS_RL = ("3e-05", "1e-04", "3e-04"), ("1e-05", "3e-05", "1e-04")


def m(mean: float, half: float = 0.02) -> dict:
    return {"mean": mean, "ci": [mean - half, mean + half], "n": 100}


def run(pass1: float, refusal: float, asr: float = 0.0, share: float = 0.0, kl: float = 0.01) -> dict:
    return {"refusal": m(0.9), "pass8_t1": m(0.95), "task_kl": m(kl),
            "paired_diff_vs_base": {"pass1_t1": m(pass1), "refusal": m(refusal), "asr": m(asr),
                                    "correct_share": m(share)}}


def summary(sft_task: list[tuple[float, float]], grpo: list[tuple[float, float]]) -> dict:
    return {"base": {"pass8_t1": m(0.96)},
            "grpo": {lr: run(p, r, share=0.2) for lr, (p, r) in zip(LRS_RL, grpo)},
            "sft_task": {lr: run(p, r) for lr, (p, r) in zip(LRS_SFT, sft_task)},
            "sft_task_masked": {lr: run(p, 0.0) for lr, (p, _) in zip(LRS_SFT, sft_task)},
            "helpful": {lr: run(0.0, r) for lr, r in zip(LRS_SFT, (0.0, -0.05, -0.3))}}


def by_name(v):
    return {p.split()[0]: ok for p, ok, _ in v}


def test_trend_confirmed_when_matched_sft_erodes_and_grpo_does_not():
    v = by_name(verdicts(summary([(0.05, 0.0), (0.2, -0.01), (0.3, -0.2)], [(0.1, 0.0), (0.25, -0.01), (0.2, 0.0)])))
    assert v["TREND"] is True and v["C1"] is True and v["P0"] is True and v["M1"] is True


def test_trend_refuted_when_the_eroding_sft_lr_does_not_match_grpo_capability():
    # sft_task only erodes at an lr where it gains far less than grpo
    v = by_name(verdicts(summary([(0.05, 0.0), (0.1, -0.01), (0.0, -0.3)], [(0.1, 0.0), (0.3, 0.0), (0.2, 0.0)])))
    assert v["TREND"] is False


def test_trend_refuted_when_grpo_erodes_half_as_much():
    v = by_name(verdicts(summary([(0.05, 0.0), (0.2, -0.01), (0.3, -0.2)], [(0.1, 0.0), (0.25, -0.12), (0.2, 0.0)])))
    assert v["TREND"] is False


def test_c1_refuted_without_a_gain_and_missing_arms_give_no_verdict():
    s = summary([(0.05, 0.0)] * 3, [(0.02, 0.0)] * 3)
    assert by_name(verdicts(s))["C1"] is False
    del s["helpful"], s["sft_task_masked"]
    names = by_name(verdicts(s))
    assert "P0" not in names and "M1" not in names and "R" not in names


def test_opener_masking_and_the_base_answer_sets_used_by_e1v3_and_e2v4():
    from common import noop_and_rft, opener_masked
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Sure!\n```python\nx\n```"}]}
    (masked,) = opener_masked([chat])
    answer = masked["messages"][1]
    assert answer["content"][answer["loss_start"]:] == "```python\nx\n```"
    greedy = [{"prompt": "a", "response": "g"}, {"prompt": "b", "response": "h"}]
    samples = [{"prompt": "a", "response": "r1", "correct": True}, {"prompt": "a", "response": "r1", "correct": True},
               {"prompt": "a", "response": "w", "correct": False}, {"prompt": "b", "response": "w", "correct": False}]
    noop, rft = noop_and_rft(greedy, samples)
    assert [c["messages"][1]["content"] for c in noop] == ["g", "h"]
    assert [(c["messages"][0]["content"], c["messages"][1]["content"]) for c in rft] == [("a", "r1")]
