"""The critique's sign rules (DESIGN.md §3 step 4) and the teacher's reward."""
import numpy as np

from bidir.critique import critique, critique_sentence, teacher_rewards


def test_followed_instruction_inherits_the_students_advantage():
    # followed: c = A; ignored: c = -kappa * A (the instruction loses what the student's own choice gained)
    c = critique(np.array([0.5, -0.5, 0.5, -0.5]), np.array([True, True, False, False]), kappa=2.0)
    np.testing.assert_allclose(c, [0.5, -0.5, -1.0, 1.0])


def test_teacher_reward_adds_beta_times_critique():
    r = teacher_rewards(np.array([0.0, 0.0, 1.0, 0.0]), np.array([0.5, -0.5, -1.0, 1.0]), beta=0.5)
    np.testing.assert_allclose(r, [0.25, -0.25, 0.5, 0.5])


def test_critique_sentence():
    assert critique_sentence("go forward", 0.3) == 'the student found "go forward" helpful'
    assert critique_sentence("toggle", -0.1) == 'the student found "toggle" not helpful'
