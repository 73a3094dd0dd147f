"""Config errors name the key and where it came from; list flags keep paths whole; --help lists every key."""

import dataclasses

import pytest
import torch

from minirlvr.config import ConfigError, load_config
from minirlvr.grpo import GRPOConfig as RLConfig
from minirlvr.ppo import PPOConfig
from minirlvr.sft import PretrainConfig, SFTConfig


def test_defaults_then_toml_then_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 1e-4\ndata = ["a.jsonl", "b.jsonl"]\ngroup_size = 4\ninit = "m"\n')
    cfg = load_config(RLConfig, ["--config", str(f), "--lr", "3e-5", "--kl_in_reward", "true"])
    assert cfg.lr == 3e-5 and cfg.group_size == 4 and cfg.data == ["a.jsonl", "b.jsonl"] and cfg.kl_in_reward
    cfg = load_config(RLConfig, ["--init=m", "--data", "x.jsonl", "y.jsonl", "--group-size", "2"])
    assert cfg.data == ["x.jsonl", "y.jsonl"] and cfg.group_size == 2


def test_a_list_flag_takes_every_value_up_to_the_next_key_and_never_splits_one():
    # paths with spaces and commas stay whole; the experiments' `--data FILE` form still works
    cfg = load_config(RLConfig, ["--init", "m", "--data", "my data/gsm8k,v2.jsonl", "b.jsonl", "--lr", "-0"])
    assert cfg.data == ["my data/gsm8k,v2.jsonl", "b.jsonl"] and cfg.lr == 0.0
    assert load_config(RLConfig, ["--init", "m", "--data=a,b.jsonl"]).data == ["a,b.jsonl"]
    assert load_config(RLConfig, ["--data", "one.jsonl", "--init", "m"]).data == ["one.jsonl"]
    with pytest.raises(ConfigError, match=r"command line: key '--data' has no value"):
        load_config(RLConfig, ["--init", "m", "--data", "--lr", "1e-5"])
    with pytest.raises(ConfigError, match=r"command line: expected --key value, got 'x'"):
        load_config(RLConfig, ["--init", "m", "--lr", "1e-5", "x"])


