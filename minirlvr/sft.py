"""Pretraining and supervised fine-tuning: next-token loss on packed sequences.

Pretraining trains on every token of a packed stream of documents and chats; SFT trains on assistant tokens
only (including the end-of-turn token, so the model learns to stop). Both share one loop, `train_lm`, which
reads top to bottom: batch -> forward (hidden states) -> chunked token log-probs -> loss -> step -> log.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minirlvr import dist
from minirlvr.checkpoint import CheckpointError, restore_training, save_checkpoint
from minirlvr.config import ConfigError, check
from minirlvr.data import pack_examples, pretrain_stream, read_many, row_batch, sft_examples, stream_batch, to_messages
from minirlvr.model import SUPPORTED_MODEL_TYPES, ModelConfig, Transformer
from minirlvr.optim import apply_update, autocast, check_finite, lr_at, make_adamw, set_lr
from minirlvr.run import StopSignal, after_step, check_report_to, run_log, start_training
from minirlvr.tokenizer import SPECIAL_TOKENS, THINK_TOKENS, Tokenizer, train_bpe


@dataclass
class LMConfig:
    """Fields shared by pretraining and SFT."""
    out: str = "runs/lm"          # run folder: model/, state/, metrics.jsonl, config.json
    data: list[str] = field(default_factory=list)  # JSONL files
    steps: int = 1000             # optimiser steps
    batch_size: int = 32          # global rows per optimiser step (split over processes)
    grad_accum: int = 1           # micro-batches per step (batch_size must divide by grad_accum * processes)
    block_size: int = 256         # tokens per row (packed sequences)
    lr: float = 1e-3              # peak learning rate (AdamW)
    min_lr_frac: float = 0.1      # final lr as a share of lr (cosine decay)
    warmup: int = 50              # linear warmup steps
    weight_decay: float = 0.1     # AdamW weight decay (matrices only)
    grad_clip: float = 1.0        # max gradient norm; 0: no clipping
    bf16: bool = False            # bf16 autocast (CPU and CUDA)
    seed: int = 0                 # seeds data order and init
    save_every: int = -1          # checkpoint every N steps and after the last; -1: every steps/10; 0: last only
    device: str = "auto"          # auto (cuda when available) | cpu | cuda | cuda:N
    resume: str = ""              # OUT/model of an earlier run: continue it with its saved config
    overwrite: bool = False       # replace a run already in out (else refused)
    report_to: str = ""           # 'tensorboard': also log to OUT/tensorboard (pip install tensorboard)
    progress: bool = True         # one-line progress display

    def validate(self):
        check([(k, getattr(self, k), getattr(self, k) >= 1, "must be >= 1")
               for k in ("steps", "batch_size", "grad_accum", "block_size")]
              + [(k, getattr(self, k), getattr(self, k) >= 0, "must be >= 0")
                 for k in ("lr", "warmup", "weight_decay", "grad_clip", "seed")] + [
            ("data", self.data, self.data or self.resume, "must list at least one JSONL file"),
            ("batch_size", self.batch_size, self.batch_size % self.grad_accum == 0, "must be divisible by 'grad_accum'"),
            ("min_lr_frac", self.min_lr_frac, 0 <= self.min_lr_frac <= 1, "must be in [0, 1]"),
            ("save_every", self.save_every, self.save_every >= -1, "must be >= -1 (-1: every tenth of the steps)")])
        check_report_to(self.report_to)


@dataclass
class PretrainConfig(LMConfig):
    out: str = "runs/pretrain"    # run folder: model/, state/, metrics.jsonl, config.json
    tokenizer: str = ""           # a dir with tokenizer.json; empty: train byte-level BPE on `data`
    vocab_size: int = 2048        # BPE vocabulary when training a tokenizer
    hidden_size: int = 192        # model width
    intermediate_size: int = 512  # MLP width
    num_hidden_layers: int = 4    # decoder layers
    num_attention_heads: int = 6  # query heads
    num_key_value_heads: int = 2  # key/value heads (grouped-query attention)
    max_position_embeddings: int = 512  # longest sequence RoPE is set up for
    model_type: str = "llama"     # llama | qwen2 (the HF architecture written to config.json)

    def validate(self):
        super().validate()
        check([(k, getattr(self, k), getattr(self, k) >= 1, "must be >= 1")
               for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "max_position_embeddings")] + [
            ("model_type", self.model_type, self.model_type in SUPPORTED_MODEL_TYPES,
             f"must be one of {list(SUPPORTED_MODEL_TYPES)}"),
            ("num_attention_heads", self.num_attention_heads, self.hidden_size % self.num_attention_heads == 0,
             "must divide hidden_size"),
            ("num_key_value_heads", self.num_key_value_heads, self.num_attention_heads % self.num_key_value_heads == 0,
             "must divide num_attention_heads"),
            ("block_size", self.block_size, self.block_size <= self.max_position_embeddings,
             "must not exceed max_position_embeddings")])


@dataclass
class SFTConfig(LMConfig):
    out: str = "runs/sft"         # run folder: model/, state/, metrics.jsonl, config.json
    init: str = ""                # HF model dir (with tokenizer) to start from
    steps: int = 300              # optimiser steps
    lr: float = 3e-4              # peak learning rate (AdamW)
    warmup: int = 10              # linear warmup steps
    weight_decay: float = 0.0     # AdamW weight decay (matrices only)
    pack: bool = True             # False: one chat per row, so batch_size counts prompts (as RL's prompts_per_step)

    def validate(self):
        super().validate()
        if not self.init and not self.resume:
            raise ConfigError("config: 'init' (an HF model directory) is required for sft")


def lm_loss(model: Transformer, ids: torch.Tensor, loss_mask: torch.Tensor, norm: float) -> torch.Tensor:
    """Sum of next-token NLL over masked targets, divided by `norm` (the global count of masked targets).

    ids, loss_mask [B, T+1]: position t predicts token t+1; loss_mask[:, 1:] selects which targets count.
    """
    from kernels import token_logprobs
    hidden = model(ids[:, :-1], return_hidden=True)
    targets = ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    logp = token_logprobs(hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets.reshape(-1))
    return -logp.sum() / norm


def train_lm(cfg: LMConfig, model: Transformer, tok: Tokenizer, rows: torch.Tensor, masks: torch.Tensor | None,
             stream: torch.Tensor | None = None, state: dict | None = None) -> Path:
    """The loop. Either `stream` (pretraining: random blocks cut from one token stream) or packed `rows`/`masks`;
    state: the resumed checkpoint's (start_training)."""
    world, device = dist.world_size(), next(model.parameters()).device
    opt = make_adamw(model.parameters(), cfg.lr, cfg.weight_decay)
    start = restore_training(state, opt)
    log, bar = run_log(cfg, start)
    micro = cfg.batch_size // (cfg.grad_accum * world)
    if micro * cfg.grad_accum * world != cfg.batch_size:
        raise ConfigError(f"config: batch_size {cfg.batch_size} must divide by grad_accum * processes")
    save = lambda step: save_checkpoint(Path(cfg.out), model, opt, step + 1,
                                        {"stage": type(cfg).__name__, **dataclasses.asdict(cfg)}, tok)
    # Ctrl-C/SIGTERM: the step finishes, a checkpoint is saved, train.py prints how to continue (StopSignal)
    with StopSignal() as signals, closing(log):
        for step in range(start, cfg.steps):
            t0 = time.time()
            if stream is not None:
                batch = stream_batch(stream, step, cfg.batch_size, cfg.block_size, cfg.seed)
                bmask = torch.ones_like(batch)
            else:
                idx = row_batch(len(rows), step, cfg.batch_size, cfg.seed)
                batch, bmask = rows[idx], masks[idx]
            mine = dist.shard(cfg.batch_size)
            batch, bmask = batch[mine].to(device), bmask[mine].to(device)
            keep = int(bmask.nonzero()[:, 1].max()) + 1 if bmask.any() else 2  # drop all-padding tail columns
            batch, bmask = batch[:, :keep], bmask[:, :keep]
            norm = float(dist.all_sum(bmask[:, 1:].sum().float()).item())  # global target count
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_frac)
            set_lr(opt, lr)
            total = torch.zeros((), dtype=torch.float64, device=device)  # on the device: NCCL reduces GPU tensors only
            for m in range(cfg.grad_accum):
                sl = slice(m * micro, (m + 1) * micro)
                with autocast(device, cfg.bf16):
                    loss = lm_loss(model, batch[sl], bmask[sl], max(norm, 1.0))
                check_finite(loss, step)
                loss.backward()
                total += loss.detach()
            total = float(dist.all_sum(total.float()).item())
            gnorm = apply_update(model, opt, cfg.grad_clip)
            dt = time.time() - t0
            log.write({"step": step, "loss": total, "lr": lr, "grad_norm": gnorm.item(), "tokens": norm,
                       "tokens_per_s": norm / dt, "time_s": dt})
            bar.update(step, loss=total)
            after_step(cfg, step, lambda: save(step), signals.requested(device))
    return Path(cfg.out) / "model"


