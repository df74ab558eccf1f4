"""The shared-prefix scoring of causal teachers (bidir/llm/shared_prefix.py) gives the full-sequence
path's log-probabilities, values and gradients, to float tolerance, on a tiny Llama: fully
fine-tuned, LoRA on every layer, and LoRA on the top layers with the frozen layers' outputs cached
(first call and cache hits), across minibatch boundaries and contexts of different lengths; a
PPO update through it leaves the same weights; and a run resumed with an empty cache gives the
uninterrupted run's metrics.csv."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bidir.critique import TeacherRows
from bidir.llm import LocalCaller, SharedPrefixOutputs, install_shared_prefix
from bidir.llm.shared_prefix import node_rows, answer_tree, joined_attention
from bidir.models import build_model
from bidir.prompts import build_prompt
from bidir.teacher import Teacher
from bidir.teacher_llm import TeacherInitializer, TeacherPPOSettings, TeacherPPOUpdater, teacher_module_functions

sys.path.insert(0, str(Path(__file__).parent))
from test_train import assert_resumed_run_equals_uninterrupted  # noqa: E402

pytest.importorskip("peft")
pytestmark = pytest.mark.slow  # each case trains or scores a causal teacher twice, 5-30 s

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
PROMPTS = [build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], []),
           build_prompt("go to the red ball", [["You see a wall 1 step left", "You see a red ball 3 steps right"]], []),
           build_prompt("pick up the blue key", [["You see a blue key 1 step forward"]], []),
           build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], [])]  # a repeat
CASES = {"full": {"enabled": False}, "lora": {"enabled": True, "r": 4, "alpha": 8.0},
         "lora-top2": {"enabled": True, "r": 4, "alpha": 8.0, "layers": 2}}
SETTINGS = TeacherPPOSettings(lr=1e-2, epochs=2, minibatch_size=3, gradient_batch_size=2, clip_eps=0.2,
                              entropy_coef=0.01, value_loss_coef=0.5, imitation_coef=1.0, max_grad_norm=10.0)
ATOL = 1e-5  # float32 log-probabilities and values of a 4-layer model: the two paths differ by ~1e-6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(build_model(tmp_path_factory.mktemp("llama") / "tiny-llama", "tiny-llama"))


def make_caller(path, lora, shared_prefix, minibatch_size=7):
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": "causal", "model_path": path, "pretrained": True,
        "minibatch_size": minibatch_size, "pre_encode_inputs": False, "constructor_kwargs": None,
        "shared_prefix": shared_prefix, "frozen_cache_mb": 64, "lora": lora}}})
    return LocalCaller(config, custom_updater={"main_llm": TeacherPPOUpdater(SETTINGS)},
                       custom_module_functions={"main_llm": teacher_module_functions(0)},
                       custom_model_initializer={"main_llm": TeacherInitializer(0)})


def scores_and_grads(caller):
    """Scores and values of PROMPTS (as the updater computes them, with gradients) and the gradient
    of a loss mixing both with every trainable parameter."""
    module = caller._models["main_llm"]
    module.zero_grad()
    out = module(["score", "value"], contexts=PROMPTS, candidates=[INSTRUCTIONS] * len(PROMPTS),
                 require_grad=True, pad_contexts=True)
    scores = torch.stack([o["score"] for o in out])
    values = torch.stack([o["value"][:, 0] for o in out])
    weights = torch.linspace(-1, 1, scores.numel()).reshape(scores.shape)
    ((scores * weights).sum() + values.sum()).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad}
    return scores.detach(), values.detach(), grads


@pytest.mark.parametrize("case", CASES)
def test_same_scores_values_and_gradients(model_path, case):
    plain, fast = make_caller(model_path, CASES[case], False), make_caller(model_path, CASES[case], True)
    outputs = fast._models["main_llm"]._LLM_model(input_ids=torch.tensor([[3, 4]]), attention_mask=torch.ones(1, 2))
    assert isinstance(outputs, SharedPrefixOutputs)  # the fast path is installed
    reference = scores_and_grads(plain)
    for attempt in range(2):  # with lora-top2 the second call reads the frozen layers' cache
        scores, values, grads = scores_and_grads(fast)
        torch.testing.assert_close(scores, reference[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(values, reference[1], atol=ATOL, rtol=0)
        assert grads.keys() == reference[2].keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[2][name], atol=1e-5, rtol=1e-4, msg=name)
    # the client's (no-grad) scores too, one minibatch per candidate: prefixes split across minibatches
    advised = Teacher(fast, INSTRUCTIONS).advise(PROMPTS)
    torch.testing.assert_close(torch.as_tensor(advised[0]).log().float(),
                               torch.log_softmax(reference[0].double(), -1).float(), atol=ATOL, rtol=0)


def test_frozen_layers_cached_only_below_the_adapter(model_path):
    top2 = make_caller(model_path, CASES["lora-top2"], True)
    scorer = top2._models["main_llm"]._LLM_model.get_base_model().forward.__self__
    assert scorer.frozen_layers() == 2  # tiny-llama has 4 layers
    Teacher(top2, INSTRUCTIONS).advise(PROMPTS)
    assert len(scorer.cache.entries) == 3 and scorer.cache.bytes > 0  # one entry per distinct prompt
    every = make_caller(model_path, CASES["lora"], True)
    assert every._models["main_llm"]._LLM_model.get_base_model().forward.__self__.frozen_layers() == 0


@pytest.mark.parametrize("case", ["full", "lora-top2"])
def test_same_ppo_update(model_path, case):
    """Two PPO epochs (gradient accumulation, clipping, Adam) leave the same trainable weights."""
    weights = []
    for shared_prefix in (False, True):
        caller = make_caller(model_path, CASES[case], shared_prefix)
        teacher = Teacher(caller, INSTRUCTIONS)
        probs, values = teacher.advise(PROMPTS)
        n = len(PROMPTS)
        actions = np.array([2, 0, 3, 2])
        teacher.update(TeacherRows(PROMPTS, actions, np.log(probs[np.arange(n), actions]), values,
                                   np.array([1.0, -0.5, 0.3, 1.0]), values + 1.0, np.ones(n, bool), np.full(n, 0.5),
                                   np.ones(n), np.zeros(n, int), np.arange(n)))
        module = caller._models["main_llm"]
        weights.append({name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad})
    for name, value in weights[1].items():
        torch.testing.assert_close(value, weights[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_resumed_run_with_cached_frozen_layers_equals_uninterrupted_run(tmp_path):
    """Cached values are computed per prompt alone, so a resumed run's empty cache changes nothing."""
    key = "lamorel_args.llm_configs.main_llm"
    overrides = [f"{key}.model_path=tiny-llama", f"{key}.model_type=causal", f"{key}.pre_encode_inputs=false",
                 f"{key}.lora.enabled=true", f"{key}.lora.r=4", f"{key}.lora.layers=2", "rl_script_args.eval_episodes=0"]
    assert_resumed_run_equals_uninterrupted(tmp_path, "bidir", overrides, 3, 1)