@pytest.mark.parametrize("argv, pattern", [
    (["--init", "m", "--data", "d", "--kl_coeff", "1"], r"command line: unknown key 'kl_coeff'.*did you mean 'kl_coef'"),
    (["--init", "m", "--data", "d", "--group_size", "eight"], r"command line: key 'group_size' expects int, got 'eight'"),
    (["--init", "m", "--data", "d", "--group_size", "2.5"], r"key 'group_size' expects int"),
    (["--init", "m", "--data", "d", "--kl_in_reward", "maybe"], r"key 'kl_in_reward' expects true/false"),
    (["--init", "m", "--data", "d", "--advantage", "ppo2"], r"'advantage' must be one of"),
    (["--data", "d"], r"'init'"),
    (["--init", "m", "--data", "d", "--lr"], r"key '--lr' has no value"),
    (["--config", "/nonexistent/x.toml"], r"/nonexistent/x.toml: config file not found"),
])
def test_cli_errors_name_the_key(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(RLConfig, argv)


@pytest.mark.parametrize("argv, pattern", [
    (["--group_size", "1"], r"'group_size' must be >= 2, got 1"),
    (["--temperature", "0"], r"'temperature' must be > 0.*got 0.0"),
    (["--loss", "ppo"], r"'loss' must be one of \['cispo', 'gspo', 'ppo_clip'\]"),
    (["--kl_estimator", "k4"], r"'kl_estimator' must be one of \['k1', 'k2', 'k3'\]"),
    (["--agg", "sum"], r"'agg' must be one of"),
    (["--top_p", "0"], r"'top_p' must be in \(0, 1\]"),
    (["--minibatches", "100", "--prompts_per_step", "2", "--group_size", "4"], r"'minibatches' must not exceed"),
    (["--micro_batch_size", "-1"], r"'micro_batch_size' must be >= 0"),
    (["--reward", "nowhere"], r"key 'reward': reward 'nowhere': expected 'package.module:function'"),
    (["--reward", "no_such_module:fn"], r"key 'reward': .*cannot load it \(ModuleNotFoundError"),
])
def test_bad_rl_values_fail_before_anything_runs(argv, pattern):
    # B6: caught at load time with the key named, not after a rollout (NaN advantages) or as a traceback
    with pytest.raises(ConfigError, match=pattern):
        load_config(RLConfig, ["--init", "m", "--data", "d", *argv])


def test_off_policy_sampling_warns_and_ppo_checks_its_own_keys():
    with pytest.warns(UserWarning, match="off-policy"):
        load_config(RLConfig, ["--init", "m", "--data", "d", "--top_k", "20"])
    assert load_config(PPOConfig, ["--init", "m", "--data", "d", "--group_size", "1"]).out == "runs/ppo"
    with pytest.raises(ConfigError, match="'filter_zero_variance' has no effect in PPO"):
        load_config(PPOConfig, ["--init", "m", "--data", "d", "--filter_zero_variance", "true"])


def test_toml_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('vocab_sise = 100\n')
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'vocab_sise'.*'vocab_size'"):
        load_config(PretrainConfig, ["--config", str(f)])
    f.write_text('steps = "many"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: key 'steps' expects int"):
        load_config(PretrainConfig, ["--config", str(f)])
    f.write_text('steps = \n')
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_config(PretrainConfig, ["--config", str(f)])


@pytest.mark.parametrize("toml, pattern", [
    ('group_size = "8"', r"bad.toml: key 'group_size' expects int, got '8'"),
    ('group_size = 8.0', r"bad.toml: key 'group_size' expects int, got 8.0"),
    ('lr = "1e-5"', r"bad.toml: key 'lr' expects float"),
    ('kl_in_reward = "true"', r"bad.toml: key 'kl_in_reward' expects true/false"),
    ('data = "d.jsonl"', r"bad.toml: key 'data' expects a list"),
    ('init = 3', r"bad.toml: key 'init' expects a string, got 3"),
])
def test_toml_values_must_have_the_field_type(tmp_path, toml, pattern):
    f = tmp_path / "bad.toml"
    f.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=pattern):
        load_config(RLConfig, ["--config", str(f), "--init", "m", "--data", "d"])


def test_toml_ints_are_floats_where_a_float_is_expected_and_cli_strings_are_parsed(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text('init = "m"\ndata = ["d"]\nlr = 1\n')
    cfg = load_config(RLConfig, ["--config", str(f), "--group_size", "8", "--kl_in_reward", "yes"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.group_size == 8 and cfg.kl_in_reward is True


def test_a_toml_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes('init = "m"\nsystem = "r\u00e9sum\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{f}:2: not UTF-8 text \(byte 0xe9\)"):
        load_config(RLConfig, ["--config", str(f)])


@pytest.mark.parametrize("cls, argv, pattern", [
    (RLConfig, ["--lr", "-1"], r"config: 'lr' must be >= 0, got -1.0"),
    (RLConfig, ["--lr", "nan"], r"config: 'lr' must be >= 0, got nan"),
    (RLConfig, ["--warmup", "-1"], r"'warmup' must be >= 0"),
    (RLConfig, ["--kl_coef", "-0.1"], r"'kl_coef' must be >= 0"),
    (RLConfig, ["--min_lr_frac", "2"], r"'min_lr_frac' must be in \[0, 1\]"),
    (RLConfig, ["--save_every", "-2"], r"'save_every' must be >= -1"),
    (RLConfig, ["--stop_if_no_signal", "-1"], r"'stop_if_no_signal' must be >= 0"),
    (RLConfig, ["--answer_mode", "loose"], r"'answer_mode' must be one of \['flexible', 'math_verify', 'strict'\]"),
    (RLConfig, ["--report_to", "wandb"], r"'report_to' must be one of"),
    (PPOConfig, ["--gamma", "1.5"], r"'gamma' must be in \[0, 1\]"),
    (PPOConfig, ["--value_clip", "0"], r"'value_clip' must be > 0"),
    (SFTConfig, ["--lr", "-1"], r"config: 'lr' must be >= 0, got -1.0"),
    (SFTConfig, ["--batch_size", "0"], r"'batch_size' must be >= 1"),
    (PretrainConfig, ["--num_attention_heads", "5"], r"'num_attention_heads' must divide hidden_size, got 5"),
    (PretrainConfig, ["--model_type", "gpt2"], r"'model_type' must be one of \['llama', 'qwen2'\]"),
])
def test_out_of_range_values_name_the_key(cls, argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(cls, ["--init", "m", "--data", "d", *argv] if cls is not PretrainConfig else ["--data", "d", *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_this_torch_cannot_use_is_one_line():
    from minirlvr.optim import pick_device
    with pytest.raises(ConfigError, match=r"config: 'device' is 'cuda' but torch .* (CPU-only build|no GPU)"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match=r"'device' must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        pick_device("gpu")


@pytest.mark.parametrize("stage", ["pretrain", "sft", "grpo", "ppo"])
def test_stage_help_lists_every_key_with_type_default_and_meaning(stage, capsys):
    import train
    assert train.main([stage, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cls = train.stage_parts(stage)[0]
    for f in dataclasses.fields(cls):
        line = next((l for l in lines if l.strip().startswith(f"--{f.name} ")), None)
        assert line is not None, f.name
        parts = line.split(None, 3)  # --key TYPE DEFAULT meaning
        assert len(parts) == 4 and parts[3].strip(), line
        assert parts[1] in ("int", "float", "bool", "str", "list[str]"), line
