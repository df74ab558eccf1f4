"""The LLM teacher, client side: it answers prompts with messages (pi_T over the instructions and
V_T), memoized while its weights stay fixed, and sends its training rows (bidir/critique.py),
updates and checkpoints to the LLM server(s). The LLM side is bidir/teacher_llm.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bidir.critique import TeacherRows
from bidir.llm import make_caller, under_lamorel_launcher
from bidir.methods import Method
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
        """Sends one update to the LLM server(s): PPO on the rows where `ppo` is true, each times
        its importance weight, imitation of `action` weighted by `imitation`, value regression on
        every row. Returns the mean
        losses across servers."""
        results = self.caller.update(
            rows.prompts, [self.instructions] * len(rows.prompts), actions=torch.as_tensor(rows.action),
            logprobs=torch.as_tensor(rows.logprob, dtype=torch.float32),
            values=torch.as_tensor(rows.value, dtype=torch.float32),
            advantages=torch.as_tensor(rows.advantage, dtype=torch.float32),
            returns=torch.as_tensor(rows.returns, dtype=torch.float32), ppo=torch.as_tensor(rows.ppo, dtype=torch.bool),
            weights=torch.as_tensor(rows.weight, dtype=torch.float32),
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
