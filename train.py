"""Training CLI: one stage per subcommand, one config dataclass per stage.

    python train.py pretrain --out runs/pt --data world/pretrain.jsonl --steps 1500
    python train.py sft      --out runs/sft --init runs/pt/model --data world/align_sft.jsonl
    python train.py grpo     --out runs/grpo --init runs/sft/model --data world/rl_math_train.jsonl --kl_coef 0.05
    python train.py ppo      --out runs/ppo --init runs/sft/model --data world/rl_math_train.jsonl
    python train.py grpo ... --config my.toml --lr 1e-5          # TOML first, then flags
    python train.py grpo --resume runs/grpo/model --out runs/grpo ...   # continue exactly where it stopped
    torchrun --nproc_per_node 2 train.py grpo ...                # data parallel (gloo on CPU, nccl on GPU)

The resolved config is saved beside every checkpoint (OUT/model/trainer_state.json) and in OUT/config.json.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from minirlvr import dist
from minirlvr.config import ConfigError, load_config
from minirlvr.data import DataError
from minirlvr.model import CheckpointError

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
        for name in STAGES:
            print(f"{name}: " + " ".join(f"--{f}" for f in stage_parts(name)[0].__dataclass_fields__))
        return 0
    try:
        out = run(argv[0], argv[1:])
    except (ConfigError, DataError, CheckpointError) as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.finish()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
