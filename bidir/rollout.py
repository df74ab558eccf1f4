"""Acting, written once for training, evaluation and the trace: the teacher's messages, who acts
(the teacher's instruction executed with probability eps, else the student), the one episode loop
around them (`Runner`), and the rollout that training learns from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bidir.prompts import PromptHistory
from bidir.student import student_inputs


@dataclass
class Step:
    """What happened in every environment at one step (arrays over environments)."""

    queried: np.ndarray        # the teacher was asked for a new message
    prompts: list              # the prompt asked, or None
    instruction: np.ndarray    # the teacher's current instruction (held between queries)
    probs: np.ndarray          # pi_T of the current message (uniform without a teacher)
    teacher_value: np.ndarray  # V_T of the current message
    shown: np.ndarray          # the student saw the message
    executed: np.ndarray       # the instruction was carried out instead of the student's choice
    action: np.ndarray
    logprob: np.ndarray        # log mu(action) of the acting mixture (the student's PPO ratio)
    value: np.ndarray          # V_S
    student_entropy: np.ndarray  # entropy of pi_S(. | s, m) (0 without a student)


class Acting:
    """The teacher and the student acting together in `n_envs` environments.

    Every `teacher_every` steps (and at the start of an episode) an environment's prompt is sent
    to the teacher, which answers pi_T and V_T; an instruction i ~ pi_T is drawn and executed
    with probability eps, otherwise the student samples a ~ pi_S(. | s, m), having seen the
    message with probability 1 - `message_dropout`. Without a student the instruction is the
    action; without a teacher the student acts alone."""

    def __init__(self, teacher, student, n_envs: int, instructions: list[str], teacher_every: int,
                 message_dropout: float, rng: np.random.Generator, torch_rng: torch.Generator, device="cpu"):
        self.teacher, self.student = teacher, student
        self.instructions, self.k = list(instructions), len(instructions)
        self.teacher_every, self.message_dropout, self.device = teacher_every, message_dropout, device
        self.rng, self.torch_rng = rng, torch_rng
        self.instruction = np.zeros(n_envs, np.int64)
        self.probs = np.full((n_envs, self.k), 1.0 / self.k)
        self.teacher_value = np.zeros(n_envs, np.float32)
        self.executed = np.zeros(n_envs, bool)
        self.since_query = np.full(n_envs, teacher_every)  # every env asks at its first step

    def act(self, obs: dict, history: PromptHistory, eps: float, phases, active: np.ndarray | None = None) -> Step:
        """One step's actions for every environment; only `active` ones (default all) ask the teacher."""
        n = len(self.instruction)
        queried, prompts = np.zeros(n, bool), [None] * n
        if self.teacher:
            with phases("teacher_scoring"):
                due = self.since_query >= self.teacher_every
                ask = np.flatnonzero(due if active is None else due & active)
                asked = [history.prompt(e) for e in ask]
                new_probs, new_values = self.teacher.advise(asked)
                self.probs[ask], self.teacher_value[ask] = new_probs, new_values
                self.instruction[ask] = sample_rows(new_probs, self.rng)
                self.executed[ask] = self.rng.random(len(ask)) < eps
                self.since_query[ask] = 0
                queried[ask] = True
                for e, prompt in zip(ask, asked):
                    prompts[e] = prompt
        shown = self.rng.random(n) < 1.0 - self.message_dropout if self.teacher else np.zeros(n, bool)
        logprob, value, student_entropy = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
        if self.student:
            with phases("student_forward"), torch.no_grad():
                x = student_inputs(obs, list(history.missions), self.instruction, self.probs, self.teacher_value,
                                   shown, self.device)
                dist, student_value = self.student(x)
                action = torch.multinomial(dist.probs, 1, generator=self.torch_rng).squeeze(1).cpu().numpy()
                action = np.where(self.executed, self.instruction, action)
                logprob = behaviour_logprob(dist.probs.cpu().numpy(), action, self.instruction, eps)
                value = student_value.cpu().numpy()
                student_entropy = dist.entropy().cpu().numpy()
        else:
            action = self.instruction.copy()
        return Step(queried, prompts, self.instruction.copy(), self.probs.copy(), self.teacher_value.copy(), shown,
                    self.executed.copy(), action, logprob, value, student_entropy)

    def observe(self, history: PromptHistory, action: np.ndarray, done: np.ndarray, infos: list[dict]) -> list[dict]:
        """After the environments stepped: the histories advance, an ended episode starts afresh
        (with a fresh message). Returns the statistics of the episodes that ended."""
        self.since_query += 1
        ended = []
        for e, info in enumerate(infos):
            if done[e]:
                ended.append(info["episode"])
                history.start(e, info)
                self.since_query[e] = self.teacher_every
            else:
                history.advance(e, self.instructions[action[e]], info)
        return ended

    def values_after(self, obs: dict, history: PromptHistory) -> tuple[np.ndarray, np.ndarray]:
        """V_S and V_T of the states after a rollout (the teacher's message for them included),
        to bootstrap the advantages of its last steps."""
        n = len(self.instruction)
        student_value, teacher_value = np.zeros(n, np.float32), np.zeros(n, np.float32)
        probs, instruction, shown = np.full((n, self.k), 1.0 / self.k), np.zeros(n, np.int64), np.zeros(n, bool)
        if self.teacher:
            probs, teacher_value = self.teacher.advise([history.prompt(e) for e in range(n)])
            instruction, shown = probs.argmax(1), np.ones(n, bool)
        if self.student:
            with torch.no_grad():
                x = student_inputs(obs, list(history.missions), instruction, probs, teacher_value, shown,
                                   self.device)
                student_value = self.student(x)[1].cpu().numpy()
        return student_value, teacher_value


