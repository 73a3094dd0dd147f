"""Training loops: learning happens, resume is exact, bad losses stop cleanly, data parallel equals one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from minirlvr.config import ConfigError, load_config
from minirlvr.grpo import GRPOConfig, train_grpo
from minirlvr.model import Transformer
from minirlvr.ppo import PPOConfig, train_ppo
from minirlvr.sft import PretrainConfig, SFTConfig, pretrain, sft

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat.", "a dog ran in the park.", "one plus two is three.",
         "alpha beta gamma delta.", "the quick brown fox jumps over the lazy dog."]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny pretrained model dir (with tokenizer) + data files, shared by the tests in this module."""
    d = tmp_path_factory.mktemp("tiny")
    docs = [{"text": t} for t in TEXTS * 8]
    chats = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
             for w in ("cat", "dog", "fox", "sun", "mat", "park")]
    data = write_jsonl(d / "pt.jsonl", docs + chats)
    cfg = load_config(PretrainConfig, ["--out", str(d / "pt"), "--data", data, "--steps", "30", "--batch_size", "8",
                                       "--block_size", "32", "--vocab_size", "300", "--hidden_size", "32",
                                       "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
                                       "--num_key_value_heads", "2", "--lr", "3e-3", "--warmup", "2", "--progress", "false"])
    pretrain(cfg)
    return d, data, write_jsonl(d / "chats.jsonl", chats)


def losses(out):
    return [json.loads(l)["loss"] for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_lowers_the_loss_and_saves_an_hf_dir(tiny):
    d, _, _ = tiny
    ls = losses(d / "pt")
    assert len(ls) == 30 and sum(ls[-5:]) / 5 < 0.8 * sum(ls[:5]) / 5
    m = Transformer.from_pretrained(d / "pt" / "model")
    state = json.loads((d / "pt" / "model" / "trainer_state.json").read_text())
    assert state["step"] == 30 and state["config"]["stage"] == "PretrainConfig"
    assert (d / "pt" / "model" / "tokenizer.json").exists() and m.config.vocab_size <= 300


class Interrupt(Exception):
    pass


def _interrupt_at(monkeypatch, module, at_step):
    real = module.check_finite

    def fake(loss, step):
        if step == at_step:
            raise Interrupt()
        return real(loss, step)
    monkeypatch.setattr(module, "check_finite", fake)


def test_sft_resume_is_exact(tiny, tmp_path, monkeypatch):
    import minirlvr.sft as S
    d, _, chats = tiny
    args = ["--init", str(d / "pt" / "model"), "--data", chats, "--steps", "6", "--batch_size", "4", "--block_size", "32",
            "--lr", "1e-3", "--progress", "false", "--save_every", "3"]
    sft(load_config(SFTConfig, args + ["--out", str(tmp_path / "a")]))
    with monkeypatch.context() as mp:
        _interrupt_at(mp, S, 4)
        with pytest.raises(Interrupt):
            sft(load_config(SFTConfig, args + ["--out", str(tmp_path / "b")]))
    assert json.loads((tmp_path / "b/model/trainer_state.json").read_text())["step"] == 3
    sft(load_config(SFTConfig, args + ["--out", str(tmp_path / "b"), "--resume", str(tmp_path / "b/model")]))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = Transformer.from_pretrained(tmp_path / "a/model"), Transformer.from_pretrained(tmp_path / "b/model")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import minirlvr.sft as S
    from minirlvr.optim import NonFiniteLoss
    d, _, chats = tiny
    real = S.lm_loss
    calls = {"n": 0}

    def nan_later(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > 2 else out
    monkeypatch.setattr(S, "lm_loss", nan_later)
    with pytest.raises(NonFiniteLoss, match="step 2: loss is nan"):
        sft(load_config(SFTConfig, ["--init", str(d / "pt" / "model"), "--data", chats, "--steps", "5", "--batch_size", "4",
                                    "--block_size", "32", "--progress", "false", "--save_every", "1", "--out", str(tmp_path / "n")]))
    assert json.loads((tmp_path / "n/model/trainer_state.json").read_text())["step"] == 2
    Transformer.from_pretrained(tmp_path / "n/model")  # the kept checkpoint loads


def a_share(rec, text):
    """Tiny synthetic task, a `--reward module:function` plug-in: the share of response characters that are 'a'."""
    return text.count("a") / max(1, len(text))


def a_share_but_cat(rec, text):
    """a_share, except that every response to 'say cat' gets 1: a group with no signal (filtered, if asked)."""
    return 1.0 if rec["prompt"].endswith("cat") else a_share(rec, text)


LOOPS = {"grpo": (GRPOConfig, train_grpo), "ppo": (PPOConfig, train_ppo)}


def rl_args(d, out, *extra, algo="grpo"):
    prompts = write_jsonl(d / "prompts.jsonl", [{"prompt": f"say {w}"} for w in ("cat", "dog", "fox", "sun")])
    return load_config(LOOPS[algo][0], ["--init", str(d / "pt" / "model"), "--data", prompts, "--out", str(out),
                                        "--prompts_per_step", "4", "--group_size", "8", "--max_new_tokens", "12",
                                        "--reward", "test_train:a_share", "--progress", "false", *extra])


def train_rl(cfg, algo="grpo"):
    return LOOPS[algo][1](cfg)


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_grpo_raises_reward_on_tiny_task_and_updates_every_parameter(tiny, tmp_path):
    d, _, _ = tiny
    before = Transformer.from_pretrained(d / "pt" / "model").state_dict()
    train_rl(rl_args(d, tmp_path / "g", "--steps", "12", "--lr", "1e-2", "--kl_coef", "0.0"))
    rows = metrics(tmp_path / "g")
    first, last = sum(r["reward_mean"] for r in rows[:3]) / 3, sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert last > first + 0.15, (first, last)  # measured: 0.10 -> 0.45
    after = Transformer.from_pretrained(tmp_path / "g/model").state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged
    for key in ("kl", "clip_frac_low", "clip_frac_high", "entropy_mean", "response_len", "time_generate",
                "time_logprob", "time_update", "tokens_per_s", "reward_std", "accuracy"):
        assert key in rows[0], key


def strip_times(lines):
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "tokens_per_s"} for r in lines]


