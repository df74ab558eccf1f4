"""The four methods compared in the paper's evaluation. A method only says which parts of the one
training loop take part; the loop itself is shared (bidir/train.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """Which parts of the loop a method uses."""

    teacher: bool          # an LLM teacher is queried
    teacher_learns: bool   # the teacher gets PPO updates
    student: bool          # an RL student exists (and acts); otherwise the teacher acts
    critique: bool         # the student's critique enters the teacher's reward


METHODS = {
    "bidir": Method(teacher=True, teacher_learns=True, student=True, critique=True),
    "t2s": Method(teacher=True, teacher_learns=False, student=True, critique=False),
    "glam": Method(teacher=True, teacher_learns=True, student=False, critique=False),
    "student": Method(teacher=False, teacher_learns=False, student=True, critique=False),
}


def get_method(name: str) -> Method:
    """The method called `name`; ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
