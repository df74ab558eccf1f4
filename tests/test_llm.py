"""LocalCaller: Lamorel v0.3 Caller semantics, checked against direct transformers computations."""
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import bidir.llm as llm
from bidir.llm import BaseModelInitializer, BaseModuleFunction, BaseUpdater, LocalCaller, make_caller
from bidir.teacher_llm import InstructionLogProbs as LogProb  # the teacher's own scoring, checked here
from bidir.models import build_model

sys.path.insert(0, str(Path(__file__).parent / "lamorel_scripts"))
from tiny_models import build_tiny_gpt2  # noqa: E402

CONTEXTS = ["Goal of the agent: go to the red ball. You see a wall 2 steps forward. Action:",
            "pick up a key",
            "open the door on your left, then go to a box"]
CANDIDATES = [["turn left", "go forward", "pick up"], ["drop", "toggle", "turn right", "done"], ["go forward"]]
# Same token length each (6), so left-padding is a no-op and the causal reference needs no positions fix.
EQUAL_CONTEXTS = ["go to the red ball .", "pick up a blue key .", "you see a wall 2 ."]


class Value(BaseModuleFunction):
    """Linear value head on the decoder's first hidden state."""

    def initialize(self):
        torch.manual_seed(0)
        self.head = torch.nn.Linear(self.model_config.d_model, 1).to(self.device)

    def forward(self, forward_outputs, minibatch, tokenized_contexts, **kwargs):
        return self.head(forward_outputs["decoder_hidden_states"][-1][:, 0, :])


class OneSGDStep(BaseUpdater):
    """Raises the log-prob of each context's first candidate by one SGD step; records what it got."""

    def perform_update(self, contexts, candidates, _current_batch_ids, **kwargs):
        self.seen = {"batch_ids": _current_batch_ids, "kwargs": kwargs,
                     "has_module": hasattr(self._llm_module, "module")}
        module = getattr(self._llm_module, "module", self._llm_module)
        self.parameter_names = [n for n, _ in module.named_parameters()]
        optimizer = torch.optim.SGD(self._llm_module.parameters(), lr=kwargs["lr"])
        out = self._llm_module(["logprob", "value"], contexts=contexts, candidates=candidates, require_grad=True)
        loss = -sum(o["logprob"][0] for o in out) + sum(o["value"].pow(2).sum() for o in out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}


@pytest.fixture(scope="module")
def t5_path(tmp_path_factory):
    return str(build_model(tmp_path_factory.mktemp("tiny-t5")))


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory):
    return str(build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2")))


def lamorel_args(path, model_type="seq2seq", minibatch_size=64, pre_encode_inputs=False):
    return {"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": model_type, "model_path": path, "pretrained": True,
        "minibatch_size": minibatch_size, "pre_encode_inputs": pre_encode_inputs, "constructor_kwargs": None}}}


def reference_logprobs(path, model_type, contexts, candidates):
    """Candidate log-probs computed pair by pair with plain transformers calls."""
    tok = AutoTokenizer.from_pretrained(path)
    model_class = AutoModelForSeq2SeqLM if model_type == "seq2seq" else AutoModelForCausalLM
    model = model_class.from_pretrained(path)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for context, cands in zip(contexts, candidates):
            row = []
            for cand in cands:
                c, a = ids(context), ids(cand)
                if model_type == "seq2seq":
                    logits = model(input_ids=torch.tensor([c]), decoder_input_ids=torch.tensor([[0] + a])).logits[0, :-1]
                else:
                    logits = model(input_ids=torch.tensor([c + a])).logits[0, len(c) - 1:-1]
                row.append(logits.log_softmax(-1)[torch.arange(len(a)), a].sum().item())
            out.append(torch.tensor(row))
    return out


@pytest.mark.slow  # six cases of 3-6 s
@pytest.mark.parametrize("pre_encode_inputs", [False, True])
@pytest.mark.parametrize("minibatch_size", [2, 3, 64])  # 2 and 3 split contexts across minibatches
def test_seq2seq_scores_match_transformers(t5_path, pre_encode_inputs, minibatch_size):
    caller = LocalCaller(lamorel_args(t5_path, "seq2seq", minibatch_size, pre_encode_inputs),
                         custom_module_functions={"main_llm": {"logprob": LogProb()}})
    expected = reference_logprobs(t5_path, "seq2seq", CONTEXTS, CANDIDATES)
    out = caller.score(CONTEXTS, CANDIDATES, additional_module_function_keys=["logprob"])
    for o, e, cands in zip(out, expected, CANDIDATES):
        assert o["logprob"].shape == o["__score"].shape == (len(cands),)
        torch.testing.assert_close(o["logprob"], e, atol=1e-5, rtol=0)
        # Built-in score = product of token probabilities.
        torch.testing.assert_close(o["__score"], e.exp(), atol=0, rtol=1e-4)


