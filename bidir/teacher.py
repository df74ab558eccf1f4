"""The LLM teacher, client side: it answers prompts with messages (pi_T over the instructions and
V_T), memoized while its weights stay fixed, turns a rollout into its training rows, and sends
updates and checkpoints to the LLM server(s). The LLM side is bidir/teacher_llm.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bidir.critique import student_surer, teacher_targets
from bidir.llm import make_caller, under_lamorel_launcher
from bidir.methods import Method
from bidir.ppo import gae
from bidir.prompts import PromptBuilder, build_prompt, configured_prompt_builder
from bidir.teacher_llm import TeacherInitializer, TeacherPPOSettings, TeacherPPOUpdater, teacher_module_functions

TEACHER_CHECKPOINT = "teacher.pt"
"""The teacher's file in a checkpoint directory (its trainable weights and optimizer)."""


def start_llm(lamorel_args, seed: int, updater=None):
    """The caller serving a teacher LLM (Lamorel's under lamorel_launcher, else in-process) with
    the teacher's module functions, initializer and `updater`. On Lamorel's server processes this
    never returns: they serve until the RL process closes them."""
    return make_caller(lamorel_args, custom_updater={"main_llm": updater} if updater else {},
                       custom_module_functions={"main_llm": teacher_module_functions(seed)},
                       custom_model_initializer={"main_llm": TeacherInitializer(seed)})


def start_teacher(config, method: Method, checkpoint: Path | None = None) -> Teacher | None:
    """The run's teacher, restored from `checkpoint` when it holds one; None for a method without
    a teacher (under lamorel_launcher, whose servers start anyway, they are released)."""
    args = config.rl_script_args
    if not method.teacher and not under_lamorel_launcher():
        return None
    caller = start_llm(config.lamorel_args, args.seed, TeacherPPOUpdater(TeacherPPOSettings.from_args(args)))
    if not method.teacher:
        caller.close()
        return None
    teacher = Teacher(caller, list(args.instructions), configured_prompt_builder(config))
    if checkpoint and method.teacher_learns:  # its checkpoint holds it (checkpoint.find): never a fresh one
        teacher.load(checkpoint / TEACHER_CHECKPOINT)  # beside a trained student
    return teacher


@dataclass
class TeacherRows:
    """The teacher's training rows, one per query: the prompt, the instruction or action to score,
    its log-probability when the query was made, V_T then, the advantage and value target, whether
    PPO trains on it and its imitation weight."""

    prompts: list[str]
    action: np.ndarray
    logprob: np.ndarray
    value: np.ndarray
    advantage: np.ndarray
    returns: np.ndarray
    ppo: np.ndarray
    imitation: np.ndarray

    def shuffled(self, rng: np.random.Generator) -> TeacherRows:
        """The rows in a random order (the updater walks minibatches in order)."""
        order = rng.permutation(len(self.prompts))
        return TeacherRows([self.prompts[i] for i in order],
                           *(getattr(self, name)[order] for name in ("action", "logprob", "value", "advantage",
                                                                     "returns", "ppo", "imitation")))


