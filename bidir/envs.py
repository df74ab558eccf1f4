"""BabyAI environments with BabyAI-Text descriptions, single and vectorized.

Three pieces, each doing one thing:

- ``describe`` turns minigrid's 7x7 egocentric observation into BabyAI-Text sentences
  (the text format GLAM's ``babyai-text`` package produces, docs/design.md, "BabyAI-Text");
- ``make_text_env`` wraps one BabyAI level so that every ``reset``/``step`` info carries
  those sentences and the mission;
- ``TextVecEnv`` steps N of them in lock-step with instructions as actions, auto-reset,
  reward scaling and episode statistics, and can save/restore its complete state.
"""

from __future__ import annotations

import difflib
import functools
import pickle
from collections.abc import Sequence

import gymnasium
import minigrid  # noqa: F401  (importing minigrid registers the BabyAI-* and MiniGrid-* ids)
import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT, OBJECT_TO_IDX
from minigrid.minigrid_env import MiniGridEnv

INSTRUCTIONS: tuple[str, ...] = ("turn left", "turn right", "go forward", "pick up", "drop", "toggle")
"""The teacher's default candidate instructions, in minigrid's action order."""

INSTRUCTION_ACTIONS: dict[str, int] = {
    "turn left": int(Actions.left),
    "turn right": int(Actions.right),
    "go forward": int(Actions.forward),
    "pick up": int(Actions.pickup),
    "drop": int(Actions.drop),
    "toggle": int(Actions.toggle),
    "done": int(Actions.done),
}
"""Instruction text -> the minigrid action that carries it out."""

_EMPTY = OBJECT_TO_IDX["empty"]
_WALL = OBJECT_TO_IDX["wall"]
_DOOR = OBJECT_TO_IDX["door"]
# minigrid encodes a door's state as 0 = open, 1 = closed, 2 = locked.
_DOOR_STATES = ("open", "closed", "locked")


def instruction_actions(instructions: Sequence[str]) -> list[int]:
    """Map instruction texts to minigrid action ids (see ``INSTRUCTION_ACTIONS``)."""
    unknown = [text for text in instructions if text not in INSTRUCTION_ACTIONS]
    if unknown:
        raise ValueError(
            f"Instruction(s) {unknown} map to no minigrid action; "
            f"valid instructions: {', '.join(INSTRUCTION_ACTIONS)}"
        )
    return [INSTRUCTION_ACTIONS[text] for text in instructions]


def babyai_env_ids() -> list[str]:
    """Every ``BabyAI-*`` environment id registered in gymnasium, sorted."""
    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith("BabyAI-"))


def _steps(n: int, direction: str) -> str:
    return f"{n} step{'s' if n > 1 else ''} {direction}"


@functools.lru_cache(maxsize=None)
def _object_text(type_idx: int, color_idx: int, state: int) -> str:
    """``You see a {color} {type} `` (doors: ``You see a {state} {color} door ``)."""
    name = f"{IDX_TO_COLOR[color_idx]} {IDX_TO_OBJECT[type_idx]}"
    if type_idx == _DOOR:
        # BabyAI-Text writes "a open" too; kept so that text-trained models read the same words.
        name = f"{_DOOR_STATES[state]} {name}"
    return f"You see a {name} "


@functools.lru_cache(maxsize=None)
def _view_layout(width: int, height: int) -> tuple[int, tuple, tuple[str, ...]]:
    """Flat cell indices for a ``width`` x ``height`` view, computed once per view size.

    Returns the agent's cell index, the three wall lines ``(direction, indices nearest first)``,
    and every cell's distance phrase. Cell ``(x, y)`` has flat index ``x * height + y``, its
    position in ``image[:, :, 0]`` read in C order.
    """
    agent_x, agent_y = width // 2, height - 1

    def index(x: int, y: int) -> int:
        return x * height + y

    lines = (
        ("forward", tuple(index(agent_x, y) for y in range(agent_y - 1, -1, -1))),
        ("left", tuple(index(x, agent_y) for x in range(agent_x - 1, -1, -1))),
        ("right", tuple(index(x, agent_y) for x in range(agent_x + 1, width))),
    )
    distances = []
    for x in range(width):
        for y in range(height):
            right, forward = x - agent_x, agent_y - y
            if right == 0:
                distances.append(_steps(forward, "forward"))
            else:
                side = _steps(abs(right), "right" if right > 0 else "left")
                distances.append(side if forward == 0 else f"{side} and {_steps(forward, 'forward')}")
    return index(agent_x, agent_y), lines, tuple(distances)


