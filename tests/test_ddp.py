"""Data parallelism: `torchrun --nproc_per_node 2` gives the same update as one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minirlvr.model import Transformer

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc, stage, args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIRLVR_NO_COMPILE="1")
    if nproc == 1:
        cmd = [sys.executable, str(HERE / "ddp_worker.py"), stage, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
               str(HERE / "ddp_worker.py"), stage, *args]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]


def assert_same_weights(a, b, atol):
    ma, mb = Transformer.from_pretrained(a), Transformer.from_pretrained(b)
    for (k, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=k)
    return ma, mb


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    sys.path.insert(0, str(HERE))
    from test_train import TEXTS, write_jsonl
    d = tmp_path_factory.mktemp("ddp")
    write_jsonl(d / "pt.jsonl", [{"text": t} for t in TEXTS * 8])
    write_jsonl(d / "prompts.jsonl", [{"prompt": f"say {w}"} for w in ("cat", "dog", "fox", "sun")])
    args = ["--data", str(d / "pt.jsonl"), "--steps", "3", "--batch_size", "8", "--block_size", "32",
            "--vocab_size", "300", "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2",
            "--num_attention_heads", "4", "--num_key_value_heads", "2", "--lr", "3e-3", "--progress", "false"]
    return d, args


@pytest.fixture(scope="module")
def init(base):
    """The 1-process pretrained model of test_pretrain_two_processes_equal_one (made here if it did not run)."""
    d, args = base
    if not (d / "one" / "model").exists():
        run(1, "pretrain", args + ["--out", str(d / "one")], d)
    return d / "one" / "model"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_pretrain_two_processes_equal_one(base):
    d, args = base
    run(1, "pretrain", args + ["--out", str(d / "one")], d)
    run(2, "pretrain", args + ["--out", str(d / "two"), "--tokenizer", str(d / "one" / "model")], d)
    assert_same_weights(d / "one" / "model", d / "two" / "model", atol=1e-6)
    ma = Transformer.from_pretrained(d / "one" / "model")
    assert not torch.equal(ma.model.norm.weight, torch.ones_like(ma.model.norm.weight))  # it did train


RL_ARGS = ["--steps", "2", "--prompts_per_step", "4", "--group_size", "4", "--max_new_tokens", "8", "--lr", "1e-2",
           "--kl_coef", "0.1", "--minibatches", "2", "--progress", "false"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("algo, extra", [
    # B3: the 'cat' group's rewards are all equal, so the filter empties its rows, which all live on rank 0:
    # every rank must weigh a response by the global count of responses that have tokens
    ("grpo", ["--reward", "test_train:a_share_but_cat", "--filter_zero_variance", "true", "--agg", "seq_mean_token_mean"]),
    ("ppo", ["--reward", "test_train:a_share"]),  # B4: advantages whitened over both ranks, not per rank
])
def test_rl_two_processes_equal_one(base, init, algo, extra):
    d, _ = base
    args = [algo, "--init", str(init), "--data", str(d / "prompts.jsonl"), *RL_ARGS, *extra]
    run(1, args[0], args[1:] + ["--out", str(d / f"{algo}1")], d)
    # the two processes also split each minibatch into micro-batches of 3 rows: the same update
    run(2, args[0], args[1:] + ["--out", str(d / f"{algo}2"), "--micro_batch_size", "3"], d)
    # Summation order differs between 1 and 2 processes, and Adam's first steps amplify float noise in tiny
    # gradient entries: measured differences ~3e-5, against updates of ~4e-2 per parameter tensor.
    ma, _ = assert_same_weights(d / f"{algo}1" / "model", d / f"{algo}2" / "model", atol=2e-4)
    start = Transformer.from_pretrained(init).state_dict()
    for k, v in ma.state_dict().items():
        assert (v - start[k]).abs().max() > 1e-2, k  # every tensor moved far more than the tolerance


def test_collectives_get_tensors_on_the_training_device(base, init, monkeypatch, tmp_path):
    """B1: NCCL reduces only GPU tensors, so a collective on torch.tensor(a Python number) (a CPU tensor)
    crashes multi-GPU runs. In a fake two-rank world, every tensor reaching a collective must come from the
    batch's own (device) tensors: none may be built by torch.tensor() without a device."""
    import minirlvr.grpo as G
    import minirlvr.sft as S
    from minirlvr import dist
    from minirlvr.config import load_config
    from minirlvr.ppo import PPOConfig, train_ppo
    sys.path.insert(0, str(HERE))
    from test_train import write_jsonl
    d, args = base
    real_tensor = torch.tensor
    host_made = []

    def spy_tensor(*a, **k):
        t = real_tensor(*a, **k)
        if "device" not in k:
            host_made.append(t)
        return t
    summed, real_all_sum = [], dist.all_sum

    def spy_all_sum(x):
        summed.append(x)
        return real_all_sum(x)
    monkeypatch.setattr(torch, "tensor", spy_tensor)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_sum", spy_all_sum)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: None)
    monkeypatch.setattr(torch.distributed, "all_gather", lambda out, t: [o.copy_(t) for o in out])
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)
    rl = ["--init", str(init), "--data", str(d / "prompts.jsonl"), *RL_ARGS, "--steps", "1",
          "--reward", "test_train:a_share"]
    G.train_grpo(load_config(G.GRPOConfig, rl + ["--out", str(tmp_path / "grpo")]))
    train_ppo(load_config(PPOConfig, rl + ["--out", str(tmp_path / "ppo")]))
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "the cat"}]}] * 8)
    S.sft(load_config(S.SFTConfig, ["--init", str(init), "--data", chats, "--steps", "1", "--batch_size", "4",
                                    "--block_size", "32", "--progress", "false", "--out", str(tmp_path / "sft")]))
    assert len(summed) > 10, "the fake world ran no collective"
    assert not [x for x in summed if any(x is h for h in host_made)]
