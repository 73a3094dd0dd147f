"""Policy losses with a KL penalty, one table and one signature: PPO/GRPO/DAPO clip, CISPO, GSPO.

Per token t of response b, with the importance ratio r = pi / pi_old and the advantage A:
    ppo_clip  max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))     (DAPO's clip-higher: clip_high > clip_low)
    cispo     -sg[clip(r)] A log pi: the clipped ratio only weighs the gradient, no token is dropped (MiniMax-M1)
    gspo      ppo_clip on the sequence ratio s_b = exp(mean_t log r), in its token form (Qwen's GSPO)
    loss_t = policy_t + kl_coef * k(log pi, log ref)                (KL estimators k1 / k2 / k3)
Each family is a name -> pure function table (POLICY_LOSSES, KL_ESTIMATORS, AGGREGATORS): a new variant is one
function and one entry, and train.py's --loss / --kl_estimator / --agg pick from the tables.

An aggregator returns (sum, units): the summed loss and the number of tokens or responses it averages over.
A slice of a batch (a micro-batch, one rank's rows) divides by the *whole* batch's units, so the slices'
losses add up to the batch's loss whatever the split. Log-ratios are clamped to +-20 before exp (as verl
does): a token the policy has all but ruled out cannot make the ratio or k3 infinite. The mask may be bool
or float weights (exact expectations over a finite set of paths: tests/test_kl_estimators.py). The
per-token part is one function that torch.compile fuses; the aggregation stays eager.
"""

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from kernels import MaybeCompiled

Tensor = torch.Tensor
MAX_LOG_RATIO = 20.0  # exp(20) = 4.9e8: finite in fp32, far beyond any useful ratio


@dataclass(frozen=True)
class LossConfig:
    """What a loss may read; a new variant's knob is one more field here (and in the RL config)."""
    loss: str = "ppo_clip"           # a key of POLICY_LOSSES
    clip_low: float = 0.2
    clip_high: float = 0.2           # DAPO's clip-higher uses 0.28
    kl_coef: float = 0.0
    kl_estimator: str = "k3"         # a key of KL_ESTIMATORS
    agg: str = "token_mean"          # a key of AGGREGATORS
    norm_len: float | None = None    # Dr.GRPO's constant length (seq_mean_token_sum_norm); None: T


class TokenLoss(NamedTuple):
    loss: Tensor          # [B,T] per-token loss, to be minimised
    ratio: Tensor         # [B,T] the importance ratio the loss clips (detached)
    clipped_low: Tensor   # [B,T] bool: the lower clip bound changes this token's gradient
    clipped_high: Tensor  # [B,T] bool: the upper clip bound does


def log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    return (logp - old_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


# ---------------------------------------------------------------------------
# Policy losses: (logp [B,T], old_logp [B,T], adv [B,1] or [B,T], mask [B,T] float, cfg) -> TokenLoss


def _clipped_surrogate(ratio: Tensor, adv: Tensor, cfg: LossConfig) -> TokenLoss:
    """max(-A r, -A clip(r)): where the clipped branch wins the token gets no gradient."""
    low, high = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))
    r = ratio.detach()
    return TokenLoss(loss, r, (adv < 0) & (r < low), (adv > 0) & (r > high))


def ppo_clip(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: LossConfig) -> TokenLoss:
    """PPO's clipped surrogate on the token ratio (GRPO, DAPO)."""
    return _clipped_surrogate(torch.exp(log_ratio(logp, old_logp)), adv, cfg)


def cispo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: LossConfig) -> TokenLoss:
    """CISPO (MiniMax-M1, 2025): every token keeps a REINFORCE gradient, its size bounded by the clipped ratio
    (where PPO's clip zeroes it)."""
    r = torch.exp(log_ratio(logp, old_logp)).detach()
    low, high = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    return TokenLoss(-r.clamp(low, high) * adv * logp, r, r < low, r > high)


