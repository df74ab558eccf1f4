"""The student's critique of the teacher (student -> teacher; docs/design.md, "The critique"):
every row the teacher trains on is made here, from a rollout, and nowhere else.

One row per teacher query (every frame at `teacher_every=1`). Each row carries the action the pair
took, a PPO advantage and importance weight where the teacher's PPO trains on it, and an imitation
weight where the teacher imitates the student.
- PPO rows (`teacher_ppo_rows`): `executed`, the queries whose instruction was carried out (the
  teacher's own, on-policy data, weight 1); or `all`, every query, the action taken weighted by
  the truncated importance weight min(1, pi_T(a) / mu_T(a)) (as in V-trace), where mu_T is the
  pair's probability of that action (`pair_logprob`): the rows the student chose are corrected
  for who acted, so negative advantages are as usable as positive ones.
- The PPO advantage (`teacher_advantage`): the teacher's own GAE over its queries with V_T, or the
  student's (A_S, GAE with V_S): both critics are fit to the pair's returns; the student's has
  seen every frame through its own view.
- Imitation (`critique_imitation`): on queries where the student chose and its advantage A_S is
  positive, the teacher imitates the student's action, weighted by A_S; with
  `critique_where_surer` only where the student's policy had lower entropy than the message.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from bidir.ppo import gae
from bidir.student import student_inputs

TEACHER_PPO_ROWS = ("executed", "all")
"""Which queries the teacher's PPO trains on (rl_script_args.teacher_ppo_rows)."""
TEACHER_ADVANTAGES = ("teacher", "student")
"""Whose critic gives the teacher's PPO advantage (rl_script_args.teacher_advantage)."""


@dataclass(frozen=True)
class CritiqueSettings:
    """How a rollout becomes the teacher's rows (rl_script_args: teacher_ppo_rows,
    teacher_advantage, critique_imitation > 0, critique_where_surer, teacher_normalize_advantages,
    gamma, lam)."""

    ppo_rows: str
    advantage: str
    imitate: bool
    where_surer: bool
    normalize: bool
    gamma: float
    lam: float

    @classmethod
    def from_args(cls, args, critique: bool) -> CritiqueSettings:
        """From the `rl_script_args` node; without a `critique` (a method whose teacher learns
        alone: glam) the teacher trains on its executed queries with its own advantage."""
        ppo_rows, advantage = (args.teacher_ppo_rows, args.teacher_advantage) if critique else ("executed", "teacher")
        return cls(ppo_rows, advantage, critique and args.critique_imitation > 0,
                   critique and args.critique_where_surer, args.teacher_normalize_advantages, args.gamma, args.lam)

    @property
    def needs_pair_logprob(self) -> bool:
        """Whether the rows need mu_T (`pair_logprob`): PPO on the queries the student chose."""
        return self.ppo_rows == "all"


@dataclass
class TeacherRows:
    """The teacher's training rows, one per query: the prompt, the action to score, its
    log-probability under the teacher when the query was made, V_T then, the PPO advantage and
    value target, whether PPO trains on it, its importance weight in PPO, and its imitation
    weight (0 where nothing is imitated). The step each row comes from is `step`, `env`."""

    prompts: list[str]
    action: np.ndarray
    logprob: np.ndarray
    value: np.ndarray
    advantage: np.ndarray
    returns: np.ndarray
    ppo: np.ndarray
    imitation: np.ndarray
    weight: np.ndarray
    step: np.ndarray
    env: np.ndarray

    def shuffled(self, rng: np.random.Generator) -> TeacherRows:
        """The rows in a random order (the updater walks minibatches in order)."""
        order = rng.permutation(len(self.prompts))
        return TeacherRows([self.prompts[i] for i in order],
                           *(getattr(self, f.name)[order] for f in fields(self)[1:]))  # the arrays after prompts


