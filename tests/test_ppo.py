"""GAE, PPO losses, the distillation and acting schedules and KL, on hand-computed cases."""
import math

import numpy as np
import pytest
import torch

from bidir.ppo import Batch, anneal, gae, policy_loss, value_loss
from bidir.student import kl_teacher_student


def test_gae_matches_hand_computation():
    # gamma 0.9, lambda 0.8; the episode ends with step 2, so nothing is bootstrapped from 0.9.
    # delta_2 = 1 - 0.7 = 0.3;          A_2 = 0.3
    # delta_1 = 0.9*0.7 - 0.6 = 0.03;   A_1 = 0.03 + 0.72*0.3 = 0.246
    # delta_0 = 0.9*0.6 - 0.5 = 0.04;   A_0 = 0.04 + 0.72*0.246 = 0.21712
    advantages, returns = gae(np.array([[0.0], [0.0], [1.0]]), np.array([[0.5], [0.6], [0.7]]),
                              np.array([[False], [False], [True]]), np.array([0.9]), 0.9, 0.8)
    np.testing.assert_allclose(advantages[:, 0], [0.21712, 0.246, 0.3], atol=1e-6)
    np.testing.assert_allclose(returns[:, 0], [0.71712, 0.846, 1.0], atol=1e-6)


def test_gae_bootstraps_only_within_an_episode():
    # Step 0 ends an episode: its advantage is r - V = 0.8 with no credit from step 1.
    # Step 1 is cut by the rollout's end: bootstrapped with V(s_T) = 0.5: 0.9*0.5 - 0.4 = 0.05.
    advantages, _ = gae(np.array([[1.0], [0.0]]), np.array([[0.2], [0.4]]), np.array([[True], [False]]),
                        np.array([0.5]), 0.9, 0.8)
    np.testing.assert_allclose(advantages[:, 0], [0.8, 0.05], atol=1e-6)


@pytest.mark.parametrize("ratio, advantage, expected", [
    (1.5, 1.0, -1.2),   # positive advantage, ratio above 1+eps: clipped at 1.2
    (1.5, -1.0, 1.5),   # negative advantage: the unclipped (worse) term wins
    (0.5, 1.0, -0.5),   # ratio below 1-eps, positive advantage: min keeps the unclipped 0.5
    (1.1, 1.0, -1.1),   # inside the trust region: no clipping
])
def test_policy_loss_clipping(ratio, advantage, expected):
    old = torch.tensor([math.log(0.2)])
    new = old + math.log(ratio)
    assert policy_loss(new, old, torch.tensor([advantage]), 0.2).item() == pytest.approx(expected, abs=1e-6)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    # old 0.5 -> new 1.0 is clipped to 0.7: (0.7-2)^2 = 1.69 beats (1-2)^2 = 1.
    assert value_loss(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2.0]), 0.2).item() == pytest.approx(1.69)
    # within the clip range both terms are equal.
    assert value_loss(torch.tensor([1.0]), torch.tensor([0.9]), torch.tensor([2.0]), 0.2).item() == pytest.approx(1.0)


def test_schedules_anneal_linearly_to_zero():
    assert [anneal(k, 2.0, 20) for k in (0, 5, 10, 20, 30)] == [2.0, 1.5, 1.0, 0.0, 0.0]
    assert anneal(0, 1.0, 0) == 0.0


def test_teachers_share_of_acting_falls_to_its_floor_and_stays():
    from bidir.methods import get_method
    bidir = get_method("bidir")
    # start 1, floor 0.2 over 20 iterations: 1 - 0.8 k / 20 until k = 20, then 0.2
    assert [bidir.teacher_share(k, 1.0, 20, 0.2) for k in (0, 5, 10, 20, 30)] == \
        pytest.approx([1.0, 0.8, 0.6, 0.2, 0.2])
    # without a floor the schedule is the distillation's, exactly (runs made before the floor reproduce)
    assert [bidir.teacher_share(k, 1.0, 30, 0.0) for k in range(40)] == [anneal(k, 1.0, 30) for k in range(40)]
    assert get_method("glam").teacher_share(50, 1.0, 30, 0.2) == 1.0
    assert get_method("student").teacher_share(0, 1.0, 30, 0.2) == 0.0


def test_kl_teacher_student():
    logits = torch.zeros(2, 2)  # pi_S uniform
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # KL(uniform||uniform) = 0, KL(one-hot||uniform) = log 2: mean log(2)/2
    assert kl_teacher_student(probs, logits).item() == pytest.approx(math.log(2) / 2)
    assert kl_teacher_student(probs[1:], logits[1:]).item() == pytest.approx(math.log(2))


def test_batch_indexes_every_field_together():
    batch = Batch(x=torch.arange(4), names=["a", "b", "c", "d"])
    picked = batch[torch.tensor([3, 1])]
    assert picked.x.tolist() == [3, 1] and picked.names == ["d", "b"] and len(picked) == 2
