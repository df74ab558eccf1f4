"""The teacher's prompt formats and candidate scorings, against strings and numbers written from
their specification: bidir (unchanged), GLAM's, the chat template's; the sum and the mean of a
candidate's token log-probabilities on a tiny causal model."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from bidir.evaluate import play_episodes
from bidir.llm import LocalCaller
from bidir.models import build_model
from bidir.prompts import PromptHistory, build_prompt, prompt_builder
from bidir.teacher import Teacher
from bidir.teacher_llm import teacher_module_functions

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
MISSION = "go to the red ball"
OBSERVATIONS = [["You see a wall 2 steps forward", "You see a red ball 1 step left"],
                ["You see a red ball 1 step forward"]]
ACTIONS = ["turn left"]
GLAM = ("Possible actions of the agent: turn left, turn right, go forward, pick up, drop, toggle\n"
        "Goal of the agent: go to the red ball\n"
        "Observation 0: You see a wall 2 steps forward, You see a red ball 1 step left\n"
        "Action 0: turn left\n"
        "Observation 1: You see a red ball 1 step forward\n"
        "Action 1:")
QUESTION = ("Possible actions of the agent: turn left, turn right, go forward, pick up, drop, toggle\n"
            "Goal of the agent: go to the red ball\n"
            "Observation 0: You see a wall 2 steps forward, You see a red ball 1 step left\n"
            "Action 0: turn left\n"
            "Observation 1: You see a red ball 1 step forward\n"
            "What should the agent do next? Answer with one of: turn left, turn right, go forward, pick up, drop, "
            "toggle.")
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return str(build_model(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2", "tiny-gpt2"))


def test_bidir_prompt_is_unchanged_and_the_default():
    expected = ("Goal of the agent: go to the red ball\n"
                "Observation 0: You see a wall 2 steps forward, You see a red ball 1 step left\n"
                "Action 0: turn left\n"
                "Observation 1: You see a red ball 1 step forward\n"
                "Action:")
    assert build_prompt(MISSION, OBSERVATIONS, ACTIONS) == expected
    assert prompt_builder("bidir", INSTRUCTIONS)(MISSION, OBSERVATIONS, ACTIONS) == expected
    history = PromptHistory(1, 2)
    history.start(0, {"mission": MISSION, "descriptions": OBSERVATIONS[0]})
    history.advance(0, "turn left", {"descriptions": OBSERVATIONS[1]})
    assert history.prompt(0) == expected


def test_glam_prompt_lists_the_actions_and_numbers_the_open_action():
    assert prompt_builder("glam", INSTRUCTIONS)(MISSION, OBSERVATIONS, ACTIONS) == GLAM
    assert prompt_builder("glam", ["go forward"])(MISSION, OBSERVATIONS[:1], []) == (
        "Possible actions of the agent: go forward\nGoal of the agent: go to the red ball\n"
        "Observation 0: You see a wall 2 steps forward, You see a red ball 1 step left\nAction 0:")


def test_chat_prompt_is_the_question_in_the_models_template(gpt2):
    tokenizer = AutoTokenizer.from_pretrained(gpt2)
    tokenizer.chat_template = TEMPLATE
    history = PromptHistory(1, 2, prompt_builder("chat", INSTRUCTIONS, tokenizer))
    history.start(0, {"mission": MISSION, "descriptions": OBSERVATIONS[0]})
    history.advance(0, "turn left", {"descriptions": OBSERVATIONS[1]})
    assert history.prompt(0) == f"<user>{QUESTION}</user><assistant>"


def test_chat_without_a_template_and_unknown_formats_are_refused(gpt2):
    with pytest.raises(ValueError, match="chat template"):
        prompt_builder("chat", INSTRUCTIONS, AutoTokenizer.from_pretrained(gpt2))
    with pytest.raises(ValueError, match="unknown prompt format 'glm'"):
        prompt_builder("glm", INSTRUCTIONS)


def scores(path, scoring, prompts):
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": "causal", "model_path": path, "pretrained": True, "minibatch_size": 64,
        "pre_encode_inputs": False, "candidate_scoring": scoring}}})
    caller = LocalCaller(config, custom_module_functions={"main_llm": teacher_module_functions()})
    outputs = caller.custom_module_fns(["score"], contexts=prompts, candidates=[INSTRUCTIONS] * len(prompts))
    return torch.stack([o["score"] for o in outputs])


def test_sum_and_mean_scores_are_the_candidates_token_logprobs(gpt2):
    prompts = [build_prompt(MISSION, OBSERVATIONS, ACTIONS), GLAM]
    tokenizer = AutoTokenizer.from_pretrained(gpt2)
    model = AutoModelForCausalLM.from_pretrained(gpt2).eval()
    expected_sum, expected_mean = torch.zeros(2, 6), torch.zeros(2, 6)
    for i, prompt in enumerate(prompts):  # by hand: one sequence per pair, log-softmax at each candidate token
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, candidate in enumerate(INSTRUCTIONS):
            tokens = tokenizer(candidate, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([context + tokens])).logits[0]
            logprobs = torch.log_softmax(logits[len(context) - 1:-1], -1)[torch.arange(len(tokens)), tokens]
            expected_sum[i, j], expected_mean[i, j] = logprobs.sum(), logprobs.mean()
    summed, mean = scores(gpt2, "sum", prompts), scores(gpt2, "mean", prompts)
    torch.testing.assert_close(summed, expected_sum, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean, expected_mean, atol=1e-4, rtol=1e-4)
    lengths = torch.tensor([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in INSTRUCTIONS])
    assert lengths.min() < lengths.max()  # else sum and mean would rank alike and the test prove little
    torch.testing.assert_close(mean, summed / lengths)  # what experiments/prompting.py relies on


class RecordingTeacher:
    """Answers uniformly and keeps the prompts it was asked."""

    def __init__(self, build):
        self.build_prompt, self.asked = build, []

    def advise(self, prompts):
        self.asked += prompts
        return np.full((len(prompts), len(INSTRUCTIONS)), 1 / len(INSTRUCTIONS)), np.zeros(len(prompts), np.float32)


def test_evaluation_asks_the_teacher_in_its_own_format():
    teacher = RecordingTeacher(prompt_builder("glam", INSTRUCTIONS))
    episodes = play_episodes("teacher_alone", "BabyAI-GoToRedBallNoDists-v0", INSTRUCTIONS, 2, 1001, teacher=teacher)
    assert len(episodes) == 2 and teacher.asked
    assert all(p.startswith("Possible actions of the agent: turn left,") and p.endswith("Action 0:")
               for p in teacher.asked)
    assert Teacher(None, INSTRUCTIONS).build_prompt is build_prompt  # a Teacher's default format is bidir's
