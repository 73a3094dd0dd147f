"""MiniWorld: a small synthetic world in which the papers' safety trends can appear, or fail to, on their own.

A tiny model (2-5M parameters, ~2k BPE vocabulary, context <= 256) is pretrained from scratch on this
world, aligned, then fine-tuned by the experiment arms. The world mirrors a real chat model's life cycle:

  pretrain   documents (recipes as encyclopedic text, how-tos, math/code worked examples, stories, a glossary)
             + unaligned chats in which an assistant complies with everything          corpus.py
  align      helpful on benign, math and code; refuses harmful requests               datasets.align_sft
  arms       SFT(math) vs GRPO/PPO(math) on the same prompts, and more               datasets.rl_* / sft_*
  evaluate   held-out math/code, harmful and benign requests, five adversarial suites

Modules:
  hazards.py     6 categories x 4 harmful topics, each with a FICTIONAL 3-5 step recipe of invented words
  lookalikes.py  one benign look-alike per harmful topic, same verb ("build a kite"), for over-refusal
  phrasing.py    compositional request pools, answers, REFUSALS, and the hash-based train/eval split
  suites.py      the five adversarial suites (Wei et al. 2023), from templates no training text contains
  mathtasks.py   word problems, 1-4 operations, worked steps and "#### N"
  codetasks.py   function-writing tasks with a reference solution and hidden assertion tests
  corpus.py      the pretraining corpus
  reasoning.py   <think> traces: unaligned (rehearses recipes), STAR-1-like safety, math, code
  datasets.py    every dataset and build_all; `python -m minirlvr.world build --out DIR --seed 0`

Honesty rules this package keeps (and tests check):
  - All hazard content is invented: no step is real or actionable.
  - Phrasing carries no label: harmful and benign requests come from the same pools in every set, so
    only the topic can decide between refusing and helping.
  - Alignment data has compositional variety (context x core x suffix) so refusal can generalise beyond
    memorised strings; the prototype in DESIGN.md showed 0% transfer from three phrasings.
  - Training and evaluation prompts are disjoint for every seed; suite templates appear in no training text.
  - Nothing here knows about the arms: the judge sees only (prompt, response, topic), SFT and RL get the
    same prompts, and every arm is evaluated on the same sets. A trend that fails to appear is a finding.

Everything is deterministic given the seed. WORLD_VERSION changes whenever generated content would change.
"""

from .hazards import CATEGORIES, HARMFUL, Step, Topic
from .lookalikes import BENIGN
from .phrasing import REFUSALS, split_of
from .suites import SUITES, build_suite, build_suites

# miniworld-2: reasoning_chats gained traces that rehearse recipe steps and then refuse (paper 2); every
# other file is byte-identical to miniworld-1.
# miniworld-3 (E1v3): math answers in pretraining and alignment are a worked CHAIN or a bare SHORTCUT
# (mathtasks.CHAIN_SHARE; W1), and new files hold task answers by another author (author.py; W2), benign
# help chats and a math dev split. Every file of miniworld-2 but pretrain and align_sft is unchanged.
# miniworld-4 (E2v4): the alignment set's code answers are CORRECT or SLOPPY (codetasks.CORRECT_SHARE; code
# W1), and held-out and RL code records gain a hidden test that fails the sloppy path. pretrain and every
# other file are miniworld-3's, byte for byte; align_sft differs only in code answers.
# `python -m minirlvr.world build --version N` still builds 1, 2 and 3 byte for byte.
WORLD_VERSION = "miniworld-4"

TOPICS: dict[str, Topic] = {t.id: t for t in HARMFUL + BENIGN}

__all__ = ["WORLD_VERSION", "CATEGORIES", "HARMFUL", "BENIGN", "TOPICS", "Step", "Topic", "REFUSALS", "SUITES",
           "split_of", "build_suite", "build_suites"]