def describe(image: np.ndarray, carrying) -> list[str]:
    """BabyAI-Text sentences for one egocentric minigrid observation.

    ``image`` is minigrid's ``obs["image"]``, indexed ``[x, y, (type, color, state)]``, with the
    agent at column ``width // 2`` of the last row (3, 6 in the 7x7 view), facing decreasing y.
    ``carrying`` is ``env.unwrapped.carrying`` (a ``WorldObj`` or ``None``).

    Sentences, in order: ``You carry a {color} {type}`` when carrying; a wall straight ahead,
    left and right (``You see a wall 2 steps forward``), each only when no seen object stands
    between the agent and the wall on that line; then every seen object other than empty cells
    and walls, by column left to right and within a column from the far row toward the agent,
    with its distance (``N steps forward``, ``N steps left|right`` or
    ``N steps left|right and M steps forward``). The agent's own cell, where minigrid draws the
    carried object, is skipped.
    """
    width, height, _ = image.shape
    agent_index, lines, distances = _view_layout(width, height)
    # Plain bytes rather than numpy calls: a 7x7 view is too small for numpy's per-call cost to
    # pay off, and this runs on every environment step.
    cells = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    types = cells[0::3]
    sentences = [f"You carry a {carrying.color} {carrying.type}"] if carrying is not None else []
    for direction, line in lines:
        for distance, index in enumerate(line, 1):
            if types[index] > _EMPTY:
                if types[index] == _WALL:
                    sentences.append(f"You see a wall {_steps(distance, direction)}")
                break
    for index, type_idx in enumerate(types):
        if type_idx > _WALL and index != agent_index:
            color_idx, state = cells[3 * index + 1 : 3 * index + 3]
            sentences.append(_object_text(type_idx, color_idx, state) + distances[index])
    return sentences