def gspo(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: LossConfig) -> TokenLoss:
    """GSPO (Zheng et al., 2025): the clip on s_b = exp(mean_t log r), in token form sg[s_b] * pi_t / sg[pi_t]
    (value s_b on every token, gradient s_b * grad log pi_t). The paper averages per response (--agg
    seq_mean_token_mean)."""
    seq_log_ratio = (log_ratio(logp, old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    ratio = torch.exp(logp - logp.detach() + seq_log_ratio.detach())
    return _clipped_surrogate(ratio, adv, cfg)


POLICY_LOSSES: dict[str, Callable[..., TokenLoss]] = {"ppo_clip": ppo_clip, "cispo": cispo, "gspo": gspo}

# ---------------------------------------------------------------------------
# KL(pi || ref) from tokens sampled from pi (Schulman 2020): (logp [B,T], ref_logp [B,T]) -> [B,T]. k1 and k3
# are unbiased in value, k2 is not; as losses E_pi[grad k1] = 0, E_pi[grad k2] = grad KL(pi||ref) and
# E_pi[grad k3] = grad KL(ref||pi) (tests/test_kl_estimators.py).


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log pi - log ref: unbiased, high variance, negative on some samples."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """0.5 (log pi - log ref)^2: low variance, biased (exact only to second order)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1: unbiased, low variance, never negative."""
    d = log_ratio(ref_logp, logp)
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}

# ---------------------------------------------------------------------------
# Aggregators: (x [B,T], mask [B,T] float weights, norm_len) -> (sum, units), loss = sum / units.


def agg_token_mean(x: Tensor, mask: Tensor, norm_len: float | None) -> tuple[Tensor, Tensor]:
    """Every token weighs the same (DAPO's token-level loss): sum(x * mask) over sum(mask) tokens."""
    return (x * mask).sum(), mask.sum()


def _responses(mask: Tensor) -> Tensor:
    """How many rows hold at least one token: a row emptied by a filter is not a response."""
    return (mask.sum(-1) > 0).sum().to(mask.dtype)


def agg_seq_mean_token_mean(x: Tensor, mask: Tensor, norm_len: float | None) -> tuple[Tensor, Tensor]:
    """Mean over responses of each one's token mean (original GRPO)."""
    return _safe_div((x * mask).sum(-1), mask.sum(-1)).sum(), _responses(mask)


def agg_seq_mean_token_sum_norm(x: Tensor, mask: Tensor, norm_len: float | None) -> tuple[Tensor, Tensor]:
    """Mean over responses of sum_t(x * mask) / norm_len, norm_len defaulting to T (Dr.GRPO: a constant
    normaliser removes GRPO's bias towards long wrong answers)."""
    norm = float(x.shape[-1]) if norm_len is None else float(norm_len)
    return (x * mask).sum() / norm, _responses(mask)


AGGREGATORS: dict[str, Callable[[Tensor, Tensor, float | None], tuple[Tensor, Tensor]]] = {
    "token_mean": agg_token_mean, "seq_mean_token_mean": agg_seq_mean_token_mean,
    "seq_mean_token_sum_norm": agg_seq_mean_token_sum_norm}


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (an empty mask contributes nothing, not NaN)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def loss_units(mask: Tensor, agg: str = "token_mean") -> Tensor:
    """How many units (tokens or responses) `agg` averages over in this mask; asked of the aggregator itself,
    so that its units are defined once."""
    m = mask.to(torch.float32)
    return AGGREGATORS[agg](torch.zeros_like(m), m, None)[1]


def _token_terms(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, adv: Tensor, mask: Tensor,
                 cfg: LossConfig) -> tuple[TokenLoss, Tensor | None]:
    """The fused elementwise part: -> TokenLoss, kl [B,T] or None."""
    kl = None if ref_logp is None else KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp)
    return POLICY_LOSSES[cfg.loss](logp, old_logp, adv, mask, cfg), kl


# B and T change every step; the config is a compile-time constant.
_token_terms_fn = MaybeCompiled(_token_terms, dynamic_dims=(0, 1), dynamic=False)


def policy_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor,
                cfg: LossConfig = LossConfig(), entropy: Tensor | None = None, units: Tensor | float | None = None,
                compiled: bool | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """cfg.loss + cfg.kl_coef * KL(pi || ref), aggregated by cfg.agg; gradients flow into logp only.

    logp, old_logp, ref_logp [B,T] (ref_logp may be None when kl_coef == 0), advantages [B] or [B,T],
    mask [B,T] bool or float weights, entropy [B,T] (statistics only). units: loss_units of the whole batch
    this slice belongs to (None: the slice's own). Returns (loss, stats), stats detached 0-dim tensors,
    token means over the mask whatever agg is: clip_frac_low / clip_frac_high (tokens whose gradient the
    lower / upper bound changes: zeroed by ppo_clip and gspo, capped by cispo) and clip_frac, ratio_mean,
    pg_loss and kl_loss (the parts of the loss), kl_mean, entropy_mean (when ref_logp / entropy are given).
    """
    for name, table in [("loss", POLICY_LOSSES), ("kl_estimator", KL_ESTIMATORS), ("agg", AGGREGATORS)]:
        if getattr(cfg, name) not in table:
            raise ValueError(f"policy_loss: unknown {name} {getattr(cfg, name)!r}; choose one of {sorted(table)}")
    if logp.dim() != 2:
        raise ValueError(f"policy_loss: logp must be [B,T], got {tuple(logp.shape)}")
    for name, t in [("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask), ("entropy", entropy)]:
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"policy_loss: {name} must have logp's shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(f"policy_loss: advantages must be [B] or [B,T] for logp {tuple(logp.shape)}, "
                         f"got {tuple(advantages.shape)}")
    if cfg.kl_coef != 0 and ref_logp is None:
        raise ValueError("policy_loss: kl_coef != 0 needs ref_logp")
    if not (0 <= cfg.clip_low < 1 and cfg.clip_high >= 0):
        raise ValueError(f"policy_loss: need 0 <= clip_low < 1 and clip_high >= 0, got {cfg.clip_low}, {cfg.clip_high}")

    # old and ref log-probs are constants of the update, whatever the caller passes
    old_logp, ref_logp = old_logp.detach(), None if ref_logp is None else ref_logp.detach()
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).detach().to(logp.dtype)
    m = mask.to(logp.dtype)
    aggregate = AGGREGATORS[cfg.agg]

    terms, kl = _token_terms_fn(compiled, logp, old_logp, ref_logp, adv, m, cfg)
    pg_sum, own_units = aggregate(terms.loss, m, cfg.norm_len)
    units = torch.as_tensor(own_units if units is None else units, dtype=m.dtype, device=m.device)
    loss = pg_loss = _safe_div(pg_sum, units)
    kl_loss = None if kl is None else _safe_div(aggregate(kl, m, cfg.norm_len)[0], units)
    if kl is not None and cfg.kl_coef != 0:
        loss = loss + cfg.kl_coef * kl_loss

    with torch.no_grad():
        def tmean(x: Tensor) -> Tensor:
            return _safe_div((x.detach().to(m.dtype) * m).sum(), m.sum())
        low, high = tmean(terms.clipped_low), tmean(terms.clipped_high)
        stats = {"clip_frac_low": low, "clip_frac_high": high, "clip_frac": low + high,
                 "ratio_mean": tmean(terms.ratio), "pg_loss": pg_loss.detach()}
        if kl is not None:
            stats.update(kl_mean=tmean(kl), kl_loss=kl_loss.detach())
        if entropy is not None:
            stats["entropy_mean"] = tmean(entropy)
    return loss, stats