def entropy(probs: np.ndarray) -> np.ndarray:
    """Each row's entropy (nats) of a (n, k) matrix of probabilities."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)


def normalised(values: np.ndarray, scale_from: np.ndarray | None = None) -> np.ndarray:
    """`values` divided by the standard deviation of `scale_from` (default: of `values`); signs
    are kept, so a positive critique stays positive. Unchanged when that deviation is ~0."""
    scale = np.std(values if scale_from is None else scale_from)
    return (values / scale if scale > 1e-8 else values).astype(np.float32)


def pair_logprob(student, rollout, eps: float, device="cpu") -> np.ndarray:
    """log mu_T(a_t | s_t), (steps, n_envs): the probability that the pair took the action a_t, over
    every instruction the teacher could have drawn at that query,
        mu_T(a) = eps pi_T(a) + (1 - eps) sum_i pi_T(i) pi_S(a | s, i),
    with pi_S as it was while acting (call before the student's update) and the message shown or
    hidden as it was. At eps = 1 it is pi_T(a): the teacher's own data, weight 1."""
    steps, n_envs = rollout.action.shape
    k = rollout.probs.shape[-1]
    rows = steps * n_envs
    probs = rollout.probs.reshape(rows, k)
    with torch.no_grad():
        x = student_inputs({"image": np.repeat(rollout.image.reshape(rows, 7, 7, 3), k, axis=0),
                            "direction": np.repeat(rollout.direction.reshape(rows), k)},
                           [m for row in rollout.missions for m in row for _ in range(k)],
                           np.tile(np.arange(k), rows), np.repeat(probs, k, axis=0),
                           np.repeat(rollout.teacher_value.reshape(rows), k), np.repeat(rollout.shown.reshape(rows), k),
                           device)
        dist, _ = student(x)
    action = rollout.action.reshape(rows)
    student_prob = dist.probs.cpu().numpy().astype(np.float64).reshape(rows, k, -1)[np.arange(rows), :, action]
    taught = (probs * student_prob).sum(axis=1)
    mu = eps * probs[np.arange(rows), action] + (1.0 - eps) * taught
    return np.log(mu).reshape(steps, n_envs)


def teacher_rows(rollout, last_value: np.ndarray, student_advantage: np.ndarray | None,
                 pair_logprobs: np.ndarray | None, settings: CritiqueSettings) -> TeacherRows:
    """The teacher's rows of a rollout: one per query, rewarded with the env reward summed until
    the next query; GAE over each env's queries with V_T (bootstrapped from `last_value`) gives
    its own advantages and value targets. `student_advantage` (A_S, (steps, n_envs)) is the
    student's critique, None without a student; `pair_logprobs` is `pair_logprob`'s, needed for
    `ppo_rows="all"`. Which rows train how: the module's docstring."""
    steps, n_envs = rollout.reward.shape
    columns = {key: [] for key in ("step", "env", "action", "executed", "probs", "student_entropy", "value",
                                   "own_advantage", "returns", "student_advantage", "pair_logprob")}
    prompts = []
    for e in range(n_envs):
        starts = np.flatnonzero(rollout.queried[:, e])
        if len(starts) == 0:
            continue
        ends = np.append(starts[1:], steps)
        rewards = np.array([rollout.reward[s:t, e].sum() for s, t in zip(starts, ends)], np.float32)
        values = rollout.teacher_value[starts, e]
        advantages, returns = gae(rewards[:, None], values[:, None], rollout.done[ends - 1, e][:, None],
                                  last_value[e:e + 1], settings.gamma, settings.lam)
        prompts += [rollout.prompts[s][e] for s in starts]
        columns["step"].append(starts)
        columns["env"].append(np.full(len(starts), e))
        for key in ("action", "executed", "probs", "student_entropy"):
            columns[key].append(getattr(rollout, key)[starts, e])
        columns["value"].append(values)
        columns["own_advantage"].append(advantages[:, 0])
        columns["returns"].append(returns[:, 0])
        if student_advantage is not None:
            columns["student_advantage"].append(student_advantage[starts, e])
        if pair_logprobs is not None:
            columns["pair_logprob"].append(pair_logprobs[starts, e])
    data = {key: np.concatenate(value) for key, value in columns.items() if value}
    executed = data["executed"].astype(bool)
    logprob = np.log(data["probs"][np.arange(len(executed)), data["action"]])

    def scale(values, scale_from=None):
        return normalised(values, scale_from) if settings.normalize else values.astype(np.float32)

    if settings.ppo_rows == "all":
        ppo = np.ones(len(executed), bool)
        weight = np.minimum(1.0, np.exp(logprob - data["pair_logprob"])).astype(np.float32)
    else:
        ppo, weight = executed, executed.astype(np.float32)
    chosen = data["student_advantage"] if settings.advantage == "student" else data["own_advantage"]
    advantage = scale(chosen, chosen[ppo]) if ppo.any() else chosen
    imitation = np.zeros(len(executed), np.float32)
    if settings.imitate and student_advantage is not None:
        barred = executed
        if settings.where_surer:
            barred = executed | ~student_surer(data["student_entropy"], data["probs"])
        imitation = np.where(barred, 0.0, np.maximum(scale(data["student_advantage"]), 0.0)).astype(np.float32)
    return TeacherRows(prompts, data["action"], logprob, data["value"], advantage.astype(np.float32),
                       data["returns"], ppo, imitation, weight, data["step"], data["env"])


def student_surer(student_entropy: np.ndarray, teacher_probs: np.ndarray) -> np.ndarray:
    """Where the student's policy had lower entropy than the teacher's message: the steps that
    `critique_where_surer` lets the teacher imitate."""
    return student_entropy < entropy(teacher_probs)
