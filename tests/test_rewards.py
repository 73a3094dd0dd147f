"""Rewards: the table picked by the record, `--reward` plug-ins, and code rewards scored side by side."""

import threading
import time

import pytest

from minirlvr import rewards
from minirlvr.rewards import load_reward, score, score_all


def test_the_record_picks_the_reward():
    math = {"prompt": "1+1?", "answer": "2"}
    assert score(math, "so #### 2").task == 1.0 and score(math, "#### 3").task == 0.0
    assert load_reward("") is rewards.task_reward
    with pytest.raises(ValueError, match="cannot tell how to reward"):
        rewards.task_reward({"prompt": "?"}, "x")


def shout(rec, text):
    return float(text.isupper())


def test_module_function_plugin():
    fn = load_reward("test_rewards:shout")
    assert fn is shout
    r = score({"prompt": "p"}, "LOUD", format_weight=0.0, reward=fn)
    assert (r.total, r.task, r.correct) == (1.0, 1.0, True)
    for spec, msg in [("test_rewards:nope", "cannot load it"), ("no.such.module:f", "cannot load it"),
                      ("test_rewards", "naming a function"), ("test_rewards:pytest", "naming a function")]:
        with pytest.raises(ValueError, match=msg):
            load_reward(spec)


def test_code_rewards_run_side_by_side_and_keep_their_order(monkeypatch):
    import minirlvr.verifier as V
    running, peak, lock = [0], [0], threading.Lock()

    def slow_sandbox(code, tests, timeout=5.0):  # stands in for one sandbox process
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return V.CodeResult(passed=int(code.strip()[-1]), total=2, pass_rate=int(code.strip()[-1]) / 2, status="ok", detail="")
    monkeypatch.setattr(V, "run_code", slow_sandbox)
    recs = [{"prompt": "write f", "tests": ["assert f() == 1"]}] * 8
    texts = [f"```python\nx = {i % 3}\n```" for i in range(8)]
    t0 = time.time()
    out = score_all(recs, texts, workers=8)
    assert peak[0] >= 4 and time.time() - t0 < 8 * 0.2
    assert [r.task for r in out] == [(i % 3) / 2 for i in range(8)]
    assert [r.task for r in score_all(recs, texts, workers=1)] == [r.task for r in out]
