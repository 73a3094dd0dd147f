"""Fused kernels for RL on language models, written once in PyTorch and fused by torch.compile.

token_logprobs  per-token log-probs (and entropy) from hidden states, chunked over tokens
policy_loss     policy loss (ppo_clip, cispo, gspo) + KL penalty, with its statistics
"""

from kernels.logprob import token_logprobs
from kernels.policy_loss import AGGREGATORS, KL_ESTIMATORS, POLICY_LOSSES, LossConfig, loss_units, policy_loss

__all__ = ["token_logprobs", "policy_loss", "loss_units", "LossConfig", "KL_ESTIMATORS", "AGGREGATORS",
           "POLICY_LOSSES"]
