"""A run's life: Ctrl-C saves and prints a command that finishes the run exactly; --resume alone continues the
saved config; an OUT holding a run is not overwritten by accident; the model folder holds the model only (state
beside it, old layout still read, normal permissions, generation_config.json that stops at the end of turn);
every bad checkpoint, path or failed save is one line naming the file."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from minirlvr.checkpoint import CheckpointError, save_checkpoint
from minirlvr.config import ConfigError, load_config
from minirlvr.grpo import GRPOConfig, train_grpo
from minirlvr.model import Transformer
from minirlvr.optim import make_adamw
from minirlvr.run import Stopped
from minirlvr.tokenizer import Tokenizer
from test_train import Interrupt, _interrupt_at, metrics, rl_args, strip_times, tiny, train_rl, write_jsonl  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, MINIRLVR_NO_COMPILE="1", OMP_NUM_THREADS="1",
           PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def same_weights(a, b):
    sa, sb = Transformer.from_pretrained(a).state_dict(), Transformer.from_pretrained(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def lines(f):
    return [json.loads(l) for l in Path(f).read_text().splitlines()]


def cli_args(d, out, steps):
    cfg = rl_args(d, out)
    return ["grpo", "--init", cfg.init, "--data", cfg.data[0], "--out", str(out), "--steps", str(steps),
            "--prompts_per_step", "4", "--group_size", "4", "--max_new_tokens", "8", "--lr", "1e-3",
            "--reward", "tests.test_train:a_share", "--save_every", "0", "--progress", "false"]


def test_ctrl_c_saves_and_the_printed_command_finishes_the_run_exactly(tiny, tmp_path):
    d, _, _ = tiny
    a, b = tmp_path / "a", tmp_path / "b"
    assert subprocess.run([sys.executable, "train.py", *cli_args(d, a, 12)], cwd=ROOT, env=ENV,
                          capture_output=True, timeout=600).returncode == 0
    # a real SIGINT (reset to its default in the child: a test runner in the background may ignore it)
    proc = subprocess.Popen([sys.executable, "train.py", *cli_args(d, b, 12)], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not ((b / "metrics.jsonl").is_file() and (b / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted (SIGINT) after step" in err
    step = json.loads((b / "model" / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 12 and len(lines(b / "metrics.jsonl")) == step  # saved at once (save_every 0: never)
    command = err.strip().splitlines()[-1].strip()
    assert command == f"python train.py grpo --resume {b / 'model'}", err
    p = subprocess.run(["bash", "-c", command], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert strip_times(lines(a / "metrics.jsonl")) == strip_times(lines(b / "metrics.jsonl"))
    assert lines(a / "samples.jsonl") == lines(b / "samples.jsonl")
    assert same_weights(a / "model", b / "model")


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_a_signal_in_sft_and_ppo_saves_after_the_step_and_resumes_exactly(tiny, tmp_path, monkeypatch, stage):
    import minirlvr.grpo as G
    import minirlvr.sft as S
    d, _, chats = tiny
    if stage == "sft":
        args = ["sft", "--init", str(d / "pt" / "model"), "--data", chats, "--steps", "5", "--batch_size", "4",
                "--block_size", "32", "--progress", "false"]
    else:
        cfg = rl_args(d, tmp_path, algo="ppo")
        args = ["ppo", "--init", cfg.init, "--data", cfg.data[0], "--steps", "4", "--prompts_per_step", "4",
                "--group_size", "2", "--max_new_tokens", "8", "--reward", "test_train:a_share", "--progress", "false"]
    assert train.main(args + ["--out", str(tmp_path / "a")]) == 0
    module = S if stage == "sft" else G
    real = module.check_finite

    def sigterm_at_step_2(loss, step):  # mid-step, as a user's kill would arrive
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(loss, step)
    with monkeypatch.context() as mp:
        mp.setattr(module, "check_finite", sigterm_at_step_2)
        with pytest.raises(Stopped, match=r"interrupted \(SIGTERM\)") as e:
            train.run(stage, args[1:] + ["--out", str(tmp_path / "b")])
    assert e.value.step == 3 and e.value.code == 130
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the loop gave the handler back
    assert train.main([stage, "--resume", str(tmp_path / "b" / "model")]) == 0
    assert strip_times(lines(tmp_path / "a" / "metrics.jsonl")) == strip_times(lines(tmp_path / "b" / "metrics.jsonl"))
    assert same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")


def test_resume_alone_continues_the_saved_config_and_may_only_change_resumable_keys(tiny, tmp_path, capsys):
    d, _, _ = tiny
    assert train.main(cli_args(d, tmp_path / "a", 5)) == 0
    assert train.main(cli_args(d, tmp_path / "b", 3)) == 0
    b = str(tmp_path / "b" / "model")
    # GRPO's lr is constant by default, so 3 steps and then 2 more are the 5-step run
    assert train.main(["grpo", "--resume", b, "--steps", "5", "--progress", "true", "--save_every", "2"]) == 0
    assert strip_times(metrics(tmp_path / "a")) == strip_times(metrics(tmp_path / "b"))
    assert same_weights(tmp_path / "a" / "model", b)
    capsys.readouterr()
    for flag, value in [("--group_size", "8"), ("--kl_coef", "0.2"), ("--data", "other.jsonl"), ("--seed", "1")]:
        assert train.main(["grpo", "--resume", b, "--steps", "9", flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"key '{flag[2:]}' is" in err and "in the checkpoint" in err, err
    assert train.main(["grpo", "--resume", b]) == 2
    assert "at step 5 of 5: nothing to do" in capsys.readouterr().err
    assert train.main(["grpo", "--resume", str(tmp_path / "b"), "--steps", "6"]) == 0  # OUT works as well as OUT/model


def test_a_resume_continues_beside_its_checkpoint_from_any_folder(tiny, tmp_path, monkeypatch):
    d, _, _ = tiny
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    args = cli_args(d, "run", 2)  # a relative --out, saved as such
    args[args.index("tests.test_train:a_share")] = "test_train:a_share"  # importable from any folder
    assert train.main(args) == 0
    monkeypatch.chdir(tmp_path)
    assert train.main(["grpo", "--resume", "here/run/model", "--steps", "3"]) == 0
    assert len(metrics(tmp_path / "here" / "run")) == 3 and not (tmp_path / "run").exists()


def test_an_out_holding_a_run_is_refused_unless_overwrite(tiny, tmp_path, capsys):
    d, _, _ = tiny
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("a launcher's log\n")  # experiments write it before train.py starts
    assert train.main(cli_args(d, out, 2)) == 0
    first = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train.main(cli_args(d, out, 3)) == 2
    err = capsys.readouterr().err
    assert f"error: {out}: holds a run (config.json, metrics.jsonl, samples.jsonl, model, state)" in err
    assert "--overwrite replaces it" in err and f"--resume {out / 'model'} continues it" in err
    assert (out / "metrics.jsonl").read_text() == first  # nothing touched
    (out / "state" / "stray").mkdir()
    assert train.main(cli_args(d, out, 3) + ["--overwrite", "true"]) == 0
    assert len(metrics(out)) == 3 and not (out / "state" / "stray").exists() and (out / "train.log").is_file()
    # a resume writes into its own run; into another one only with --overwrite given again (never inherited)
    other = tmp_path / "other"
    assert train.main(cli_args(d, other, 2)) == 0
    capsys.readouterr()
    assert train.main(["grpo", "--resume", str(out / "model"), "--steps", "4", "--out", str(other)]) == 2
    assert f"error: {other}: holds a run" in capsys.readouterr().err and len(metrics(other)) == 2
    assert train.main(["grpo", "--resume", str(out / "model"), "--steps", "4"]) == 0 and len(metrics(out)) == 4


def test_a_run_that_failed_before_its_first_step_does_not_block_the_corrected_command(tiny, tmp_path, capsys):
    """A bad data file fails after OUT/config.json is written (the data list may come from a resumed config);
    a Ctrl-C before step 0 ends leaves empty logs too. Neither is a run to protect with --overwrite."""
    d, _, _ = tiny
    out = tmp_path / "run"
    args = cli_args(d, out, 1)
    good = args[args.index("--data") + 1]
    args[args.index("--data") + 1] = str(tmp_path / "typo.jsonl")
    assert train.main(args) == 2 and "typo.jsonl: data file not found" in capsys.readouterr().err
    assert (out / "config.json").is_file()
    (out / "metrics.jsonl").write_text("")  # what a run stopped inside its first step leaves
    args[args.index("--data") + 1] = good
    assert train.main(args) == 0 and len(metrics(out)) == 1
    assert train.main(args) == 2 and "holds a run" in capsys.readouterr().err  # one logged step is a run


def test_the_model_folder_holds_the_model_and_the_state_lives_beside_it(tiny, tmp_path):
    d, _, _ = tiny
    cfg = rl_args(d, tmp_path / "ppo", "--steps", "3", "--save_every", "1", algo="ppo")
    train_rl(cfg, "ppo")
    model, state = tmp_path / "ppo" / "model", tmp_path / "ppo" / "state"
    assert sorted(p.name for p in model.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "trainer_state.json"]
    assert [p.name for p in state.iterdir()] == ["step_000003"]  # older states go once the model is committed
    assert {p.name for p in (state / "step_000003").iterdir()} == {"optimizer.safetensors", "rng.safetensors",
                                                                  "trainer_state.json", "critic"}
    saved = json.loads((model / "trainer_state.json").read_text())
    assert set(saved) == {"step", "config"} and saved["step"] == 3
    umask = os.umask(0)
    os.umask(umask)
    for p in [model, state, *model.rglob("*"), *state.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~umask, p


def test_checkpoints_in_the_old_layout_still_resume(tiny, tmp_path, monkeypatch):
    """Before the state moved out, everything lived in OUT/model (results/ and shipped runs were written so)."""
    import minirlvr.grpo as G
    d, _, _ = tiny
    common = ["--steps", "4", "--save_every", "2", "--lr", "1e-3", "--kl_coef", "0.1"]
    train_rl(rl_args(d, tmp_path / "a", *common, algo="ppo"), "ppo")
    with monkeypatch.context() as mp:
        _interrupt_at(mp, G, 2)
        with pytest.raises(Interrupt):
            train_rl(rl_args(d, tmp_path / "b", *common, algo="ppo"), "ppo")
    model, sdir = tmp_path / "b" / "model", tmp_path / "b" / "state" / "step_000002"
    old = {**json.loads((sdir / "trainer_state.json").read_text()), **json.loads((model / "trainer_state.json").read_text())}
    (model / "trainer_state.json").write_text(json.dumps(old))
    for name in ("optimizer.safetensors", "rng.safetensors", "critic"):
        shutil.move(sdir / name, model / name)
    shutil.rmtree(tmp_path / "b" / "state")
    train_rl(rl_args(d, tmp_path / "b", *common, "--resume", str(model), algo="ppo"), "ppo")
    assert strip_times(metrics(tmp_path / "a")) == strip_times(metrics(tmp_path / "b"))
    assert not (model / "optimizer.safetensors").exists() and not (model / "critic").exists()  # not carried over


def test_generation_config_makes_transformers_stop_at_the_end_of_the_turn(tmp_path):
    transformers = pytest.importorskip("transformers")
    base = ROOT / "assets" / "miniworld-base"
    model, tok = Transformer.from_pretrained(base), Tokenizer.from_pretrained(base)
    save_checkpoint(tmp_path, model, make_adamw(model.parameters(), 1e-3, 0.0), 0, {}, tok)
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "model")
    assert sorted(gen.eos_token_id) == sorted(tok.stop_ids) and tok.token_to_id("<|im_end|>") in gen.eos_token_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    ids = tok.apply_chat_template([{"role": "user", "content": "Mia has 3 pens. She buys 4 more. How many pens?"}])
    out = hf.generate(torch.tensor([ids]), max_new_tokens=200, do_sample=False)[0, len(ids):].tolist()
    assert len(out) < 200 and out[-1] in tok.stop_ids and not set(out[:-1]) & set(tok.stop_ids), tok.decode(out)


@pytest.mark.parametrize("damage, words", [
    (lambda m, s: (s / "optimizer.safetensors").write_bytes((s / "optimizer.safetensors").read_bytes()[:100]),
     ["optimizer.safetensors: corrupt or truncated"]),
    (lambda m, s: (s / "rng.safetensors").unlink(), ["rng.safetensors: file not found"]),
    (lambda m, s: shutil.rmtree(s), ["step_000002: not found", "beside the model folder"]),
    (lambda m, s: (m / "trainer_state.json").write_text("{"), ["trainer_state.json: invalid JSON"]),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tiny, tmp_path, capsys, damage, words):
    d, _, _ = tiny
    assert train.main(cli_args(d, tmp_path / "r", 2)) == 0
    damage(tmp_path / "r" / "model", tmp_path / "r" / "state" / "step_000002")
    capsys.readouterr()
    assert train.main(["grpo", "--resume", str(tmp_path / "r" / "model"), "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {tmp_path / 'r'}"), err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("flag, value, words", [("--init", "nope", ["nope: no such directory", "--init takes"]),
                                                ("--init", ".", [": not a model folder (no config.json)"]),
                                                ("--ref", "no/ref", ["no/ref: no such directory", "--ref takes"]),
                                                ("--resume", "gone", ["gone: no such directory", "--resume takes"])])
def test_a_model_path_that_is_not_a_model_is_one_line(tiny, tmp_path, capsys, flag, value, words):
    d, _, _ = tiny
    args = cli_args(d, tmp_path / "x", 1)
    assert train.main(args + [flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "x").exists()


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tiny, tmp_path):
    """A full disk, as the file-size limit makes it: the write fails with EFBIG ('File too large')."""
    d, _, _ = tiny
    assert train.main(cli_args(d, tmp_path / "r", 1)) == 0
    model = Transformer.from_pretrained(tmp_path / "r" / "model")
    tok = Tokenizer.from_pretrained(tmp_path / "r" / "model")
    opt = make_adamw(model.parameters(), 1e-3, 0.0)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()  # Adam moments: an optimizer file twice the model's size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        with pytest.raises(CheckpointError) as e:
            save_checkpoint(tmp_path / "r", model, opt, 7, {"step": 7}, tok)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert re.match(rf"{tmp_path / 'r'}/\S+: cannot write the checkpoint \(.*File too large.*\); the previous one is kept",
                    str(e.value)) and "\n" not in str(e.value), e.value
    assert json.loads((tmp_path / "r" / "model" / "trainer_state.json").read_text())["step"] == 1
    assert [p.name for p in (tmp_path / "r" / "state").iterdir()] == ["step_000001"]  # no temp folder left
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]
    Transformer.from_pretrained(tmp_path / "r" / "model")
    assert train.main(["grpo", "--resume", str(tmp_path / "r" / "model"), "--steps", "2"]) == 0


def test_no_learning_signal_warns_logs_and_stops_after_n_steps(tiny, tmp_path, capsys):
    d, _, _ = tiny
    args = cli_args(d, tmp_path / "z", 6)
    args[args.index("tests.test_train:a_share")] = "test_checkpoint:always_zero"
    assert train.main(args + ["--stop_if_no_signal", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("no learning signal: in every group all rewards are equal (mean 0)") == 2
    assert "of responses hit max_new_tokens=8" in err and "samples.jsonl" in err
    assert "stopped: no learning signal in 2 steps in a row after step 2" in err
    assert err.strip().endswith(f"--resume {tmp_path / 'z' / 'model'} --stop_if_no_signal 0")
    rows = metrics(tmp_path / "z")
    assert len(rows) == 2 and all(r["zero_variance_share"] == 1.0 and 0 <= r["truncated_share"] <= 1 for r in rows)
    samples = lines(tmp_path / "z" / "samples.jsonl")
    assert len(samples) == 2 * 4 and [s["step"] for s in samples] == [0] * 4 + [1] * 4
    assert set(samples[0]) == {"step", "where", "prompt", "response", "reward", "correct", "truncated", "gold"}
    assert samples[0]["reward"] == 0.0 and re.fullmatch(r".*prompts\.jsonl:[1-4]", samples[0]["where"])
    assert train.main(args + ["--steps", "2", "--out", str(tmp_path / "last"), "--stop_if_no_signal", "2"]) == 0
    assert "stopped" not in capsys.readouterr().err  # at the last step a run simply ends (with its warnings)


def always_zero(rec, text):
    return 0.0


def test_truncated_share_counts_responses_cut_by_the_budget():
    from minirlvr.grpo import truncated_rows
    from minirlvr.sampler import build_batch
    batch = build_batch([[5, 6], [7]], [[1, 2, 9], [3, 4, 2]])  # 2 is a stop id; budget 3
    assert truncated_rows(batch, [2], 3).tolist() == [True, False]
    assert truncated_rows(build_batch([[5]], [[1, 2]]), [2], 3).tolist() == [False]


def test_math_rewards_follow_answer_mode_and_flexible_accuracy_is_logged(tmp_path):
    from minirlvr.rewards import task_reward
    rec = {"prompt": "2+2?", "answer": "4"}
    assert task_reward(rec, "I think it is 4") == 0.0  # strict: needs '#### 4' or \boxed{4}
    assert task_reward({**rec, "_answer_mode": "flexible"}, "I think it is 4") == 1.0
    cfg = load_config(GRPOConfig, ["--init", "m", "--data", "d", "--answer_mode", "flexible"])
    assert cfg.answer_mode == "flexible"
    with pytest.raises(ConfigError, match="answer_mode"):
        load_config(GRPOConfig, ["--init", "m", "--data", "d", "--answer_mode", "lenient"])


def test_report_to_tensorboard_gets_every_row_and_is_closed(tiny, tmp_path, monkeypatch, capsys):
    import importlib.util

    import minirlvr.run as M
    d, _, _ = tiny
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert train.main(cli_args(d, tmp_path / "none", 2) + ["--report_to", "tensorboard"]) == 2
    assert "error: config: 'report_to' is 'tensorboard' but the tensorboard package is missing: pip install" \
        in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    seen = []

    class Fake:
        def __init__(self, log_dir, purge_step=None):
            seen.append(("open", Path(log_dir).name, purge_step))

        def write(self, row):
            seen.append(("row", row["step"]))

        def close(self):
            seen.append(("close",))
    monkeypatch.setattr(M, "TensorBoardWriter", Fake)
    assert train.main(cli_args(d, tmp_path / "tb", 2) + ["--report_to", "tensorboard"]) == 0
    assert seen == [("open", "tensorboard", None), ("row", 0), ("row", 1), ("close",)]


def test_more_steps_on_a_cosine_schedule_says_the_run_differs(tiny, tmp_path, capsys):
    d, _, chats = tiny
    args = ["sft", "--init", str(d / "pt" / "model"), "--data", chats, "--batch_size", "4", "--block_size", "32",
            "--progress", "false", "--out", str(tmp_path / "s")]  # a later --out wins
    assert train.main(args + ["--steps", "2", "--warmup", "2"]) == 0
    assert train.main(["sft", "--resume", str(tmp_path / "s" / "model"), "--steps", "3"]) == 0
    assert "note" not in capsys.readouterr().err  # 2 warmup steps do not depend on the total: the same run
    assert train.main(args + ["--steps", "2", "--warmup", "0", "--out", str(tmp_path / "c")]) == 0
    assert train.main(["sft", "--resume", str(tmp_path / "c" / "model"), "--steps", "3"]) == 0
    assert ("note: steps 2 -> 3 moves the end of the cosine lr decay; the steps before 2 followed the 2-step "
            "schedule, so this is not the run --steps 3 makes from the start") in capsys.readouterr().err


def test_a_checkpoint_is_saved_every_tenth_of_the_run_by_default():
    from minirlvr.run import save_due
    due = lambda **k: [s for s in range(k["steps"]) if save_due(GRPOConfig(init="m", data=["d"], **k), s)]
    assert due(steps=50) == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49]
    assert due(steps=3) == [0, 1, 2] and due(steps=25) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 24]
    assert due(steps=50, save_every=0) == [49] and due(steps=50, save_every=20) == [19, 39, 49]


def test_a_second_signal_within_a_second_is_the_same_request_and_a_later_one_acts_at_once():
    from minirlvr.run import StopSignal
    # a test run launched as a background job inherits an ignored SIGINT, which StopSignal rightly leaves alone
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_signal_check(StopSignal)
    finally:
        signal.signal(signal.SIGINT, previous)


def _second_signal_check(StopSignal):
    with StopSignal() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun forwards the terminal's Ctrl-C: the same request
        time.sleep(0.05)
        assert signals.requested(torch.device("cpu")) == "interrupted (SIGINT)"
        time.sleep(1.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the user again, later: stop now
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