class BabyAITextWrapper(gymnasium.Wrapper):
    """Adds BabyAI-Text ``descriptions`` (list of str) and ``mission`` (str) to every info.

    Observations are left as minigrid's dict (``image``, ``direction``, ``mission``).
    ``seed``, if given, seeds the first ``reset`` that is called without a seed; later resets
    continue the env's own RNG, as in gymnasium.
    """

    def __init__(self, env: gymnasium.Env, seed: int | None = None):
        super().__init__(env)
        self._first_seed = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._with_text(obs, info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._with_text(obs, info)

    def _with_text(self, obs: dict, info: dict) -> dict:
        info = dict(info)
        info["descriptions"] = describe(obs["image"], self.env.unwrapped.carrying)  # a mix's current level
        info["mission"] = obs["mission"]
        return info


MIX_SEPARATOR = "+"
"""`env_id` names one level, or a mix of levels joined by this: `BabyAI-GoToLocal-v0+BabyAI-PickupLoc-v0`."""


class LevelMix(gymnasium.Env):
    """Several minigrid levels as one environment, as GLAM's task mixes: every reset draws a level
    uniformly (a level named twice is drawn twice as often). The first reset's seed seeds the
    draws and each level's first episode, so a mix is as reproducible as one level."""

    def __init__(self, levels: list[gymnasium.Env]):
        self.levels = levels
        self.observation_space, self.action_space = levels[0].observation_space, levels[0].action_space
        self._rng = np.random.default_rng()
        self._first_seeds: list[int | None] = [None] * len(levels)  # each level's first reset
        self._current = 0

    @property
    def unwrapped(self) -> MiniGridEnv:
        """The minigrid env of the current episode's level."""
        return self.levels[self._current].unwrapped

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._first_seeds = [int(s) for s in self._rng.integers(2**31, size=len(self.levels))]
        self._current = int(self._rng.integers(len(self.levels)))
        level_seed, self._first_seeds[self._current] = self._first_seeds[self._current], None
        return self.levels[self._current].reset(seed=level_seed, options=options)

    def step(self, action):
        return self.levels[self._current].step(action)

    def close(self):
        for level in self.levels:
            level.close()


def make_level(env_id: str) -> gymnasium.Env:
    """One registered BabyAI level; ValueError naming the closest ids for an unknown one. Other
    minigrid levels (MiniGrid-*) are refused: their missions are outside the offline teacher's
    vocabulary and the studies' reward scale, and a run there trained to 0.0 without a word."""
    if env_id not in gymnasium.registry or not env_id.startswith("BabyAI-"):
        close = difflib.get_close_matches(env_id, babyai_env_ids(), n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see bidir.envs.babyai_env_ids()"
        if env_id not in gymnasium.registry:
            raise ValueError(f"Unknown env_id {env_id!r}; {hint}")
        raise ValueError(f"env_id {env_id!r} is not a BabyAI level, and bidir runs BabyAI levels only; {hint}")
    env = gymnasium.make(env_id)
    if not isinstance(env.unwrapped, MiniGridEnv):
        env.close()
        raise ValueError(f"{env_id!r} is not a minigrid environment; BabyAI-Text needs one")
    return env


def make_text_env(env_id: str, seed: int | None = None) -> gymnasium.Env:
    """A BabyAI (or other minigrid) level, or a mix of levels (`MIX_SEPARATOR`), whose infos carry
    BabyAI-Text descriptions.

    ``seed`` seeds the first reset (see ``BabyAITextWrapper``). ``env.unwrapped`` is the minigrid
    env (of a mix, the current level's). An unknown ``env_id`` raises ``ValueError`` naming the
    closest registered ids.
    """
    names = env_id.split(MIX_SEPARATOR)
    levels = []
    try:
        for name in names:
            levels.append(make_level(name))
    except ValueError:
        for level in levels:
            level.close()
        raise
    return BabyAITextWrapper(levels[0] if len(levels) == 1 else LevelMix(levels), seed=seed)


class TextVecEnv:
    """N BabyAI-Text envs stepped in lock-step with auto-reset and episode statistics.

    Actions are indices into ``instructions``. Seeding: env ``i`` is first reset with seed
    ``seed * 10_000 + i``; its later episodes continue that env's own RNG (gymnasium semantics),
    so runs with the same ``seed`` see the same episodes, and different ``seed`` values give
    disjoint first-episode seeds for up to 10,000 envs.

    When env ``i``'s episode ends (terminated or truncated) it is reset at once: ``obs`` and
    ``infos[i]`` are then the new episode's first observation, and ``infos[i]["episode"]`` holds
    the finished episode's ``return`` (unscaled), ``length``, ``success`` (terminated with a
    positive reward) and ``level`` (its level's env id: of a mix, the level drawn).
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        seed: int,
        instructions: Sequence[str] = INSTRUCTIONS,
        reward_scale: float = 1.0,
    ):
        if n_envs < 1:
            raise ValueError(f"n_envs must be at least 1, got {n_envs}")
        self.env_id = env_id
        self.n_envs = n_envs
        self.instructions = tuple(instructions)
        self.reward_scale = reward_scale
        self._actions = instruction_actions(self.instructions)
        self._envs = [make_text_env(env_id, seed=seed * 10_000 + i) for i in range(n_envs)]
        self._returns = [0.0] * n_envs
        self._lengths = [0] * n_envs

    @property
    def envs(self) -> list[gymnasium.Env]:
        """The text envs, env ``i`` at index ``i`` (e.g. for a bot that reads ``env.unwrapped``)."""
        return self._envs

    def reset(self) -> tuple[dict, list[dict]]:
        """Reset every env; returns batched obs and one info dict per env."""
        observations, infos = zip(*(env.reset() for env in self._envs))
        self._returns = [0.0] * self.n_envs
        self._lengths = [0] * self.n_envs
        return self._batch(observations), list(infos)

    def step(self, instruction_ids: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
        """Carry out one instruction per env; returns obs, scaled rewards, dones, infos."""
        instruction_ids = np.asarray(instruction_ids)
        if instruction_ids.shape != (self.n_envs,):
            raise ValueError(f"expected {self.n_envs} instruction ids, got shape {instruction_ids.shape}")
        if instruction_ids.min() < 0 or instruction_ids.max() >= len(self.instructions):
            raise ValueError(f"instruction ids must lie in [0, {len(self.instructions)}), got {instruction_ids}")
        observations, infos = [], []
        rewards = np.zeros(self.n_envs, dtype=np.float32)
        dones = np.zeros(self.n_envs, dtype=bool)
        for i, (env, instruction_id) in enumerate(zip(self._envs, instruction_ids.tolist())):
            obs, reward, terminated, truncated, info = env.step(self._actions[instruction_id])
            self._returns[i] += float(reward)
            self._lengths[i] += 1
            if terminated or truncated:
                episode = {
                    "return": self._returns[i],
                    "length": self._lengths[i],
                    "success": bool(terminated and reward > 0),
                    "level": env.unwrapped.spec.id,
                }
                obs, info = env.reset()
                info["episode"] = episode
                self._returns[i], self._lengths[i] = 0.0, 0
            observations.append(obs)
            infos.append(info)
            rewards[i] = reward
            dones[i] = terminated or truncated
        return self._batch(observations), rewards * np.float32(self.reward_scale), dones, infos

    def get_state(self) -> bytes:
        """Complete state (every env with its RNG, episode counters) as bytes, for ``set_state``."""
        return pickle.dumps(
            {
                "env_id": self.env_id,
                "n_envs": self.n_envs,
                "envs": self._envs,
                "returns": self._returns,
                "lengths": self._lengths,
            }
        )

    def set_state(self, state: bytes) -> None:
        """Restore a state from ``get_state``; the run then continues bit-identically."""
        loaded = pickle.loads(state)
        if (loaded["env_id"], loaded["n_envs"]) != (self.env_id, self.n_envs):
            raise ValueError(
                f"state is for {loaded['n_envs']} x {loaded['env_id']}, "
                f"this TextVecEnv runs {self.n_envs} x {self.env_id}"
            )
        self.close()
        self._envs = loaded["envs"]
        self._returns = loaded["returns"]
        self._lengths = loaded["lengths"]

    def close(self) -> None:
        """Close every env."""
        for env in self._envs:
            env.close()

    @staticmethod
    def _batch(observations: Sequence[dict]) -> dict:
        return {
            "image": np.stack([obs["image"] for obs in observations]),
            "direction": np.array([obs["direction"] for obs in observations], dtype=np.int64),
        }