@pytest.mark.parametrize("algo, extra", [("grpo", ["--mu", "2", "--minibatches", "2", "--kl_coef", "0.1", "--kl_estimator", "k2"]),
                                         ("ppo", ["--kl_coef", "0.05", "--minibatches", "2"])])
def test_rl_resume_is_exact(tiny, tmp_path, monkeypatch, algo, extra):
    import minirlvr.grpo as G
    d, _, _ = tiny
    common = ["--steps", "4", "--save_every", "2", "--lr", "1e-3", *extra]
    train_rl(rl_args(d, tmp_path / "a", *common, algo=algo), algo)
    with monkeypatch.context() as mp:
        _interrupt_at(mp, G, 3)
        with pytest.raises(Interrupt):
            train_rl(rl_args(d, tmp_path / "b", *common, algo=algo), algo)
    train_rl(rl_args(d, tmp_path / "b", *common, "--resume", str(tmp_path / "b/model"), algo=algo), algo)
    assert strip_times(metrics(tmp_path / "a")) == strip_times(metrics(tmp_path / "b"))


def test_three_chained_resumes_equal_one_run(tiny, tmp_path, monkeypatch):
    # B2: a resumed run must save the config it continues (init, ref, algorithm), so that the next --resume
    # can find the reference model; the resumes here pass nothing but --resume and --out.
    import minirlvr.grpo as G
    d, _, _ = tiny
    common = ["--steps", "4", "--save_every", "1", "--lr", "1e-3", "--kl_coef", "0.1", "--mu", "2"]
    train_rl(rl_args(d, tmp_path / "a", *common))
    resume = ["train.py", "grpo", "--resume", str(tmp_path / "b/model"), "--out", str(tmp_path / "b")]
    for stop in (1, 2, 3, None):
        with monkeypatch.context() as mp:
            if stop is None:
                assert train.main(resume[1:]) == 0
                break
            _interrupt_at(mp, G, stop)
            with pytest.raises(Interrupt):
                if stop == 1:
                    train_rl(rl_args(d, tmp_path / "b", *common))
                else:
                    train.main(resume[1:])
    assert strip_times(metrics(tmp_path / "a")) == strip_times(metrics(tmp_path / "b"))
    a, b = Transformer.from_pretrained(tmp_path / "a/model"), Transformer.from_pretrained(tmp_path / "b/model")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    saved = json.loads((tmp_path / "b/model/trainer_state.json").read_text())["config"]
    assert saved["init"] == str(d / "pt" / "model") and saved["stage"] == "grpo"
    # flags may only repeat the checkpoint's config; the algorithm is the checkpoint's too
    with pytest.raises(ConfigError, match=r"key 'lr' is 0.001 in the checkpoint but 0.01 here"):
        train_rl(load_config(GRPOConfig, ["--resume", str(tmp_path / "b/model"), "--lr", "1e-2"]))
    with pytest.raises(ConfigError, match=r"checkpoint is from stage 'grpo', not 'ppo'"):
        train_rl(load_config(PPOConfig, ["--resume", str(tmp_path / "b/model")]), "ppo")


@pytest.mark.parametrize("loss", ["cispo", "gspo"])
def test_loss_and_reward_plugins_from_the_command_line(tiny, tmp_path, loss):
    d, _, _ = tiny
    cfg = rl_args(d, tmp_path / loss, "--steps", "2", "--lr", "1e-2", "--loss", loss, "--mu", "2")
    argv = [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in vars(cfg).items() if k != "_given"]
    assert train.main(["grpo", *argv]) == 0
    saved = json.loads((tmp_path / loss / "config.json").read_text())
    assert saved["loss"] == loss and saved["reward"] == "test_train:a_share"
    rows = metrics(tmp_path / loss)
    assert len(rows) == 2 and all(0 <= r["reward_mean"] <= 1 and r["clip_frac"] >= 0 for r in rows)
    assert rows[1]["ratio_mean"] != 1.0  # mu = 2: the second epoch is off-policy


def test_cli_with_a_reward_plugin_module(tiny, tmp_path):
    """The real command line: a --reward plug-in imported by module path, --loss gspo, one step."""
    d, _, _ = tiny
    cfg = rl_args(d, tmp_path / "cli", "--steps", "1", "--loss", "gspo", "--agg", "seq_mean_token_mean")
    p = subprocess.run([sys.executable, "train.py", "grpo", "--init", cfg.init, "--data", cfg.data[0], "--out", cfg.out,
                        "--steps", "1", "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "4",
                        "--loss", "gspo", "--reward", "tests.test_train:a_share", "--progress", "false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MINIRLVR_NO_COMPILE="1", OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(metrics(tmp_path / "cli")) == 1
    p = subprocess.run([sys.executable, "train.py", "grpo", "--init", cfg.init, "--data", cfg.data[0],
                        "--reward", "no_such_module:fn"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "error: config: key 'reward'" in p.stderr and "Traceback" not in p.stderr
