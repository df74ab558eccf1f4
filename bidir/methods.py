"""The four methods compared in the paper's evaluation. A method only says which parts of the one
training loop take part; the loop itself is shared (bidir/train.py)."""
from __future__ import annotations

from dataclasses import dataclass

from bidir.ppo import anneal


@dataclass(frozen=True)
class Method:
    """Which parts of the loop a method uses."""

    teacher: bool          # an LLM teacher is queried
    teacher_learns: bool   # the teacher gets PPO updates
    student: bool          # an RL student exists (and acts); otherwise the teacher acts
    critique: bool         # the teacher also learns from the student's critique (imitation of its good choices)
    summary: str           # one line for --help

    def teacher_share(self, iteration: int, start: float, iterations: int, end: float) -> float:
        """eps_k, the probability that a query's instruction is executed: 1 when the teacher acts
        alone (glam), 0 without a teacher, else the mixture's share, annealed linearly from `start`
        to `end` over `iterations` and `end` after."""
        if not self.teacher:
            return 0.0
        if not self.student:
            return 1.0
        return end + anneal(iteration, start - end, iterations)


METHODS = {
    "bidir": Method(teacher=True, teacher_learns=True, student=True, critique=True,
                    summary="the teacher guides the student; the student's critique trains the teacher"),
    "t2s": Method(teacher=True, teacher_learns=False, student=True, critique=False,
                  summary="a frozen teacher guides the student (teacher -> student only)"),
    "glam": Method(teacher=True, teacher_learns=True, student=False, critique=False,
                   summary="the LLM acts and learns by PPO on the reward (GLAM, the paper's baseline)"),
    "student": Method(teacher=False, teacher_learns=False, student=True, critique=False,
                      summary="the RL student alone, PPO"),
}


def get_method(name: str) -> Method:
    """The method called `name`; ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