@pytest.mark.parametrize("pre_encode_inputs", [False, True])
@pytest.mark.parametrize("minibatch_size", [2, 64])
def test_left_padded_causal_contexts_score_as_if_alone(gpt2_path, pre_encode_inputs, minibatch_size):
    """Contexts of different lengths are left-padded together; positions count attended tokens only
    (llm.count_positions_over_attended_tokens), so each scores as in its own unpadded forward."""
    caller = LocalCaller(lamorel_args(gpt2_path, "causal", minibatch_size, pre_encode_inputs),
                         custom_module_functions={"main_llm": {"logprob": LogProb()}})
    expected = reference_logprobs(gpt2_path, "causal", CONTEXTS, CANDIDATES)
    out = caller.custom_module_fns(["logprob"], contexts=CONTEXTS, candidates=CANDIDATES)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o["logprob"], e, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pre_encode_inputs", [False, True])
@pytest.mark.parametrize("minibatch_size", [2, 64])
def test_causal_scores_match_transformers(gpt2_path, pre_encode_inputs, minibatch_size):
    caller = LocalCaller(lamorel_args(gpt2_path, "causal", minibatch_size, pre_encode_inputs),
                         custom_module_functions={"main_llm": {"logprob": LogProb()}})
    expected = reference_logprobs(gpt2_path, "causal", EQUAL_CONTEXTS, CANDIDATES)
    out = caller.score(EQUAL_CONTEXTS, CANDIDATES, additional_module_function_keys=["logprob"])
    for o, e in zip(out, expected):
        torch.testing.assert_close(o["logprob"], e, atol=1e-5, rtol=0)
        torch.testing.assert_close(o["__score"], e.exp(), atol=0, rtol=1e-4)


def test_builtin_score_returns_probabilities_even_with_return_logprobs(t5_path):
    """Lamorel does not pass return_logprobs to its built-in scorer; custom functions do get it."""
    seen = {}

    class Spy(LogProb):
        def forward(self, *args, **kwargs):
            seen.update(kwargs)
            return super().forward(*args, **kwargs)

    caller = LocalCaller(lamorel_args(t5_path), custom_module_functions={"main_llm": {"spy": Spy()}})
    plain = caller.score(CONTEXTS, CANDIDATES)
    flagged = caller.score(CONTEXTS, CANDIDATES, return_logprobs=True, additional_module_function_keys=["spy"])
    assert isinstance(plain, list) and all(isinstance(p, torch.Tensor) for p in plain)
    for p, f in zip(plain, flagged):
        assert bool(((p > 0) & (p < 1)).all())
        torch.testing.assert_close(f["__score"], p)
    assert seen["return_logprobs"] is True and seen["current_minibatch_ids"] == list(range(8))


@pytest.mark.slow  # 6 s
def test_value_head_updater_and_batch_ids(t5_path):
    updater = OneSGDStep()
    caller = LocalCaller(lamorel_args(t5_path, minibatch_size=4),
                         custom_updater={"main_llm": updater},
                         custom_module_functions={"main_llm": {"logprob": LogProb(), "value": Value()}})
    before = caller.custom_module_fns(["logprob", "value"], contexts=CONTEXTS, candidates=CANDIDATES)
    assert [tuple(b["value"].shape) for b in before] == [(3, 1), (4, 1), (1, 1)]
    result = caller.update(CONTEXTS, CANDIDATES, lr=0.5, note="x")
    assert isinstance(result, list) and len(result) == 1 and result[0]["loss"] > 0
    assert updater.seen == {"batch_ids": {"contexts": [0, 1, 2], "candidates": [[0, 1, 2], [0, 1, 2, 3], [0]]},
                            "kwargs": {"lr": 0.5, "note": "x"}, "has_module": False}
    # Module functions are registered on the model, so the updater trains them too.
    assert any(n.startswith("_module_functions.value.") for n in updater.parameter_names)
    assert any(n.startswith("_LLM_model.") for n in updater.parameter_names)
    after = caller.custom_module_fns(["logprob", "value"], contexts=CONTEXTS, candidates=CANDIDATES)
    for b, a in zip(before, after):
        assert a["logprob"][0] > b["logprob"][0]
        assert not torch.equal(a["value"], b["value"])
    no_candidates = caller.update(CONTEXTS[:2], lr=0.0)
    assert len(no_candidates) == 1 and updater.seen["batch_ids"] == {"contexts": [0, 1], "candidates": [None, None]}


