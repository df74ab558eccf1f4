"""Any Hugging Face LLM as the teacher, in-process: seq2seq (T5), GPT-2 and Qwen2 shapes, each fully
fine-tuned and with a LoRA adapter, through the one code path (scores, value head, PPO updater,
checkpoints, resume, behavioural cloning).

The reference for every score and value is a direct transformers (+ peft) computation, pair by pair,
on a model rebuilt from the saved checkpoint: after a PPO step the adapter is non-zero, so a LoRA
path that dropped or misplaced the adapter would disagree.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from bidir.critique import TeacherRows
from bidir.evaluate import load_run, restore
from bidir.llm import LocalCaller
from bidir.prompts import build_prompt
from bidir.teacher import Teacher
from bidir.teacher_cli import main as teacher_cli
from bidir.teacher_llm import (TeacherInitializer, TeacherPPOSettings, TeacherPPOUpdater, hidden_size,
                               teacher_module_functions)
from bidir.models import SHAPES, build_model, check_llm_config, shape_parameters

sys.path.insert(0, str(Path(__file__).parent))
from test_train import assert_resumed_run_equals_uninterrupted  # noqa: E402

try:
    import peft
except ImportError:  # the LoRA cases need peft (in the [test] and [lora] extras); the rest do not
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="peft is not installed")
pytestmark = pytest.mark.slow  # each family trains, saves and rebuilds its teacher, 5-20 s a case

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
PROMPTS = [build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], []),
           build_prompt("go to the red ball", [["You see a wall 1 step left", "You see a red ball 3 steps right"]], []),
           build_prompt("pick up the blue key", [["You see a blue key 1 step forward"]], [])]
FAMILIES = {"tiny-t5": "seq2seq", "tiny-gpt2": "causal", "tiny-qwen2": "causal"}
LORA = {"enabled": True, "r": 4, "alpha": 8, "target_modules": None, "adapter_path": None}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {shape: str(build_model(root / shape, shape)) for shape in FAMILIES}


def llm_config(path, model_type, lora):
    return OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": model_type, "model_path": path, "pretrained": True, "minibatch_size": 64,
        "pre_encode_inputs": model_type == "seq2seq", "constructor_kwargs": None,
        "lora": LORA if lora else {"enabled": False}}}})


SETTINGS = TeacherPPOSettings(lr=1e-2, epochs=2, minibatch_size=3, gradient_batch_size=2, clip_eps=0.2,
                              entropy_coef=0.0, value_loss_coef=0.5, imitation_coef=0.0, max_grad_norm=10.0)


def make_teacher(path, model_type, lora, checkpoint=None, seed=0):
    caller = LocalCaller(llm_config(path, model_type, lora), custom_updater={"main_llm": TeacherPPOUpdater(SETTINGS)},
                         custom_module_functions={"main_llm": teacher_module_functions(seed)},
                         custom_model_initializer={"main_llm": TeacherInitializer(seed)})
    teacher = Teacher(caller, INSTRUCTIONS)
    if checkpoint:
        teacher.load(checkpoint)
    return teacher


def ppo_step(teacher, tmp_path):
    """One PPO update that pushes "go forward" up; returns the checkpoint written after it."""
    probs, values = teacher.advise(PROMPTS)
    actions = np.full(len(PROMPTS), 2)
    saved = tmp_path / "teacher.pt"
    n = len(PROMPTS)
    teacher.update(TeacherRows(PROMPTS, actions, np.log(probs[np.arange(n), actions]), values, np.ones(n),
                               values + 1.0, np.ones(n, bool), np.zeros(n), np.ones(n), np.zeros(n, int),
                               np.arange(n)))
    teacher.save(saved)
    return saved


def reference(path, model_type, state, lora):
    """(log pi_T over INSTRUCTIONS, V_T) per prompt with plain transformers/peft calls, one
    (prompt, instruction) pair at a time, weights taken from the teacher checkpoint `state`."""
    tok = AutoTokenizer.from_pretrained(path)
    model = (AutoModelForSeq2SeqLM if model_type == "seq2seq" else AutoModelForCausalLM).from_pretrained(path)
    llm_state = {k.removeprefix("_LLM_model."): v for k, v in state.items() if k.startswith("_LLM_model.")}
    if lora:
        model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"]))
        missing = model.load_state_dict(llm_state, strict=False)
        assert not missing.unexpected_keys and all("lora_" not in k for k in missing.missing_keys)
    else:
        model.load_state_dict(llm_state, strict=True)
    model.eval()
    head = torch.nn.Sequential(torch.nn.Linear(hidden_size(model.config), 256), torch.nn.Sigmoid(),
                               torch.nn.Linear(256, 1))
    head.load_state_dict({k.removeprefix("_module_functions.value.head."): v for k, v in state.items()
                          if k.startswith("_module_functions.value.head.")})
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    scores, values = [], []
    with torch.no_grad():
        for prompt in PROMPTS:
            row = []
            for instruction in INSTRUCTIONS:
                c, a = ids(prompt), ids(instruction)
                if model_type == "seq2seq":
                    out = model(input_ids=torch.tensor([c]), decoder_input_ids=torch.tensor([[0] + a]),
                                output_hidden_states=True)
                    logits, state_at_answer = out.logits[0, :-1], out.decoder_hidden_states[-1][0, 0]
                else:
                    out = model(input_ids=torch.tensor([c + a]), output_hidden_states=True)
                    logits, state_at_answer = out.logits[0, len(c) - 1:-1], out.hidden_states[-1][0, len(c) - 1]
                row.append(logits.log_softmax(-1)[torch.arange(len(a)), a].sum())
            scores.append(torch.stack(row))
            values.append(head(state_at_answer)[0])
    return torch.stack(scores), torch.stack(values)


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=needs_peft)], ids=["full", "lora"])
@pytest.mark.parametrize("shape", list(FAMILIES))
def test_trained_teacher_matches_a_direct_transformers_computation(models, tmp_path, shape, lora):
    path, model_type = models[shape], FAMILIES[shape]
    teacher = make_teacher(path, model_type, lora)
    before = {k: v.clone() for k, v in teacher.caller._models["main_llm"].state_dict().items()}
    saved = ppo_step(teacher, tmp_path)
    outputs = teacher.caller.custom_module_fns(["score", "value"], contexts=PROMPTS,
                                               candidates=[INSTRUCTIONS] * len(PROMPTS))
    scores = torch.stack([o["score"] for o in outputs])
    values = torch.stack([o["value"][0, 0] for o in outputs])
    state = torch.load(saved, weights_only=True)["model"]
    expected_scores, expected_values = reference(path, model_type, state, lora)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, expected_values, atol=1e-5, rtol=0)

    after = teacher.caller._models["main_llm"].state_dict()
    changed = {k.replace("base_model.model.", "").replace(".base_layer", "")
               for k, v in after.items() if k not in before or not torch.equal(before[k], v)}
    assert any(k.startswith("_module_functions.value.") for k in changed)
    if lora:  # base weights frozen: only the adapter and the value head moved, and only they are saved
        assert all("lora_" in k or k.startswith("_module_functions.") for k in changed), sorted(changed)[:5]
        assert set(state) == {n for n, p in teacher.caller._models["main_llm"].named_parameters() if p.requires_grad}
        assert all("lora_" in k or k.startswith("_module_functions.") for k in state)
    else:
        assert any(k.startswith("_LLM_model.") for k in changed)
        assert set(state) == set(after)


@needs_peft
@pytest.mark.parametrize("shape", list(FAMILIES))
def test_lora_checkpoint_reloads_with_identical_outputs_and_is_small(models, tmp_path, shape):
    path, model_type = models[shape], FAMILIES[shape]
    teacher = make_teacher(path, model_type, lora=True)
    saved = ppo_step(teacher, tmp_path)
    trained = teacher.advise(PROMPTS)
    reloaded = make_teacher(path, model_type, lora=True, checkpoint=str(saved)).advise(PROMPTS)
    np.testing.assert_array_equal(reloaded[0], trained[0])
    np.testing.assert_array_equal(reloaded[1], trained[1])
    state = torch.load(saved, weights_only=True)
    trainable = sum(v.numel() for v in state["model"].values())
    model_size = sum(p.numel() for p in teacher.caller._models["main_llm"].parameters())
    assert trainable < model_size / 2  # adapter + head only (tiny models: the head is a large share)
    assert state["optimizer"]["state"]
    (tmp_path / "full").mkdir()
    full = ppo_step(make_teacher(path, model_type, lora=False), tmp_path / "full")
    with pytest.raises(ValueError, match="does not match this LoRA teacher"):  # a full checkpoint is refused
        make_teacher(path, model_type, lora=True, checkpoint=str(full))


def test_gpt2_width_is_read_from_n_embd(models):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models["tiny-gpt2"])
    assert "hidden_size" not in config.to_dict() and config.n_embd == 32  # what broke the value head
    assert hidden_size(config) == 32
    assert hidden_size(AutoConfig.from_pretrained(models["tiny-t5"])) == 64
    assert hidden_size(AutoConfig.from_pretrained(models["tiny-qwen2"])) == 32


LORA_OVERRIDES = ["lamorel_args.llm_configs.main_llm.lora.enabled=true", "lamorel_args.llm_configs.main_llm.lora.r=4"]
CAUSAL_OVERRIDES = ["lamorel_args.llm_configs.main_llm.model_type=causal",
                    "lamorel_args.llm_configs.main_llm.pre_encode_inputs=false"]


@needs_peft
@pytest.mark.parametrize("shape", ["tiny-qwen2", "tiny-t5"])
def test_resumed_lora_run_equals_uninterrupted_run(tmp_path, shape):
    overrides = [f"lamorel_args.llm_configs.main_llm.model_path={shape}", "rl_script_args.eval_episodes=0", "rl_script_args.eval_every=0",
                 *LORA_OVERRIDES, *(CAUSAL_OVERRIDES if FAMILIES[shape] == "causal" else [])]
    split = assert_resumed_run_equals_uninterrupted(tmp_path, "bidir", overrides, 4, 2)
    saved = torch.load(split / "checkpoints" / "iter_000004" / "teacher.pt", weights_only=True)["model"]
    assert saved and all("lora_" in k or k.startswith("_module_functions.") for k in saved)
    _, teacher = restore(*load_run(split))  # bidir-eval's path: the adapter checkpoint loads into a LoRA teacher
    probs, _ = teacher.advise(PROMPTS)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def test_model_type_mismatch_is_reported_with_the_override(models):
    config = llm_config(models["tiny-qwen2"], "seq2seq", lora=False).llm_configs.main_llm
    with pytest.raises(ValueError, match="model_type=causal"):
        check_llm_config(config)
    check_llm_config(llm_config(models["tiny-qwen2"], "causal", lora=False).llm_configs.main_llm)


@needs_peft
def test_bc_pretraining_writes_an_adapter_that_loads_as_the_teacher(models, tmp_path):
    from bidir.pretrain import pretrain

    out = pretrain(models["tiny-qwen2"], tmp_path / "adapter", levels=("BabyAI-GoToObj-v0",), episodes_per_level=2,
                   epochs=1, batch_size=16, lora={"r": 4, "alpha": 8})
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    config = llm_config(models["tiny-qwen2"], "causal", lora=True)
    config.llm_configs.main_llm.lora.adapter_path = str(out)
    caller = LocalCaller(config, custom_module_functions={"main_llm": teacher_module_functions(0)},
                         custom_model_initializer={"main_llm": TeacherInitializer(0)})
    adapted = Teacher(caller, INSTRUCTIONS).advise(PROMPTS)[0]
    base = make_teacher(models["tiny-qwen2"], "causal", lora=False).advise(PROMPTS)[0]
    assert not np.allclose(adapted, base)  # the cloned adapter changes the teacher's policy
    lora_params = {n for n, p in caller._models["main_llm"].named_parameters() if p.requires_grad and "lora_" in n}
    assert lora_params  # and it is trainable from there


def test_published_shapes_have_their_real_parameter_counts():
    # Counts of the published checkpoints (their model cards / config.json), except flan-t5: transformers 5
    # ties T5's LM head to its embeddings, so the 32128 x d_model head is not counted twice.
    assert shape_parameters("gpt2") == 124_439_808
    assert shape_parameters("smollm-135m") == 134_515_008
    assert shape_parameters("qwen2-0.5b") == 494_032_768
    assert shape_parameters("flan-t5-small") == 76_961_152 - 32128 * 512
    assert shape_parameters("flan-t5-base") == 247_577_856 - 32128 * 768


def test_cli_builds_a_shape(tmp_path, capsys):
    teacher_cli(["build", "--shape", "tiny-qwen2", "--output", str(tmp_path / "q")])
    assert (tmp_path / "q" / "config.json").exists()
    teacher_cli(["build", "--list"])
    listing = capsys.readouterr().out
    assert all(shape in listing for shape in SHAPES) and "494.03M" in listing