def teacher_rows(rollout, last_value: np.ndarray, student_advantage: np.ndarray | None, imitate: bool,
                 normalize: bool, gamma: float, lam: float, where_surer: bool = False) -> TeacherRows:
    """The teacher's rows of a rollout: one per query, rewarded with the env reward summed until
    the next query; GAE over each env's queries with V_T gives its advantages and value targets.
    PPO trains on the executed queries; with the critique (`student_advantage`, `imitate`) the
    teacher also imitates the student's good choices (bidir/critique.py), with `where_surer` only
    where the student's policy had lower entropy than the teacher's message."""
    steps, n_envs = rollout.reward.shape
    columns = {key: [] for key in ("instruction", "action", "executed", "probs", "student_entropy", "value",
                                   "advantage", "returns", "student_advantage")}
    prompts = []
    for e in range(n_envs):
        starts = np.flatnonzero(rollout.queried[:, e])
        if len(starts) == 0:
            continue
        ends = np.append(starts[1:], steps)
        rewards = np.array([rollout.reward[s:t, e].sum() for s, t in zip(starts, ends)], np.float32)
        values = rollout.teacher_value[starts, e]
        advantages, returns = gae(rewards[:, None], values[:, None], rollout.done[ends - 1, e][:, None],
                                  last_value[e:e + 1], gamma, lam)
        prompts += [rollout.prompts[s][e] for s in starts]
        for key in ("instruction", "action", "executed", "probs", "student_entropy"):
            columns[key].append(getattr(rollout, key)[starts, e])
        columns["value"].append(values)
        columns["advantage"].append(advantages[:, 0])
        columns["returns"].append(returns[:, 0])
        if student_advantage is not None:
            columns["student_advantage"].append(student_advantage[starts, e])
    data = {key: np.concatenate(value) for key, value in columns.items() if value}  # no student: no advantages
    surer = student_surer(data["student_entropy"], data["probs"]) if where_surer else None
    targets = teacher_targets(data["instruction"], data["action"], data["executed"], data["advantage"],
                              data.get("student_advantage"), imitate, normalize, surer)
    logprob = np.log(data["probs"][np.arange(len(targets.action)), targets.action])
    return TeacherRows(prompts, targets.action, logprob, data["value"], targets.advantage, data["returns"],
                       targets.ppo, targets.imitation)


class Teacher:
    """Client side of the teacher: messages (pi_T, V_T) for prompts, updates and checkpoints.

    Within an iteration the teacher's weights are fixed, so a prompt seen before gets the same
    answer: outputs are memoized until `forget()` (called after each update). `build_prompt`
    writes its prompts (the format it is asked in, bidir/prompts.py)."""

    def __init__(self, caller, instructions: list[str], build_prompt: PromptBuilder = build_prompt):
        self.caller = caller
        self.instructions = list(instructions)
        self.build_prompt = build_prompt
        self.memo: dict[str, tuple[np.ndarray, float]] = {}
        self.llm_contexts = 0  # contexts actually sent to the LLM, for speed accounting

    def advise(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """pi_T over the instructions (n, k) and V_T (n,) for each prompt."""
        if not prompts:
            return np.zeros((0, len(self.instructions))), np.zeros(0, np.float32)
        missing = list(dict.fromkeys(p for p in prompts if p not in self.memo))
        if missing:
            outputs = self.caller.custom_module_fns(
                ["score", "value"], contexts=missing, candidates=[self.instructions] * len(missing))
            self.llm_contexts += len(missing)
            for prompt, output in zip(missing, outputs):
                probs = torch.softmax(output["score"].double(), dim=-1).numpy()
                self.memo[prompt] = (probs, float(output["value"][0, 0]))
        probs = np.stack([self.memo[p][0] for p in prompts])
        values = np.array([self.memo[p][1] for p in prompts], dtype=np.float32)
        return probs, values

    def forget(self):
        """Drops memoized outputs: call after the teacher's weights change."""
        self.memo.clear()

    def update(self, rows: TeacherRows) -> dict[str, float]:
        """Sends one update to the LLM server(s): PPO on the rows where `ppo` is true, imitation
        of `action` weighted by `imitation`, value regression on every row. Returns the mean
        losses across servers."""
        results = self.caller.update(
            rows.prompts, [self.instructions] * len(rows.prompts), actions=torch.as_tensor(rows.action),
            logprobs=torch.as_tensor(rows.logprob, dtype=torch.float32),
            values=torch.as_tensor(rows.value, dtype=torch.float32),
            advantages=torch.as_tensor(rows.advantage, dtype=torch.float32),
            returns=torch.as_tensor(rows.returns, dtype=torch.float32), ppo=torch.as_tensor(rows.ppo, dtype=torch.bool),
            imitation=torch.as_tensor(rows.imitation, dtype=torch.float32))
        self.forget()
        results = [r for r in results if r]  # one per server; a server with no rows returns {}
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]} if results else {}

    def save(self, path: Path):
        """Writes the teacher's trainable weights and optimizer state to `path` (every server holds
        the same weights; the file is written whole)."""
        self.caller.update([""], save=str(path))

    def load(self, path: Path):
        """Restores what `save` wrote, on every server."""
        self.caller.update([""], load=str(path))
        self.forget()

    def close(self):
        """Releases the LLM server(s)."""
        self.caller.close()
