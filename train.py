"""Training CLI: one stage per subcommand, one config dataclass per stage (`python train.py STAGE --help`).

    python train.py pretrain --out runs/pt --data world/pretrain.jsonl --steps 1500
    python train.py sft      --out runs/sft --init runs/pt/model --data world/align_sft.jsonl
    python train.py grpo     --out runs/grpo --init runs/sft/model --data world/rl_math_train.jsonl --kl_coef 0.05
    python train.py ppo      --out runs/ppo --init runs/sft/model --data world/rl_math_train.jsonl
    python train.py grpo ... --config my.toml --lr 1e-5          # TOML first, then flags
    python train.py grpo --resume runs/grpo/model                # continue exactly where it stopped
    python train.py grpo --resume runs/grpo/model --steps 80     # ... and train further
    torchrun --nproc_per_node 2 train.py grpo ...                # data parallel (gloo on CPU, nccl on GPU)

A run writes OUT/model (an HF folder), OUT/state (optimizer and RNG state, to resume), OUT/metrics.jsonl
(and for RL OUT/samples.jsonl) and OUT/config.json, the resolved config. It saves a checkpoint every tenth of
its steps by default; Ctrl-C (or SIGTERM) finishes the step, saves, prints the command that continues the run
and exits with 130. An OUT that already holds a run is refused unless --overwrite.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from minirlvr import dist
from minirlvr.checkpoint import CheckpointError
from minirlvr.config import ConfigError, config_help, load_config
from minirlvr.data import DataError
from minirlvr.run import Stopped, resume_command

# stage -> (module, config class, loop); a stage imports only its own module
STAGES = {"pretrain": ("minirlvr.sft", "PretrainConfig", "pretrain"), "sft": ("minirlvr.sft", "SFTConfig", "sft"),
          "grpo": ("minirlvr.grpo", "GRPOConfig", "train_grpo"), "ppo": ("minirlvr.ppo", "PPOConfig", "train_ppo")}


def stage_parts(stage: str):
    module, config, loop = STAGES[stage]
    module = importlib.import_module(module)
    return getattr(module, config), getattr(module, loop)


def run(stage: str, argv: list[str]) -> Path:
    if stage not in STAGES:
        raise ConfigError(f"command line: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    config, train = stage_parts(stage)
    return train(load_config(config, argv))  # the loop saves the resolved config as OUT/config.json


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print(f"stages: {', '.join(STAGES)}; `python train.py STAGE --help` lists a stage's keys")
        return 0
    if argv[0] in STAGES and any(a in ("-h", "--help") for a in argv[1:]):
        print(f"python train.py {argv[0]} [--config FILE.toml] [--key value ...]\n\n"
              f"keys (type, default, meaning); a list key takes every following value up to the next --key:\n"
              + config_help(stage_parts(argv[0])[0]))
        return 0
    try:
        out = run(argv[0], argv[1:])
    except (ConfigError, DataError, CheckpointError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # a signal, or no learning signal: the checkpoint is saved
        if dist.rank() == 0:
            print(f"{e} after step {e.step}; saved {e.checkpoint}. Continue with:\n  "
                  f"{resume_command(argv[0], e.checkpoint, e.flags)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # before the first step, or a second Ctrl-C
        print("\ninterrupted; nothing saved since the last checkpoint", file=sys.stderr)
        return 130
    finally:
        dist.finish()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
