"""The student's critique of the teacher's instructions (student -> teacher; docs/design.md, "The
critique").

The student's critic has seen far more of the environment than the teacher's value head, so its
advantage A_S(t) says how much better the action taken at step t turned out than the student
expected. On the steps where the student chose, where A_S(t) > 0, the teacher imitates the
student's action, weighted by A_S(t), so the teacher keeps learning from its student after it
stops acting. A student that is still unsure copies its spread into the teacher this way
(docs/design.md, "Across levels"); with `critique_where_surer` the teacher imitates only the
steps where the student's policy had lower entropy than the teacher's message. Without a
critique the teacher's PPO uses its own GAE on executed steps and nothing else. (Two other
routes were measured and dropped: docs/design.md.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TeacherTargets:
    """One row per teacher query: the instruction or action to score, its PPO advantage (used where
    `ppo` is true) and its imitation weight (0 where nothing is imitated)."""

    action: np.ndarray
    advantage: np.ndarray
    ppo: np.ndarray
    imitation: np.ndarray


def entropy(probs: np.ndarray) -> np.ndarray:
    """Each row's entropy (nats) of a (n, k) matrix of probabilities."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)


def student_surer(student_entropy: np.ndarray, teacher_probs: np.ndarray) -> np.ndarray:
    """Where the student's policy had lower entropy than the teacher's message: the steps that
    `critique_where_surer` lets the teacher imitate."""
    return student_entropy < entropy(teacher_probs)


def normalised(values: np.ndarray, scale_from: np.ndarray | None = None) -> np.ndarray:
    """`values` divided by the standard deviation of `scale_from` (default: of `values`); signs
    are kept, so a positive critique stays positive. Unchanged when that deviation is ~0."""
    scale = np.std(values if scale_from is None else scale_from)
    return (values / scale if scale > 1e-8 else values).astype(np.float32)


def teacher_targets(instruction: np.ndarray, action: np.ndarray, executed: np.ndarray,
                    own_advantage: np.ndarray, student_advantage: np.ndarray | None, imitate: bool,
                    normalise: bool = True, imitable: np.ndarray | None = None) -> TeacherTargets:
    """The teacher's training rows from its queries.

    PPO trains only on executed queries, where the instruction is what happened (the teacher's
    own, on-policy data), with the teacher's own GAE advantage, with `normalise` divided by its
    spread on those queries. With `imitate` (and a student), student-chosen queries whose student
    advantage is positive become imitation rows for the student's action, weighted by that
    advantage (divided by its spread with `normalise`); `imitable`, where given, limits them to
    its true rows (the spread is still that of every row's student advantage)."""
    executed = np.asarray(executed, bool)

    def scale(values, scale_from=None):
        return normalised(values, scale_from) if normalise else values.astype(np.float32)

    advantage = scale(own_advantage, own_advantage[executed]) if executed.any() else own_advantage
    imitation = np.zeros(len(executed), np.float32)
    if imitate and student_advantage is not None:
        barred = executed if imitable is None else executed | ~np.asarray(imitable, bool)
        imitation = np.where(barred, 0.0, np.maximum(scale(student_advantage), 0.0)).astype(np.float32)
    return TeacherTargets(action=np.where(executed, instruction, action), advantage=advantage.astype(np.float32),
                          ppo=executed, imitation=imitation)
