"""The teacher's prompts: what the LLM reads about an environment, and the per-environment text
history they are written from."""
from __future__ import annotations

from collections import deque


def build_prompt(mission: str, observations: list[list[str]], actions: list[str]) -> str:
    """The teacher's prompt: goal, the recent observations (oldest first) with the instruction
    given after each past one, then `Action:`.

    `observations` holds lists of BabyAI-Text sentences; `actions` the instructions that followed
    all but the last observation."""
    lines = [f"Goal of the agent: {mission}"]
    for step, sentences in enumerate(observations):
        lines.append(f"Observation {step}: " + ", ".join(sentences))
        if step < len(actions):
            lines.append(f"Action {step}: {actions[step]}")
    lines.append("Action:")
    return "\n".join(lines)


class PromptHistory:
    """Per environment: the mission, the last `length` observations (BabyAI-Text sentences) and the
    instructions carried out between them."""

    def __init__(self, n_envs: int, length: int):
        self.length = length
        self.missions = [""] * n_envs
        self.observations = [deque(maxlen=length) for _ in range(n_envs)]
        self.actions = [deque(maxlen=max(length - 1, 0)) for _ in range(n_envs)]

    def start(self, env: int, info: dict):
        """A new episode begins in `env` with this reset info."""
        self.missions[env] = info["mission"]
        self.observations[env].clear()
        self.actions[env].clear()
        self.observations[env].append(info["descriptions"])

    def advance(self, env: int, action: str, info: dict):
        """`env` carried out `action` and now sees `info`'s descriptions."""
        if self.length > 1:
            self.actions[env].append(action)
        self.observations[env].append(info["descriptions"])

    def prompt(self, env: int) -> str:
        """The teacher's prompt for `env` now."""
        return build_prompt(self.missions[env], list(self.observations[env]), list(self.actions[env]))

    def state(self) -> dict:
        """Plain lists (loadable with torch.load(weights_only=True))."""
        return {"missions": list(self.missions), "observations": [list(o) for o in self.observations],
                "actions": [list(a) for a in self.actions]}

    def load(self, state: dict):
        """Restores what `state()` returned."""
        self.missions = list(state["missions"])
        for queue, saved in zip(self.observations, state["observations"]):
            queue.clear()
            queue.extend(saved)
        for queue, saved in zip(self.actions, state["actions"]):
            queue.clear()
            queue.extend(saved)
