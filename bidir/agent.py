"""What the teacher and the student see when they act: the text history behind each teacher
prompt, and the student's input tensors. Shared by training and evaluation."""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from bidir.ppo import Batch
from bidir.student import mission_tokens
from bidir.teacher import build_prompt


class PromptHistory:
    """Per environment: the mission, the last `length` observations (BabyAI-Text sentences), the
    instructions carried out between them, and the last critique sentence."""

    def __init__(self, n_envs: int, length: int):
        self.length = length
        self.missions = [""] * n_envs
        self.observations = [deque(maxlen=length) for _ in range(n_envs)]
        self.actions = [deque(maxlen=max(length - 1, 0)) for _ in range(n_envs)]
        self.critiques: list[str | None] = [None] * n_envs

    def start(self, env: int, info: dict):
        """A new episode begins in `env` with this reset info."""
        self.missions[env] = info["mission"]
        self.observations[env].clear()
        self.actions[env].clear()
        self.critiques[env] = None
        self.observations[env].append(info["descriptions"])

    def advance(self, env: int, action: str, info: dict):
        """`env` carried out `action` and now sees `info`'s descriptions."""
        if self.length > 1:
            self.actions[env].append(action)
        self.observations[env].append(info["descriptions"])

    def prompt(self, env: int) -> str:
        """The teacher's prompt for `env` now."""
        return build_prompt(self.missions[env], list(self.observations[env]), list(self.actions[env]),
                            self.critiques[env])

    def state(self) -> dict:
        """Plain lists (loadable with torch.load(weights_only=True))."""
        return {"missions": list(self.missions), "observations": [list(o) for o in self.observations],
                "actions": [list(a) for a in self.actions], "critiques": list(self.critiques)}

    def load(self, state: dict):
        """Restores what `state()` returned."""
        self.missions = list(state["missions"])
        for queue, saved in zip(self.observations, state["observations"]):
            queue.clear()
            queue.extend(saved)
        for queue, saved in zip(self.actions, state["actions"]):
            queue.clear()
            queue.extend(saved)
        self.critiques = list(state["critiques"])


def student_inputs(obs: dict, missions: list[str], instruction: np.ndarray, probs: np.ndarray,
                   value: np.ndarray, shown: np.ndarray, device="cpu") -> Batch:
    """The student's input batch. Where `shown` is false (or there is no teacher) the message is
    replaced by "no message": instruction index k and zero pi_T, V_T."""
    k = probs.shape[1]
    return Batch(
        image=torch.as_tensor(obs["image"], device=device),
        direction=torch.as_tensor(obs["direction"], device=device),
        mission=torch.as_tensor(mission_tokens(missions), device=device),
        instruction=torch.as_tensor(np.where(shown, instruction, k), device=device),
        teacher_probs=torch.as_tensor(probs * shown[:, None], dtype=torch.float32, device=device),
        teacher_value=torch.as_tensor(value * shown, dtype=torch.float32, device=device),
    )


def behaviour_logprob(student_probs: np.ndarray, action: np.ndarray, instruction: np.ndarray,
                      teacher_acts: float) -> np.ndarray:
    """log mu(a | s, m) of the acting mixture: the teacher's instruction is executed with
    probability eps (`teacher_acts`), otherwise the student samples from pi_S, so
    mu(a) = eps * [a == instruction] + (1 - eps) * pi_S(a). The student's PPO ratio uses it."""
    chosen = student_probs[np.arange(len(action)), action]
    return np.log(teacher_acts * (action == instruction) + (1.0 - teacher_acts) * chosen).astype(np.float32)


def sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of a (n, k) probability matrix."""
    cumulative = probs.cumsum(axis=1)
    draws = rng.random(len(probs)) * cumulative[:, -1]
    return np.minimum((cumulative < draws[:, None]).sum(axis=1), probs.shape[1] - 1)


def summarize_episodes(episodes: list[dict]) -> dict:
    """success_rate, return_mean, episode_length_mean (NaN without episodes) and episodes, from
    TextVecEnv's per-episode statistics."""
    if not episodes:
        return {"success_rate": float("nan"), "return_mean": float("nan"), "episode_length_mean": float("nan"),
                "episodes": 0}
    return {"success_rate": float(np.mean([e["success"] for e in episodes])),
            "return_mean": float(np.mean([e["return"] for e in episodes])),
            "episode_length_mean": float(np.mean([e["length"] for e in episodes])), "episodes": len(episodes)}
