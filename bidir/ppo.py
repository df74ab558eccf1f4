"""PPO pieces shared by the student (client side) and the teacher (LLM side): the batch type,
GAE, and the clipped losses. Plain functions so both sides compute exactly the same thing."""
from __future__ import annotations

import numpy as np
import torch


class Batch(dict):
    """A dict of equally long tensors (or lists) that can be indexed as one: `batch[idx]`
    selects the same rows of every field, `batch.field` reads a field."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    def __getitem__(self, key):
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Batch({name: _take(value, key) for name, value in self.items()})

    def __len__(self):
        return len(next(iter(self.values()), ()))


def _take(value, index):
    if isinstance(value, list):
        return [value[i] for i in np.asarray(index).reshape(-1)]
    return value[index]


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation over a (T, n_envs) rollout.

    `dones[t]` is true when the episode ended with step t, so step t+1 belongs to a new episode
    and nothing is bootstrapped across. `last_values` are V(s_T) for the state after the rollout.
    Returns (advantages, returns) with returns = advantages + values.
    """
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards, dtype=np.float32)
    next_advantage = np.zeros_like(last_values, dtype=np.float32)
    next_value = last_values
    for t in reversed(range(steps)):
        not_done = 1.0 - dones[t].astype(np.float32)
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        next_advantage = delta + gamma * lam * not_done * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                clip_eps: float, mask: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """PPO's clipped surrogate, each row's times its importance weight (`weights`, default 1),
    negated for minimisation; averaged over the rows where `mask` is true (all rows by default; 0
    when none is)."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.min(ratio * advantages, clipped * advantages)
    if weights is not None:
        surrogate = surrogate * weights
    return -surrogate.mean() if mask is None else -masked_mean(surrogate, mask)


def approx_kl_and_clipfrac(logprobs: torch.Tensor, old_logprobs: torch.Tensor, clip_eps: float,
                           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """How far an update moved the policy, as CleanRL logs it: the approximate KL(old || new),
    mean((ratio - 1) - log ratio), and the fraction of rows whose ratio left [1 - eps, 1 + eps];
    over the rows where `mask` is 1 (all by default). No gradient."""
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        ratio = log_ratio.exp()
        kl, clipped = (ratio - 1) - log_ratio, ((ratio - 1).abs() > clip_eps).float()
        if mask is None:
            return kl.mean(), clipped.mean()
        return masked_mean(kl, mask), masked_mean(clipped, mask)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the rows where `mask` is 1 (0 when none is)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_eps: float) -> torch.Tensor:
    """Clipped value loss: the worse of the unclipped and clipped squared errors (as GLAM)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return torch.max((values - returns) ** 2, (clipped_values - returns) ** 2).mean()


def anneal(iteration: int, start: float, iterations: int) -> float:
    """A schedule that is `start` at iteration 0 and falls linearly to 0 at `iterations` (0 after):
    the distillation weight lambda_k and the teacher's share of acting eps_k."""
    if iterations <= 0:
        return 0.0
    return start * max(0.0, 1.0 - iteration / iterations)


def minibatches(n: int, size: int, generator: torch.Generator):
    """Shuffled index minibatches covering range(n) once."""
    order = torch.randperm(n, generator=generator)
    return [order[start:start + size] for start in range(0, n, size)]
