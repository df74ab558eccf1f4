"""LocalCaller gives Lamorel's numbers: the same calls run under lamorel_launcher (1 RL + 1 LLM process
on CPU) and in-process must agree within 1e-5. Every process under the launcher (here 1 RL + 2 LLM
servers) has joined gloo's threads when it exits."""
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

pytestmark = [pytest.mark.lamorel, pytest.mark.slow]  # Lamorel's servers start in processes of their own

# (model_type, pre_encode_inputs). Causal pre-encoding fails inside Lamorel v0.3 on transformers 5.
CASES = [("seq2seq", False), ("seq2seq", True), ("causal", False)]
TWO_SERVERS = ["lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes=2",
               "lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=[cpu,cpu]"]


def launch(model_path, model_type, pre_encode, output, cwd, overrides=()):
    """Start the score script under lamorel_launcher. torchrun's standalone mode picks a free port."""
    command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(SCRIPTS),
               "--config-name", "score_config", f"rl_script_args.path={SCRIPTS / 'score_with_lamorel.py'}",
               f"rl_script_args.output={output}", f"lamorel_args.llm_configs.main_llm.model_path={model_path}",
               f"lamorel_args.llm_configs.main_llm.model_type={model_type}",
               f"lamorel_args.llm_configs.main_llm.pre_encode_inputs={pre_encode}", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def lamorel_runs(tmp_path_factory):
    """All cases launched in parallel; {(model_type, pre_encode): (model_path, json result)}, and
    {"two-servers": (its directory of gloo thread counts, json result)}."""
    root = tmp_path_factory.mktemp("lamorel")
    paths = {"seq2seq": build_model(root / "tiny-t5"), "causal": build_tiny_gpt2(root / "tiny-gpt2")}
    procs = {}
    for model_type, pre in CASES:
        work = root / f"{model_type}-{pre}"
        work.mkdir()
        procs[(model_type, pre)] = (work, launch(paths[model_type], model_type, pre, work / "out.json", work))
    work = root / "two-servers"
    (work / "gloo-threads").mkdir(parents=True)
    overrides = [*TWO_SERVERS, f"rl_script_args.gloo_threads_dir={work / 'gloo-threads'}"]
    procs["two-servers"] = (work, launch(paths["seq2seq"], "seq2seq", False, work / "out.json", work, overrides))
    runs = {}
    for case, (work, proc) in procs.items():
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
            pytest.fail(f"lamorel_launcher timed out for {case}:\n{log[-3000:]}")
        assert proc.returncode == 0 and (work / "out.json").exists(), f"{case} failed:\n{log[-3000:]}"
        result = json.loads((work / "out.json").read_text())
        runs[case] = (work / "gloo-threads", result) if case == "two-servers" else (paths[case[0]], result)
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


def test_every_process_joins_gloo_threads_before_exit(lamorel_runs):
    """The RL process and both LLM servers have no gloo thread left when their exit handlers end:
    bidir.llm.caller.release_process_groups joined them while Python still ran. A gloo worker still
    running at exit frees its last collective's tensors during interpreter finalization, and that
    aborts the process (SIGABRT) when the worker got no CPU until then (a loaded machine)."""
    threads, under_lamorel = lamorel_runs["two-servers"]
    assert under_lamorel["backend"] == "lamorel.caller.Caller"
    left = {path.stem: path.read_text() for path in sorted(threads.iterdir())}
    assert left == {"rank0": "0", "rank1": "0", "rank2": "0"}
