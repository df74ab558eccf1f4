"""The student's critique of the teacher's instructions (student -> teacher, DESIGN.md §3 step 4).

The student knows, from its own advantage A_S(t), whether the action it took at step t turned out
better or worse than it expected. When it followed the instruction, that judgement transfers to
the instruction; when it did not, the instruction loses what the student's own choice gained.
"""
from __future__ import annotations

import numpy as np


def critique(advantages: np.ndarray, followed: np.ndarray, kappa: float) -> np.ndarray:
    """c_t = A_S(t) where the student followed the instruction, -kappa * A_S(t) where it did not."""
    return np.where(followed, advantages, -kappa * advantages).astype(np.float32)


def teacher_rewards(env_rewards: np.ndarray, critiques: np.ndarray, beta: float) -> np.ndarray:
    """r_T = r_env + beta * c."""
    return (env_rewards + beta * critiques).astype(np.float32)


def critique_sentence(instruction: str, value: float) -> str:
    """The critique as a sentence for the teacher's next prompt."""
    verdict = "helpful" if value > 0 else "not helpful"
    return f'the student found "{instruction}" {verdict}'