def test_answer_tree_keeps_each_read_position_once():
    """Two prompts (context[:-1] left-padded to 3 columns, context[-1] at column 3) and candidates of
    2, 2, 1 and 2 tokens: a node per position whose output is read, each once per prompt. "a b" and
    "a c" share context[-1] and "a"; a candidate's last token predicts nothing, so has no node."""
    ids = torch.tensor([[0, 11, 12, 13, 21, 22], [0, 11, 12, 13, 21, 23], [0, 11, 12, 13, 24, 0],
                        [31, 32, 33, 34, 21, 22]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    tree = answer_tree(ids, mask, 3)
    assert tree.contexts == [(11, 12), (31, 32, 33)]
    assert tree.nodes == [[(13,), (13, 21)], [(34,), (34, 21)]]
    assert tree.first.tolist() == [0, 3] and tree.width == 2
    assert tree.node_tokens.tolist() == [[13, 21], [34, 21]]
    assert tree.node_positions.tolist() == [[2, 3], [3, 4]]  # counted over attended tokens
    assert tree.ancestry.tolist() == [[[True, False], [True, True]]] * 2
    # row b's answer column j -> slot u * 2 + n of its node (0 where nothing is read)
    assert tree.node_of.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0], [2, 3, 0]]


def test_joined_attention():
    """One prompt with one pad and two attended tokens, then two nodes, the second extending the first."""
    mask, positions = joined_attention(torch.tensor([[0, 1, 1]]), torch.tensor([[[True, False], [True, True]]]),
                                       torch.tensor([[2, 3]]), torch.float32)
    assert (mask[0, 0] == 0).int().tolist() == [[1, 0, 0, 0, 0],   # a pad sees itself only
                                                [0, 1, 0, 0, 0],
                                                [0, 1, 1, 0, 0],
                                                [0, 1, 1, 1, 0],   # a node: the context and itself
                                                [0, 1, 1, 1, 1]]   # ... and the node it extends
    assert positions.tolist() == [[0, 0, 1, 2, 3]]


@pytest.fixture(scope="module")
def tiny_scoring(model_path):
    from transformers import AutoModelForCausalLM

    return install_shared_prefix(AutoModelForCausalLM.from_pretrained(model_path).eval(), 64)


def joined_inputs(scoring, contexts, nodes):
    """Embedded joined sequences of prompts of one length, each with the same `nodes`, and their
    mask and positions."""
    rows = [node_rows(nodes, len(nodes), len(c)) for c in contexts]
    ids = torch.tensor([list(c) + r[0] for c, r in zip(contexts, rows)])
    mask, positions = joined_attention(torch.ones(len(contexts), len(contexts[0]), dtype=torch.long),
                                       torch.tensor([r[2] for r in rows]), torch.tensor([r[1] for r in rows]),
                                       torch.float32)
    return scoring.decoder.embed_tokens(ids), mask, positions


@torch.no_grad()
def test_a_prompts_frozen_outputs_do_not_depend_on_its_batch(tiny_scoring):
    """At one shape, a prompt's outputs of the lower layers are the same bits alone and in a batch,
    at any row: what lets the frozen layers' cache be filled by batches and stay exact."""
    contexts = [(5, 6, 7, 8, 9), (15, 16, 17, 18, 19), (25, 26, 27, 28, 29)]
    nodes = [(40,), (40, 41), (40, 42)]
    alone = tiny_scoring.run_layers(0, 2, *joined_inputs(tiny_scoring, contexts[1:2], nodes), 5)
    batch = tiny_scoring.run_layers(0, 2, *joined_inputs(tiny_scoring, contexts, nodes), 5)
    assert torch.equal(alone[0], batch[1])


@torch.no_grad()
def test_top_layer_with_the_contexts_keys_and_values_only(tiny_scoring):
    """The nodes' outputs are the same, to float rounding, when the top layer computes only the
    context's keys and values (the attention then concatenates them: 4e-9 here)."""
    inputs = joined_inputs(tiny_scoring, [(5, 6, 7, 8, 9), (15, 16, 17, 18, 19)], [(40,), (40, 41)])
    every = tiny_scoring.run_layers(0, 4, *inputs, 5)
    torch.testing.assert_close(tiny_scoring.run_layers(0, 4, *inputs, 5, nodes_only=True), every[:, 5:],
                               atol=1e-7, rtol=0)
