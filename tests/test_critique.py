"""The student's critique of the teacher (docs/design.md, "The critique"), on hand-computed cases:
which rows train the teacher's PPO, with which advantage, and which rows it imitates."""
import numpy as np
import pytest

from bidir.critique import entropy, normalised, teacher_targets
from bidir.rollout import Rollout, behaviour_logprob
from bidir.teacher import teacher_rows

INSTRUCTION = np.array([0, 1, 2, 3])
ACTION = np.array([0, 4, 2, 5])          # rows 0 and 2 executed the instruction; 1 and 3 are the student's
EXECUTED = np.array([True, False, True, False])
OWN = np.array([0.2, 0.4, -0.2, 0.0], np.float32)
STUDENT = np.array([1.0, 2.0, -1.0, -2.0], np.float32)   # std = sqrt(2.5)


def test_normalised_divides_by_the_standard_deviation_and_keeps_signs():
    np.testing.assert_allclose(normalised(STUDENT), STUDENT / np.sqrt(2.5), rtol=1e-6)
    np.testing.assert_allclose(normalised(np.array([0.3, 0.3])), [0.3, 0.3])  # no spread: unchanged
    np.testing.assert_allclose(normalised(np.array([1.0, 3.0]), np.array([0.0, 2.0])), [1.0, 3.0])


def test_without_critique_ppo_trains_on_executed_rows_with_the_teachers_own_advantage():
    t = teacher_targets(INSTRUCTION, ACTION, EXECUTED, OWN, STUDENT, imitate=False)
    np.testing.assert_array_equal(t.ppo, EXECUTED)
    np.testing.assert_array_equal(t.action[EXECUTED], INSTRUCTION[EXECUTED])
    # scaled by the spread of the executed rows' advantages (0.2, -0.2): std 0.2
    np.testing.assert_allclose(t.advantage, OWN / 0.2, rtol=1e-6)
    np.testing.assert_array_equal(t.imitation, 0.0)


def test_imitation_only_of_the_students_own_choices_that_its_critic_liked():
    t = teacher_targets(INSTRUCTION, ACTION, EXECUTED, OWN, STUDENT, imitate=True)
    # row 1: the student's action 4, advantage 2 -> weight 2 / sqrt(2.5); row 3: negative -> 0;
    # executed rows are PPO's, never imitated
    np.testing.assert_allclose(t.imitation, [0.0, 2.0 / np.sqrt(2.5), 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(t.action, [0, 4, 2, 5])


def test_without_a_student_there_is_nothing_to_critique():
    everything = np.ones(4, bool)
    t = teacher_targets(INSTRUCTION, INSTRUCTION, everything, OWN, None, imitate=True)
    np.testing.assert_array_equal(t.ppo, everything)
    np.testing.assert_allclose(t.advantage, OWN / OWN.std(), rtol=1e-6)
    np.testing.assert_array_equal(t.imitation, 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.25, 1.0])
def test_behaviour_probability_of_the_acting_mixture(eps):
    pi_s = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    action, instruction = np.array([1, 2]), np.array([1, 0])
    # row 0 took the instruction: eps + (1 - eps) * 0.3; row 1 did not: (1 - eps) * 0.2
    expected = [eps + (1 - eps) * 0.3, (1 - eps) * 0.2]
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(behaviour_logprob(pi_s, action, instruction, eps), np.log(expected), rtol=1e-6)


def test_without_normalisation_advantages_keep_their_scale():
    t = teacher_targets(INSTRUCTION, ACTION, EXECUTED, OWN, STUDENT, imitate=True, normalise=False)
    np.testing.assert_allclose(t.advantage, OWN)
    np.testing.assert_allclose(t.imitation, [0.0, 2.0, 0.0, 0.0])


def test_entropy_of_each_row():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(entropy(probs), [0.0, np.log(3), np.log(2)], atol=1e-9)


def test_imitable_limits_the_imitation_rows_and_keeps_their_scale():
    # row 1 is the only student row with a positive advantage: barred, nothing is imitated
    barred = teacher_targets(INSTRUCTION, ACTION, EXECUTED, OWN, STUDENT, imitate=True,
                             imitable=np.array([True, False, True, True]))
    np.testing.assert_array_equal(barred.imitation, 0.0)
    allowed = teacher_targets(INSTRUCTION, ACTION, EXECUTED, OWN, STUDENT, imitate=True,
                              imitable=np.array([False, True, False, False]))
    np.testing.assert_allclose(allowed.imitation, [0.0, 2.0 / np.sqrt(2.5), 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(barred.ppo, EXECUTED)


def test_where_surer_the_teacher_imitates_only_where_the_student_had_lower_entropy():
    # one step, four envs, all queried, all the student's choices, all with a positive advantage;
    # the teacher's message has entropy log 2 everywhere, the student's entropy varies around it
    rollout = Rollout.empty(1, 4, 3)
    rollout.prompts = [["a", "b", "c", "d"]]
    rollout.queried[:] = True
    rollout.probs[:] = [0.5, 0.5, 0.0]
    rollout.action[:] = 1
    rollout.student_entropy[0] = [0.1, np.log(2) - 0.01, np.log(2) + 0.01, np.log(3)]
    advantage = np.ones((1, 4), np.float32)
    every = teacher_rows(rollout, np.zeros(4, np.float32), advantage, imitate=True, normalize=False, gamma=0.99,
                         lam=0.95)
    surer = teacher_rows(rollout, np.zeros(4, np.float32), advantage, imitate=True, normalize=False, gamma=0.99,
                         lam=0.95, where_surer=True)
    np.testing.assert_array_equal(every.imitation, [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(surer.imitation, [1.0, 1.0, 0.0, 0.0])
