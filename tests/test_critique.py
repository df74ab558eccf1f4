"""The student's critique of the teacher (docs/design.md, "The critique"), on rollouts whose rows are
worked out by hand from the equations: which rows train the teacher's PPO, with which advantage
and importance weight, and which rows it imitates."""
import numpy as np
import pytest
import torch

from bidir.critique import CritiqueSettings, entropy, normalised, pair_logprob, teacher_rows
from bidir.rollout import Rollout, behaviour_logprob
from bidir.student import Student, student_inputs


def settings(**changes) -> CritiqueSettings:
    base = dict(ppo_rows="executed", advantage="teacher", imitate=False, where_surer=False, normalize=False,
                gamma=0.9, lam=1.0)
    return CritiqueSettings(**{**base, **changes})


def rollout(probs, action, instruction, executed, reward, done, teacher_value, student_entropy=None) -> Rollout:
    """A one-environment rollout in which the teacher is asked at every step."""
    steps, k = len(probs), len(probs[0])
    column = lambda values, dtype: np.asarray(values, dtype).reshape(steps, 1)  # noqa: E731
    return Rollout(image=np.zeros((steps, 1, 7, 7, 3), np.uint8), direction=np.zeros((steps, 1), np.int64),
                   missions=[["go to the red ball"]] * steps, prompts=[[f"prompt {t}"] for t in range(steps)],
                   queried=np.ones((steps, 1), bool), instruction=column(instruction, np.int64),
                   probs=np.asarray(probs, np.float64).reshape(steps, 1, k),
                   teacher_value=column(teacher_value, np.float32), shown=np.ones((steps, 1), bool),
                   executed=column(executed, bool), action=column(action, np.int64),
                   logprob=np.zeros((steps, 1), np.float32), value=np.zeros((steps, 1), np.float32),
                   student_entropy=column(student_entropy if student_entropy is not None else [0.0] * steps,
                                          np.float32),
                   reward=column(reward, np.float32), done=column(done, bool))


# Three steps of one episode: the teacher's instruction is executed at step 0; the student chose at
# steps 1 and 2 (at step 2 the same action as the instruction). Reward 1 at the end.
PROBS = [[0.6, 0.2, 0.2], [0.2, 0.4, 0.4], [0.1, 0.1, 0.8]]
EPISODE = dict(probs=PROBS, action=[0, 1, 2], instruction=[0, 2, 2], executed=[True, False, False],
               reward=[0.0, 0.0, 1.0], done=[False, False, True], teacher_value=[0.5, 0.6, 0.8])
# The teacher's GAE with gamma 0.9, lambda 1: deltas 0.04, 0.12, 0.2 -> advantages 0.31, 0.30, 0.2,
# value targets (advantage + V_T) 0.81, 0.9, 1.0 (the discounted return of the reward at step 2).
OWN = [0.31, 0.30, 0.2]
RETURNS = [0.81, 0.9, 1.0]
STUDENT = np.array([[0.5], [-1.0], [0.25]], np.float32)  # A_S at each step
MU = np.log(np.array([[0.6], [0.5], [0.1]]))              # the pair's probability of each action taken


def test_executed_rows_train_ppo_with_the_teachers_own_advantage():
    rows = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, None, settings())
    np.testing.assert_array_equal(rows.ppo, [True, False, False])
    np.testing.assert_array_equal(rows.weight, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(rows.advantage, OWN, rtol=1e-5)
    np.testing.assert_allclose(rows.returns, RETURNS, rtol=1e-5)
    np.testing.assert_allclose(rows.logprob, np.log([0.6, 0.4, 0.8]), rtol=1e-6)
    np.testing.assert_array_equal(rows.action, [0, 1, 2])
    np.testing.assert_array_equal(rows.imitation, 0.0)
    assert rows.prompts == ["prompt 0", "prompt 1", "prompt 2"]
    np.testing.assert_array_equal(rows.step, [0, 1, 2])


def test_every_row_trains_ppo_weighted_for_who_acted():
    rows = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, MU, settings(ppo_rows="all"))
    np.testing.assert_array_equal(rows.ppo, [True, True, True])
    # min(1, pi_T(a) / mu_T(a)): 0.6 / 0.6, 0.4 / 0.5, 0.8 / 0.1 (truncated)
    np.testing.assert_allclose(rows.weight, [1.0, 0.8, 1.0], rtol=1e-6)
    np.testing.assert_allclose(rows.advantage, OWN, rtol=1e-5)
    normalised_rows = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, MU,
                                   settings(ppo_rows="all", normalize=True))
    np.testing.assert_allclose(normalised_rows.advantage, np.array(OWN) / np.std(OWN), rtol=1e-5)


def test_the_students_critique_as_the_teachers_advantage_keeps_its_negative_rows():
    rows = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, MU,
                        settings(ppo_rows="all", advantage="student"))
    np.testing.assert_allclose(rows.advantage, [0.5, -1.0, 0.25])
    np.testing.assert_allclose(rows.returns, RETURNS, rtol=1e-5)  # V_T still learns the teacher's returns
    executed_only = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, None,
                                 settings(advantage="student", normalize=True))
    np.testing.assert_allclose(executed_only.advantage, [0.5, -1.0, 0.25])  # one PPO row: no spread, unchanged


