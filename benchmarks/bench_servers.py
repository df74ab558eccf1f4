"""Teacher throughput on 1 vs 2 Lamorel v0.3 LLM servers (CPU), LocalCaller for reference.

Two measures, every backend run one after the other (never side by side):
- scoring: `custom_module_fns(["score", "value"])` (bidir's teacher module functions) on 16 and
  64 distinct BabyAI-Text-like prompts x 6 instructions; median ms per call after one warm-up;
- iteration: a full `bidir` iteration (collect 256 frames over 8 envs, critique, student and
  teacher PPO) from `python -m bidir.train` (under lamorel_launcher for Lamorel), mean wall time
  per iteration from metrics.csv, the first (warm-up) iteration left out.

    python benchmarks/bench_servers.py [--model tiny-t5] [--repeats 10] [--iterations 3] [--threads 1]
        [--only scoring|iteration]

Every process gets `--threads` torch threads (torchrun's default is 1). Under lamorel_launcher
2 servers + 1 RL process are 3 busy processes: on a 2-core machine they oversubscribe it. Without
Lamorel installed only LocalCaller is measured. Under the launcher this file is the RL script.
"""
from __future__ import annotations

import argparse
import csv
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
from bidir.prompts import build_prompt
from bidir.teacher_llm import teacher_module_functions
from bidir.models import resolve_model_path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
SIZES = (16, 64)
OBJECTS = ["red ball", "grey key", "blue box", "green ball", "purple key", "yellow box"]


def prompts(n: int) -> list[str]:
    """n distinct prompts shaped like the teacher's (goal, observation, `Action:`)."""
    out = []
    for i in range(n):
        sentences = [f"You see a wall {1 + i % 6} step{'s' if i % 6 else ''} forward",
                     f"You see a wall {1 + (i // 6) % 3} steps left",
                     f"You see a {OBJECTS[i % 6]} {1 + i % 3} steps right and {1 + (i // 3) % 5} steps forward"]
        out.append(build_prompt("go to the red ball", [sentences], []))
    assert len(set(out)) == n
    return out


def llm_config(model_path: str, servers: int) -> dict:
    return {
        "log_level": "warning",
        "llm_configs": {"main_llm": {
            "handler": "hf_llm", "constructor_kwargs": None, "model_type": "seq2seq", "model_path": model_path,
            "pretrained": True, "minibatch_size": 512, "pre_encode_inputs": False, "load_in_4bit": False,
            "synchronize_gpus_after_scoring": False, "empty_cuda_cache_after_scoring": False}},
        "distributed_setup_args": {
            "backend": "gloo", "init_timeout": 120, "timeout": 600, "multinode": False,
            "multinode_args": {"main_process_ip": "127.0.0.1", "main_process_port": 25000, "experiment_id": 0},
            "n_rl_processes": 1,
            "llm_processes": {"main_llm": {"n_processes": servers, "devices_per_process": ["cpu"] * servers,
                                           "ddp_kwargs": None}}}}


