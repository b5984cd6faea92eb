"""The mathematics of PPO as pure tensor functions (no models), tested against hand-computed
examples: masked statistics, the per-token KL-penalised reward, GAE, the clipped policy and
value losses, and the KL coefficient controllers.

Shapes: [batch, response length]; `mask` is 1 on response tokens (up to and including the end
token), 0 on padding after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, count: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the masked entries over `count` (default: the number of masked entries). A loss
    over part of a step passes the step's token count, so that every token of the step weighs
    the same however the step is split into micro-batches and processes."""
    return (values * mask).sum() / (mask.sum().clamp(min=1) if count is None else count)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = (((values - mean) ** 2) * mask).sum() / count.clamp(min=1)
    return var * count / (count - 1).clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True
) -> torch.Tensor:
    """Standardise the masked entries (zero mean unless not shift_mean, unit variance)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(response: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the response tokens up to and including the first end token, whether each
    response produced an end token). What follows the end token (padding) is masked out; a
    response without one keeps every token."""
    stops = torch.isin(response, torch.tensor(stop_ids, device=response.device))
    has_end = stops.any(dim=1)
    length = response.shape[1]
    first = torch.where(
        has_end,
        stops.float().argmax(dim=1),
        torch.full_like(has_end, length, dtype=torch.long),
    )
    positions = torch.arange(length, device=response.device)[None, :]
    return (positions <= first[:, None]).float(), has_end


def penalize_missing_eos(
    scores: torch.Tensor, has_end: torch.Tensor, penalty: float | None
) -> torch.Tensor:
    """Scores less `penalty` where the response ended without an end token (cut off at
    max_new_tokens), before normalisation."""
    if penalty is None:
        return scores.clone()
    return scores - penalty * (~has_end).to(scores.dtype)


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards, per-token KL): -kl_coef x (log p - log p_ref) at every response
    token, plus the sequence's score at its last token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    rewards = rewards + last.float() * scores[:, None]
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response.

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, with V and A zero
    past the last response token. Returns (advantages, returns = advantages + values).
    """
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    count: float | torch.Tensor | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 - e, 1 + e)) (the
    loss's sum over `count` tokens when given, see masked_mean; the statistics are means)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, count)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3, non-negative
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    count: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(0.5 x mean of max((V - R)^2, (V_clipped - R)^2), share of tokens clipped), with
    V_clipped = V_old + clip(V - V_old, -c, c); the loss's sum over `count` tokens when given."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask, count)
    with torch.no_grad():
        fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect value model, 0 a constant."""
    variance = masked_var(returns, mask)
    if float(variance) == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / variance)


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, kl: float, sequences: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: move the coefficient so the KL per sequence approaches the target,
    by at most 20% of the error per horizon of sequences."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, sequences: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * sequences / self.horizon


class RunningMoments:
    """Running mean and standard deviation of scores (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, values: torch.Tensor) -> None:
        batch_mean = float(values.mean())
        batch_var = float(values.var(unbiased=False)) if values.numel() > 1 else 0.0
        batch_count = values.numel()
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta**2 * self.count * batch_count / total
        )
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 1e-8) ** 0.5

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


class Stopwatch:
    """Laps of wall time; waits for the GPU first, so a lap holds the work launched in it."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = now - self.last, now
        return elapsed
