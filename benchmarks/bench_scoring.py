"""Teacher scoring speed: LocalCaller in-process vs Lamorel v0.3 (1 RL + 1 CPU LLM process).

The call timed is the rollout's: `custom_module_fns(["score", "value"])` (bidir's teacher module
functions) on 2 and 8 BabyAI-Text prompts x 6 candidate instructions, on the offline teacher.
Both backends get the same number of torch threads.

    python benchmarks/bench_scoring.py [--model tiny-t5] [--repeats 20] [--threads 1] [--pre-encode]

Without Lamorel installed only the LocalCaller figures are printed. Under the launcher this file
is the RL script (it re-launches itself; see `run_under_lamorel`).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bidir.llm import LocalCaller, make_caller
from bidir.teacher import teacher_module_functions
from bidir.teacher_model import resolve_model_path

CANDIDATES = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
OBSERVATIONS = ["You see a wall 3 steps forward", "You see a wall 2 steps left",
                "You see a red ball 1 step left and 2 steps forward", "You see a grey key 2 steps right"]


def prompts(n):
    """n distinct prompts shaped like the teacher's (goal, two observations, an action, `Action:`)."""
    return [f"Goal of the agent: go to the red ball\nObservation 0: {OBSERVATIONS[i % 4]}\n"
            f"Action 0: {CANDIDATES[i % 6]}\nObservation 1: {OBSERVATIONS[(i + 1) % 4]}, You see a wall {i % 7} steps "
            f"right\nAction:" for i in range(n)]


def lamorel_config(model_path, pre_encode, repeats, threads, output):
    return OmegaConf.create({
        "lamorel_args": {
            "log_level": "warning",
            "llm_configs": {"main_llm": {
                "handler": "hf_llm", "constructor_kwargs": None, "model_type": "seq2seq", "model_path": model_path,
                "pretrained": True, "minibatch_size": 192, "pre_encode_inputs": pre_encode, "load_in_4bit": False,
                "synchronize_gpus_after_scoring": False, "empty_cuda_cache_after_scoring": False}},
            "distributed_setup_args": {
                "backend": "gloo", "init_timeout": 120, "timeout": 600, "multinode": False,
                "multinode_args": {"main_process_ip": "127.0.0.1", "main_process_port": 25000, "experiment_id": 0},
                "n_rl_processes": 1,
                "llm_processes": {"main_llm": {"n_processes": 1, "devices_per_process": ["cpu"], "ddp_kwargs": None}}}},
        "rl_script_args": {"path": str(Path(__file__).resolve()), "repeats": repeats, "threads": threads,
                           "output": output}})


def time_calls(caller, repeats):
    """{n_contexts: ms per call}, median of `repeats` after one warm-up call."""
    figures = {}
    for n in (2, 8):
        contexts, candidates = prompts(n), [CANDIDATES] * n
        caller.custom_module_fns(["score", "value"], contexts=contexts, candidates=candidates)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            caller.custom_module_fns(["score", "value"], contexts=contexts, candidates=candidates)
            times.append(time.perf_counter() - start)
        figures[n] = 1000 * sorted(times)[len(times) // 2]
    return figures


def run_under_lamorel(config, timeout_s=600):
    """Launch this file under lamorel_launcher and return its figures (None if it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "lamorel.json")
        config.rl_script_args.output = output
        OmegaConf.save(config, os.path.join(tmp, "bench.yaml"))
        command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", tmp, "--config-name", "bench",
                   f"rl_script_args.path={config.rl_script_args.path}"]
        # torchrun would otherwise force one thread per process.
        env = {**os.environ, "OMP_NUM_THREADS": str(config.rl_script_args.threads)}
        proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not os.path.exists(output):
            print(f"lamorel run failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            return None
        with open(output) as f:
            return {int(k): v for k, v in json.load(f).items()}


def lamorel_rl_process():
    """Body of the RL process under the launcher (hydra reads the config it was given)."""
    import hydra

    @hydra.main(version_base=None, config_path=None, config_name=None)
    def rl_main(config):
        torch.set_num_threads(config.rl_script_args.threads)
        caller = make_caller(config.lamorel_args, custom_module_functions={"main_llm": teacher_module_functions()})
        figures = time_calls(caller, config.rl_script_args.repeats)
        with open(config.rl_script_args.output, "w") as f:
            json.dump(figures, f)
        caller.close()

    rl_main()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-t5", help="model name or path (see resolve_model_path)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every process (torchrun's default is 1)")
    parser.add_argument("--pre-encode", action="store_true", help="set pre_encode_inputs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = lamorel_config(resolve_model_path(args.model), args.pre_encode, args.repeats, args.threads, "")

    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {platform.processor() or platform.machine()}"
          f"  {os.cpu_count()} CPUs  torch {torch.__version__}  threads {args.threads}")
    print(f"model {args.model}, pre_encode_inputs={args.pre_encode}, custom_module_fns(['score', 'value']), "
          f"6 candidates, median of {args.repeats}")
    results = {"LocalCaller": time_calls(LocalCaller(config.lamorel_args, custom_module_functions={
        "main_llm": teacher_module_functions()}), args.repeats)}
    try:
        import lamorel  # noqa: F401
        results["Lamorel v0.3"] = run_under_lamorel(config)
    except ImportError:
        print("lamorel not installed: LocalCaller only")
    for backend, figures in results.items():
        if figures:
            print(f"{backend:14s}" + "".join(f"  {n} contexts: {ms:7.2f} ms/call" for n, ms in figures.items()))


if __name__ == "__main__":
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        lamorel_rl_process()
    else:
        main()
