"""The teacher's LLM side (value head, PPO updater, checkpoints) and client side (prompts, memo)."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bidir.critique import TeacherRows
from bidir.llm import LocalCaller
from bidir.models import resolve_model_path
from bidir.prompts import build_prompt
from bidir.teacher import Teacher
from bidir.teacher_llm import TeacherInitializer, TeacherPPOSettings, TeacherPPOUpdater, teacher_module_functions

SETTINGS = dict(lr=1e-2, epochs=2, minibatch_size=2, gradient_batch_size=1, clip_eps=0.2, entropy_coef=0.0,
                value_loss_coef=0.5, imitation_coef=1.0, max_grad_norm=10.0)

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
PROMPTS = [build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], []),
           build_prompt("go to the red ball", [["You see a wall 1 step left"]], [])]


def make_teacher(updater=None, checkpoint=None):
    """A tiny-t5 teacher in-process; with a checkpoint, restored from it (through an updater)."""
    updater = updater or (TeacherPPOUpdater(TeacherPPOSettings(**SETTINGS)) if checkpoint else None)
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": "seq2seq", "model_path": resolve_model_path("tiny-t5"), "pretrained": True,
        "minibatch_size": 64, "pre_encode_inputs": False, "constructor_kwargs": None}}})
    caller = LocalCaller(config, custom_updater={"main_llm": updater} if updater else {},
                         custom_module_functions={"main_llm": teacher_module_functions(seed=0)},
                         custom_model_initializer={"main_llm": TeacherInitializer()})
    teacher = Teacher(caller, INSTRUCTIONS)
    if checkpoint:
        teacher.load(checkpoint)
    return teacher


def test_prompt_format():
    prompt = build_prompt("go to the red ball", [["You see a wall 2 steps forward"], ["You see a red ball 1 step left"]],
                          ["turn left"])
    assert prompt == ("Goal of the agent: go to the red ball\n"
                      "Observation 0: You see a wall 2 steps forward\nAction 0: turn left\n"
                      "Observation 1: You see a red ball 1 step left\nAction:")


def test_advice_is_a_distribution_and_repeated_prompts_reach_the_llm_once():
    teacher = make_teacher()
    probs, values = teacher.advise(PROMPTS + PROMPTS + [PROMPTS[0]])
    assert probs.shape == (5, 6) and values.shape == (5,)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(probs[0], probs[2])
    assert teacher.llm_contexts == 2
    teacher.forget()
    teacher.advise(PROMPTS[:1])
    assert teacher.llm_contexts == 3


def ppo_update(teacher, advantage, tmp_path, ppo=(True, True), imitation=(0.0, 0.0)):
    probs, values = teacher.advise(PROMPTS)
    actions = np.array([2, 2])
    losses = teacher.update(TeacherRows(PROMPTS, actions, np.log(probs[[0, 1], actions]), values,
                                        np.full(2, advantage), values + advantage, np.array(ppo), np.array(imitation),
                                        np.array(ppo, float), np.zeros(2, int), np.arange(2)))
    teacher.save(tmp_path / "teacher.pt")
    return probs, losses


def updater(value_loss_coef=0.5, entropy_coef=0.0):
    return TeacherPPOUpdater(TeacherPPOSettings(**{**SETTINGS, "value_loss_coef": value_loss_coef,
                                                   "entropy_coef": entropy_coef}))


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_ppo_update_moves_the_chosen_instruction_with_its_advantage(tmp_path, advantage):
    teacher = make_teacher(updater())
    before, losses = ppo_update(teacher, advantage, tmp_path)
    after, _ = teacher.advise(PROMPTS)
    assert set(losses) == {"teacher_policy_loss", "teacher_value_loss", "teacher_entropy", "teacher_imitation_loss",
                           "teacher_approx_kl", "teacher_clipfrac"}
    assert np.all(np.sign(after[:, 2] - before[:, 2]) == np.sign(advantage))


@pytest.mark.slow  # 8 s
def test_rows_outside_ppo_leave_the_policy_alone(tmp_path):
    # neither a strongly negative advantage nor the entropy bonus may move pi_T on rows the
    # teacher did not execute (value loss off: its gradient reaches the shared LLM and would move
    # pi_T through it)
    teacher = make_teacher(updater(value_loss_coef=0.0, entropy_coef=1.0))
    before, losses = ppo_update(teacher, -5.0, tmp_path, ppo=(False, False))
    after, _ = teacher.advise(PROMPTS)
    assert losses["teacher_policy_loss"] == 0.0
    np.testing.assert_allclose(after, before, atol=1e-6)


@pytest.mark.slow  # 6 s
def test_imitation_raises_the_imitated_action(tmp_path):
    # no PPO rows, a negative advantage that would lower it, an imitation weight on the first prompt only
    teacher = make_teacher(updater())
    before, losses = ppo_update(teacher, -1.0, tmp_path, ppo=(False, False), imitation=(2.0, 0.0))
    after, _ = teacher.advise(PROMPTS)
    assert losses["teacher_imitation_loss"] > 0
    assert after[0, 2] > before[0, 2]


@pytest.mark.slow  # 8 s
def test_saved_teacher_reloads_with_identical_outputs(tmp_path):
    teacher = make_teacher(updater())
    ppo_update(teacher, 1.0, tmp_path)
    trained = teacher.advise(PROMPTS)
    reloaded = make_teacher(checkpoint=tmp_path / "teacher.pt").advise(PROMPTS)
    np.testing.assert_allclose(reloaded[0], trained[0], atol=1e-6)
    np.testing.assert_allclose(reloaded[1], trained[1], atol=1e-6)
    state = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert any(key.startswith("_module_functions.value.") for key in state["model"])
    assert state["optimizer"]["state"]  # Adam moments saved for resuming


def test_value_head_is_the_same_on_every_backend_and_process():
    a, b = make_teacher().advise(PROMPTS), make_teacher().advise(PROMPTS)
    np.testing.assert_array_equal(a[1], b[1])
