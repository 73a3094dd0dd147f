"""Run by tests/test_ddp.py, either plainly or under torchrun: one training stage, with the RL rollout computed on
the *global* batch and then sharded, so that 1 and N processes see identical samples (the sampler's random
stream depends on the batch it draws for) and only the update path is compared."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import minirlvr.grpo as G  # noqa: E402
import minirlvr.ppo as P  # noqa: E402
from minirlvr import dist  # noqa: E402
from minirlvr.data import row_batch  # noqa: E402
from minirlvr.rollout import rollout  # noqa: E402


def global_then_shard(run, cfg, step):
    """step_rollout of rank 0 of a single process, then this rank's rows of it."""
    idx = row_batch(len(run.records), step, cfg.prompts_per_step, cfg.seed)
    run.policy.eval()
    ro = rollout(run.policy, run.tok, [run.records[i] for i in idx.tolist()], cfg, seed=cfg.seed * 1_000_003 + step * 101)
    return ro.rows(dist.shard(len(ro.rewards)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    import train
    G.step_rollout = P.step_rollout = global_then_shard
    sys.exit(train.main(sys.argv[1:]))