@dataclass
class Transition:
    """One step of the pair in every environment: the observation and missions it acted on, what
    it did (`Step`), and what the environments returned."""

    obs: dict
    missions: list
    step: Step
    reward: np.ndarray
    done: np.ndarray
    infos: list[dict]
    ended: list[dict]  # the statistics of the episodes that ended with this step


class Runner:
    """The one episode loop: the pair acts (`Acting.act`), the environments step, the histories
    advance and ended episodes start afresh (`Acting.observe`). Training's rollouts (`collect`),
    the held-out evaluation and the trace (`first_episodes`) all step through it."""

    def __init__(self, acting: Acting, envs, history: PromptHistory):
        self.acting, self.envs, self.history = acting, envs, history
        self.obs: dict = {}

    def reset(self):
        """Starts every environment's first episode."""
        self.obs, infos = self.envs.reset()
        for env, info in enumerate(infos):
            self.history.start(env, info)

    def step(self, eps: float, phases, active: np.ndarray | None = None) -> Transition:
        """One step in every environment; only `active` ones (default all) ask the teacher."""
        obs, missions = self.obs, list(self.history.missions)
        step = self.acting.act(obs, self.history, eps, phases, active)
        with phases("env"):
            self.obs, reward, done, infos = self.envs.step(step.action)
        ended = self.acting.observe(self.history, step.action, done, infos)
        return Transition(obs, missions, step, reward, done, infos, ended)

    def first_episodes(self, eps: float, phases, before_step=None, bar=None) -> tuple[list[Transition], list[dict]]:
        """Steps until every environment has ended one episode (an environment whose episode
        ended no longer asks the teacher), calling `before_step()` before each step and advancing
        the progress `bar` by each episode that ends. Returns the transitions and each
        environment's first episode's statistics."""
        results: list[dict | None] = [None] * self.envs.n_envs
        transitions = []
        while any(r is None for r in results):
            active = np.array([r is None for r in results])
            if before_step:
                before_step()
            transitions.append(self.step(eps, phases, active))
            for e in np.flatnonzero(transitions[-1].done & active):
                results[e] = transitions[-1].infos[e]["episode"]
                if bar is not None:
                    bar.update(1)
        return transitions, results


@dataclass
class Rollout:
    """Experience, (steps, n_envs) per field: what the student saw, the teacher's messages and who
    acted (see `Step`), and what the environments returned."""

    image: np.ndarray
    direction: np.ndarray
    missions: list             # per step, the mission of each env
    prompts: list              # per step, the prompt asked in each env, or None
    queried: np.ndarray
    instruction: np.ndarray
    probs: np.ndarray
    teacher_value: np.ndarray
    shown: np.ndarray
    executed: np.ndarray
    action: np.ndarray
    logprob: np.ndarray
    value: np.ndarray
    student_entropy: np.ndarray
    reward: np.ndarray
    done: np.ndarray

    @classmethod
    def of(cls, transitions: list[Transition]) -> Rollout:
        """The transitions, stacked step by step."""
        def stacked(values, dtype):
            return np.stack(values).astype(dtype)
        steps = [t.step for t in transitions]
        dtypes = {"queried": bool, "instruction": np.int64, "probs": np.float64, "teacher_value": np.float32,
                  "shown": bool, "executed": bool, "action": np.int64, "logprob": np.float32, "value": np.float32,
                  "student_entropy": np.float32}
        return cls(image=stacked([t.obs["image"] for t in transitions], np.uint8),
                   direction=stacked([t.obs["direction"] for t in transitions], np.int64),
                   missions=[t.missions for t in transitions], prompts=[s.prompts for s in steps],
                   **{name: stacked([getattr(s, name) for s in steps], dtype) for name, dtype in dtypes.items()},
                   reward=stacked([t.reward for t in transitions], np.float32),
                   done=stacked([t.done for t in transitions], bool))


def collect(runner: Runner, steps: int, eps: float, phases) -> tuple[Rollout, list[dict]]:
    """Runs `steps` steps in every environment. Returns the rollout and the statistics of the
    episodes that ended."""
    runner.acting.since_query[:] = runner.acting.teacher_every  # the teacher changed since the last rollout: every env asks anew
    transitions = [runner.step(eps, phases) for _ in range(steps)]
    return Rollout.of(transitions), [episode for t in transitions for episode in t.ended]


def behaviour_logprob(student_probs: np.ndarray, action: np.ndarray, instruction: np.ndarray,
                      eps: float) -> np.ndarray:
    """log mu(a | s, m) of the acting mixture: the teacher's instruction is executed with
    probability eps, otherwise the student samples from pi_S, so
    mu(a) = eps * [a == instruction] + (1 - eps) * pi_S(a). The student's PPO ratio uses it."""
    chosen = student_probs[np.arange(len(action)), action]
    return np.log(eps * (action == instruction) + (1.0 - eps) * chosen).astype(np.float32)


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