def time_scoring(caller, repeats: int) -> dict[int, float]:
    """{n_prompts: median ms per call}."""
    figures = {}
    for n in SIZES:
        contexts, candidates = prompts(n), [CANDIDATES] * n
        caller.custom_module_fns(["score", "value"], contexts=contexts, candidates=candidates)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            caller.custom_module_fns(["score", "value"], contexts=contexts, candidates=candidates)
            times.append(time.perf_counter() - start)
        figures[n] = 1000 * sorted(times)[len(times) // 2]
    return figures


def env_with_threads(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def scoring_under_lamorel(model_path: str, servers: int, repeats: int, threads: int):
    """Launches this file under lamorel_launcher with `servers` LLM processes; its figures or None."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "figures.json")
        config = OmegaConf.create({"lamorel_args": llm_config(model_path, servers), "rl_script_args": {
            "path": str(Path(__file__).resolve()), "repeats": repeats, "threads": threads, "output": output}})
        OmegaConf.save(config, os.path.join(tmp, "bench.yaml"))
        command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", tmp, "--config-name", "bench",
                   f"rl_script_args.path={config.rl_script_args.path}"]
        proc = subprocess.run(command, cwd=tmp, env=env_with_threads(threads), capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0 or not os.path.exists(output):
            print(f"lamorel scoring run failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            return None
        with open(output) as f:
            return {int(k): v for k, v in json.load(f).items()}


def lamorel_rl_process():
    """Body of the RL process under the launcher: time the scoring calls, write them as JSON."""
    import hydra

    @hydra.main(version_base=None, config_path=None, config_name=None)
    def rl_main(config):
        torch.set_num_threads(config.rl_script_args.threads)
        caller = make_caller(config.lamorel_args, custom_module_functions={"main_llm": teacher_module_functions()})
        figures = time_scoring(caller, config.rl_script_args.repeats)
        with open(config.rl_script_args.output, "w") as f:
            json.dump(figures, f)
        caller.close()

    rl_main()


def iteration_command(backend: str, model_path: str, iterations: int, output_dir: str) -> list[str]:
    """The training command timed for `backend` (local, lamorel-1, lamorel-2)."""
    overrides = ["rl_script_args.method=bidir", f"rl_script_args.iterations={iterations}", "rl_script_args.n_envs=8",
                 "rl_script_args.steps_per_iteration=256", "rl_script_args.eval_episodes=0", "wandb.mode=disabled",
                 f"lamorel_args.llm_configs.main_llm.model_path={model_path}", f"rl_script_args.output_dir={output_dir}"]
    if backend == "local":
        return [sys.executable, "-m", "bidir.train", *overrides]
    servers = int(backend.split("-")[1])
    return [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(REPO / "lamorel_configs"),
            "--config-name", "local_cpu", f"rl_script_args.path={REPO / 'bidir' / 'train.py'}", *overrides,
            f"lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes={servers}",
            "lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=["
            + ",".join(["cpu"] * servers) + "]"]


def time_iteration(backend: str, model_path: str, iterations: int, threads: int):
    """{'iteration_s', 'teacher_scoring_s', 'teacher_update_s', 'fps'}: means over iterations 2.., or None."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        proc = subprocess.run(iteration_command(backend, model_path, iterations, out), cwd=tmp,
                              env=env_with_threads(threads), capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            print(f"{backend} training run failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            return None
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    walls = [0.0] + [float(r["wall_time_s"]) for r in rows]
    steps = [b - a for a, b in zip(walls, walls[1:])][1:]
    later = rows[1:]
    mean = lambda key: sum(float(r[key] or 0) for r in later) / len(later)  # noqa: E731
    return {"iteration_s": sum(steps) / len(steps), "teacher_scoring_s": mean("time_teacher_scoring"),
            "teacher_update_s": mean("time_teacher_update"), "fps": 256 / (sum(steps) / len(steps)),
            "llm_contexts": (int(rows[-1]["llm_contexts"]) - int(rows[0]["llm_contexts"])) / len(later)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-t5", help="model name or path (see resolve_model_path)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3, help="training iterations per run (first is warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (torchrun's default: 1)")
    parser.add_argument("--only", choices=["scoring", "iteration"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = resolve_model_path(args.model)
    try:
        import lamorel  # noqa: F401
        backends = ["local", "lamorel-1", "lamorel-2"]
    except ImportError:
        print("lamorel not installed: LocalCaller only")
        backends = ["local"]
    names = {"local": "LocalCaller (in-process)", "lamorel-1": "Lamorel, 1 server", "lamorel-2": "Lamorel, 2 servers"}
    processes = {"local": 1, "lamorel-1": 2, "lamorel-2": 3}
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}  "
          f"{platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  torch {torch.__version__}  "
          f"{args.threads} torch thread(s) per process")
    print(f"# model {args.model}; scoring: custom_module_fns(['score', 'value']), 6 candidates, median of "
          f"{args.repeats}; iteration: bidir, 8 envs, 256 frames, mean of iterations 2..{args.iterations}")
    if args.only != "iteration":
        print(f"\n{'scoring backend':<28}{'procs':>6}" + "".join(f"{f'{n} prompts ms':>16}{'prompts/s':>11}" for n in SIZES))
        for backend in backends:
            if backend == "local":
                caller = LocalCaller(llm_config(model_path, 1), custom_module_functions={
                    "main_llm": teacher_module_functions()})
                figures = time_scoring(caller, args.repeats)
            else:
                figures = scoring_under_lamorel(model_path, processes[backend] - 1, args.repeats, args.threads)
            if figures:
                print(f"{names[backend]:<28}{processes[backend]:>6}"
                      + "".join(f"{figures[n]:>16.1f}{1000 * n / figures[n]:>11.0f}" for n in SIZES), flush=True)
    if args.only != "scoring":
        print(f"\n{'bidir iteration backend':<28}{'procs':>6}{'s/iter':>9}{'frames/s':>10}{'scoring s':>11}"
              f"{'t.update s':>11}{'LLM ctx':>9}")
        for backend in backends:
            r = time_iteration(backend, model_path, args.iterations, args.threads)
            if r:
                print(f"{names[backend]:<28}{processes[backend]:>6}{r['iteration_s']:>9.2f}{r['fps']:>10.0f}"
                      f"{r['teacher_scoring_s']:>11.2f}{r['teacher_update_s']:>11.2f}{r['llm_contexts']:>9.0f}", flush=True)
    if os.cpu_count() and os.cpu_count() < 3 and "lamorel-2" in backends:
        print(f"\nnote: {os.cpu_count()} CPUs: 2 LLM servers + 1 RL process oversubscribe this machine.")


if __name__ == "__main__":
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        lamorel_rl_process()
    else:
        main()
