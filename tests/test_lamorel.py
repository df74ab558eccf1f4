"""LocalCaller gives Lamorel's numbers: the same calls run under lamorel_launcher (1 RL + 1 LLM process
on CPU) and in-process must agree within 1e-5."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lamorel")

from bidir.llm import LocalCaller  # noqa: E402
from bidir.models import build_model  # noqa: E402

SCRIPTS = Path(__file__).parent / "lamorel_scripts"
sys.path.insert(0, str(SCRIPTS))
from score_with_lamorel import LogProb, run_calls  # noqa: E402
from tiny_models import build_tiny_gpt2  # noqa: E402

pytestmark = pytest.mark.lamorel

# (model_type, pre_encode_inputs). Causal pre-encoding fails inside Lamorel v0.3 on transformers 5.
CASES = [("seq2seq", False), ("seq2seq", True), ("causal", False)]


def launch(model_path, model_type, pre_encode, output, cwd):
    """Start the score script under lamorel_launcher. torchrun's standalone mode picks a free port."""
    command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(SCRIPTS),
               "--config-name", "score_config", f"rl_script_args.path={SCRIPTS / 'score_with_lamorel.py'}",
               f"rl_script_args.output={output}", f"lamorel_args.llm_configs.main_llm.model_path={model_path}",
               f"lamorel_args.llm_configs.main_llm.model_type={model_type}",
               f"lamorel_args.llm_configs.main_llm.pre_encode_inputs={pre_encode}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def lamorel_runs(tmp_path_factory):
    """All cases launched in parallel; {(model_type, pre_encode): (model_path, json result)}."""
    root = tmp_path_factory.mktemp("lamorel")
    paths = {"seq2seq": build_model(root / "tiny-t5"), "causal": build_tiny_gpt2(root / "tiny-gpt2")}
    procs = {}
    for model_type, pre in CASES:
        work = root / f"{model_type}-{pre}"
        work.mkdir()
        procs[(model_type, pre)] = (work, launch(paths[model_type], model_type, pre, work / "out.json", work))
    runs = {}
    for case, (work, proc) in procs.items():
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
            pytest.fail(f"lamorel_launcher timed out for {case}:\n{log[-3000:]}")
        assert proc.returncode == 0 and (work / "out.json").exists(), f"{case} failed:\n{log[-3000:]}"
        runs[case] = (paths[case[0]], json.loads((work / "out.json").read_text()))
    return runs


@pytest.mark.parametrize("model_type,pre_encode", CASES)
def test_local_caller_matches_lamorel(lamorel_runs, model_type, pre_encode):
    model_path, under_lamorel = lamorel_runs[(model_type, pre_encode)]
    assert under_lamorel["backend"] == "lamorel.caller.Caller"
    config = {"llm_configs": {"main_llm": {"handler": "hf_llm", "model_type": model_type, "model_path": str(model_path),
                                           "pretrained": True, "minibatch_size": 4, "pre_encode_inputs": pre_encode}}}
    local = run_calls(LocalCaller(config, custom_module_functions={"main_llm": {"logprob": LogProb()}}), model_type)
    keys = {k for k in under_lamorel if k not in ("backend", "contexts", "candidates")}
    assert keys == set(local) - {"contexts", "candidates"}
    assert keys >= {"logprob", "logprob_minibatch_2"}
    for key in keys:
        for got, expected in zip(local[key], under_lamorel[key]):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=0, msg=key)
    if model_type == "seq2seq":
        # Lamorel's built-in score ignores return_logprobs: probabilities either way.
        assert under_lamorel["score_with_logprob_flag"] == under_lamorel["score"]
        assert all(0 < p < 1 for row in under_lamorel["score"] for p in row)