def pretrain(cfg: PretrainConfig) -> Path:
    device, state = start_training(cfg, type(cfg).__name__)
    records = read_many(cfg.data, need="pretrain")
    if cfg.resume:
        tok = Tokenizer.from_pretrained(cfg.resume)
    elif cfg.tokenizer:
        if not (Path(cfg.tokenizer) / "tokenizer.json").is_file():
            raise CheckpointError(f"{cfg.tokenizer}: no tokenizer.json there; --tokenizer takes a folder holding one")
        tok = Tokenizer.from_pretrained(cfg.tokenizer)
    else:
        texts = [r["text"] if "text" in r else "\n".join(m["content"] for m in to_messages(r)) for r in records]
        tok = train_bpe(texts, cfg.vocab_size, special_tokens=SPECIAL_TOKENS + THINK_TOKENS)
    stream = torch.tensor(pretrain_stream(tok, records), dtype=torch.long)
    if cfg.resume:
        model = Transformer.from_pretrained(cfg.resume, device=device)
    else:
        shape = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "max_position_embeddings", "model_type")
        model = Transformer(ModelConfig(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                                        **{k: getattr(cfg, k) for k in shape})).to(device)
    dist.broadcast_params(model)
    if dist.rank() == 0 and cfg.progress:
        print(f"pretrain: {model.num_params() / 1e6:.2f}M params, {len(stream) / 1e6:.2f}M tokens, "
              f"{cfg.steps} steps x {cfg.batch_size} x {cfg.block_size}", flush=True)
    return train_lm(cfg, model, tok, None, None, stream, state)


def sft(cfg: SFTConfig) -> Path:
    device, state = start_training(cfg, type(cfg).__name__)
    src = cfg.resume or cfg.init
    tok = Tokenizer.from_pretrained(src)
    model = Transformer.from_pretrained(src, device=device)
    examples = sft_examples(tok, read_many(cfg.data, need="sft"), cfg.block_size + 1)
    rows, masks = pack_examples(examples, cfg.block_size, cfg.seed, cfg.pack)
    if dist.rank() == 0 and cfg.progress:
        print(f"sft: {len(examples)} chats packed into {len(rows)} rows of {cfg.block_size + 1} tokens", flush=True)
    return train_lm(cfg, model, tok, rows, masks, state=state)