def test_imitation_only_of_the_students_own_choices_that_its_critic_liked():
    rows = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, None, settings(imitate=True))
    # step 0 was the teacher's (never imitated), step 1 had a negative critique, step 2 is imitated
    np.testing.assert_allclose(rows.imitation, [0.0, 0.0, 0.25])
    scaled = teacher_rows(rollout(**EPISODE), np.zeros(1, np.float32), STUDENT, None,
                          settings(imitate=True, normalize=True))
    np.testing.assert_allclose(scaled.imitation, [0.0, 0.0, 0.25 / np.std(STUDENT)], rtol=1e-6)


def test_where_surer_the_teacher_imitates_only_where_the_student_had_lower_entropy():
    # the student chose at every step, with a positive critique; the message's entropies are
    # H(0.6, 0.2, 0.2) = 0.950, H(0.2, 0.4, 0.4) = 1.055, H(0.1, 0.1, 0.8) = 0.639
    episode = {**EPISODE, "executed": [False, False, False], "student_entropy": [0.5, 1.2, 0.6]}
    positive = np.array([[1.0], [1.0], [1.0]], np.float32)
    every = teacher_rows(rollout(**episode), np.zeros(1, np.float32), positive, None, settings(imitate=True))
    surer = teacher_rows(rollout(**episode), np.zeros(1, np.float32), positive, None,
                         settings(imitate=True, where_surer=True))
    np.testing.assert_array_equal(every.imitation, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(surer.imitation, [1.0, 0.0, 1.0])


def test_without_a_student_there_is_nothing_to_critique():
    glam = {**EPISODE, "action": [0, 2, 2], "executed": [True, True, True]}
    rows = teacher_rows(rollout(**glam), np.zeros(1, np.float32), None, None, settings(imitate=True, normalize=True))
    np.testing.assert_array_equal(rows.ppo, True)
    np.testing.assert_allclose(rows.advantage, np.array(OWN) / np.std(OWN), rtol=1e-5)
    np.testing.assert_array_equal(rows.imitation, 0.0)


def test_the_last_query_bootstraps_from_the_value_after_the_rollout():
    unfinished = {**EPISODE, "done": [False, False, False]}
    rows = teacher_rows(rollout(**unfinished), np.array([2.0], np.float32), STUDENT, None, settings())
    # delta at step 2: 1 + 0.9 * 2.0 - 0.8 = 2.0; then 0.12 + 0.9 * 2.0 and 0.04 + 0.9 * that
    np.testing.assert_allclose(rows.advantage, [0.04 + 0.9 * 1.92, 1.92, 2.0], rtol=1e-5)


def constant_student(pi_s: list[float]) -> Student:
    """A student whose policy is `pi_s` whatever it sees: its actor's last layer reads nothing."""
    student = Student(len(pi_s), 3)
    with torch.no_grad():
        student.actor[-1].weight.zero_()
        student.actor[-1].bias.copy_(torch.log(torch.tensor(pi_s)))
    return student


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_the_pairs_probability_of_an_action(eps):
    # pi_S = (0.5, 0.3, 0.2) whatever the message: mu_T(a) = eps pi_T(a) + (1 - eps) pi_S(a)
    r = rollout(**EPISODE)
    got = pair_logprob(constant_student([0.5, 0.3, 0.2]), r, eps)
    expected = eps * np.array([0.6, 0.4, 0.8]) + (1 - eps) * np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(np.exp(got[:, 0]), expected, rtol=1e-5)


def test_the_pairs_probability_sums_the_student_over_the_instructions_the_teacher_could_draw():
    torch.manual_seed(0)
    student = Student(3, 3)
    r = rollout(**EPISODE)
    r.image = np.random.default_rng(0).integers(0, 6, r.image.shape).astype(np.uint8)
    got = np.exp(pair_logprob(student, r, 0.0)[:, 0])
    expected = []
    for t in range(3):
        obs = {"image": r.image[t], "direction": r.direction[t]}
        by_instruction = []
        for i in range(3):  # the student's probability of the action taken, had it been told i
            x = student_inputs(obs, r.missions[t], np.array([i]), r.probs[t], r.teacher_value[t], r.shown[t])
            with torch.no_grad():
                by_instruction.append(float(student(x)[0].probs[0, r.action[t, 0]]))
        expected.append(float(np.dot(PROBS[t], by_instruction)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_normalised_divides_by_the_standard_deviation_and_keeps_signs():
    values = np.array([1.0, 2.0, -1.0, -2.0], np.float32)
    np.testing.assert_allclose(normalised(values), values / np.sqrt(2.5), rtol=1e-6)
    np.testing.assert_allclose(normalised(np.array([0.3, 0.3])), [0.3, 0.3])  # no spread: unchanged
    np.testing.assert_allclose(normalised(np.array([1.0, 3.0]), np.array([0.0, 2.0])), [1.0, 3.0])


@pytest.mark.parametrize("eps", [0.0, 0.25, 1.0])
def test_behaviour_probability_of_the_acting_mixture(eps):
    pi_s = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    action, instruction = np.array([1, 2]), np.array([1, 0])
    # row 0 took the instruction: eps + (1 - eps) * 0.3; row 1 did not: (1 - eps) * 0.2
    expected = [eps + (1 - eps) * 0.3, (1 - eps) * 0.2]
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(behaviour_logprob(pi_s, action, instruction, eps), np.log(expected), rtol=1e-6)


def test_entropy_of_each_row():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(entropy(probs), [0.0, np.log(3), np.log(2)], atol=1e-9)