def test_module_functions_get_lamorel_configuration(t5_path):
    class Init(BaseModelInitializer):
        def initialize_model(self, model):
            self.seen = (self.llm_config.pad_token, self.current_process_config)
            model.marked = True
            return model

    fn, init = LogProb(), Init()
    caller = LocalCaller(lamorel_args(t5_path), custom_module_functions={"main_llm": {"lp": fn}},
                         custom_model_initializer={"main_llm": init})
    assert fn.llm_config.pad_token == 0 and fn.llm_config.model_path == t5_path
    assert fn.device == "cpu" and fn.model_config.d_model == 64
    assert fn.current_process_config == {"llm": "main_llm", "process_index": 0}
    assert init.seen == (0, {"llm": "main_llm", "process_index": 0})
    assert caller._models["main_llm"].marked


def test_generate_structure(t5_path):
    caller = LocalCaller(lamorel_args(t5_path))
    out = caller.generate(["go to the red ball", "pick up"], max_new_tokens=3, do_sample=False)
    assert len(out) == 2 and all(len(o) == 1 for o in out)
    g = out[0][0]
    assert set(g) == {"text", "tokens", "text_probability", "tokens_probability"}
    assert isinstance(g["text"], str) and g["tokens"].shape == (3,) and g["tokens_probability"].shape == (3,)
    assert abs(float(g["text_probability"]) - float(g["tokens_probability"].prod())) < 1e-6
    beams = caller.generate(["go to"], return_logprobs=True, max_new_tokens=2, num_beams=2, num_return_sequences=2)
    assert len(beams[0]) == 2
    assert {"text", "tokens", "text_logprob", "tokens_logprob", "beam_score"} <= set(beams[0][0])


def test_empty_inputs_and_candidates(t5_path):
    caller = LocalCaller(lamorel_args(t5_path))
    assert caller.custom_module_fns(["__score"], contexts=[]) == [{}]
    out = caller.score(["go to", "pick up"], [["turn left"], []])
    assert out[0].shape == (1,) and out[1].numel() == 0
    no_candidates = caller.score(["go to"])  # Lamorel scores the empty candidate
    assert no_candidates[0].shape == (1,)


def test_routing_and_errors(t5_path, gpt2_path):
    config = lamorel_args(t5_path)
    config["llm_configs"]["other"] = lamorel_args(gpt2_path, "causal")["llm_configs"]["main_llm"]
    caller = LocalCaller(config)
    with pytest.raises(Exception, match="Multiple LLMs"):
        caller.score(["go to"], [["turn left"]])
    a = caller.score(["go to"], [["turn left"]], llm_to_call="main_llm")
    b = caller.score(["go to the"], [["turn left"]], llm_to_call="other")
    assert a[0].shape == b[0].shape == (1,) and a[0] != b[0]
    with pytest.raises(KeyError, match="nope"):
        caller.score(["go to"], [["turn left"]], llm_to_call="nope")
    caller.close(llm_to_call="other")
    with pytest.raises(KeyError):
        caller.score(["go to"], [["turn left"]], llm_to_call="other")
    bad = lamorel_args(t5_path, model_type="encoder")
    with pytest.raises(NotImplementedError, match="encoder"):
        LocalCaller(bad)
    with pytest.raises(TypeError, match="not a BaseModuleFunction"):
        LocalCaller(lamorel_args(t5_path), custom_module_functions={"main_llm": {"f": torch.nn.Linear(1, 1)}})


def test_make_caller_picks_backend(t5_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert isinstance(make_caller(lamorel_args(t5_path)), LocalCaller)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(llm.caller, "LAMOREL_AVAILABLE", False)  # the name make_caller reads
    with pytest.raises(RuntimeError, match="lamorel is not importable"):
        make_caller(lamorel_args(t5_path))
