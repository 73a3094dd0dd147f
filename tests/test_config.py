"""Config errors name the key and where it came from."""

import pytest

from minirlvr.config import ConfigError, load_config
from minirlvr.grpo import GRPOConfig as RLConfig
from minirlvr.ppo import PPOConfig
from minirlvr.sft import PretrainConfig


def test_defaults_then_toml_then_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 1e-4\ndata = ["a.jsonl", "b.jsonl"]\ngroup_size = 4\ninit = "m"\n')
    cfg = load_config(RLConfig, ["--config", str(f), "--lr", "3e-5", "--kl_in_reward", "true"])
    assert cfg.lr == 3e-5 and cfg.group_size == 4 and cfg.data == ["a.jsonl", "b.jsonl"] and cfg.kl_in_reward
    cfg = load_config(RLConfig, ["--init=m", "--data", "x.jsonl,y.jsonl", "--group-size", "2"])
    assert cfg.data == ["x.jsonl", "y.jsonl"] and cfg.group_size == 2


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
