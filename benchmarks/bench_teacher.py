"""Teacher sizes a user will run: seconds per bidir iteration split by phase, and peak memory, for a
published architecture (random weights, `bidir-teacher build --shape`), LocalCaller vs Lamorel.

    python benchmarks/bench_teacher.py --shape flan-t5-small [--lora] [--backends local lamorel]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--iterations 3] [--n-envs 2] [--steps 32]
        [--timeout 900] [--models DIR] [--json FILE]

Each backend runs `bidir.train` (method bidir, eval off, W&B off) in a subprocess, one after the
other: in-process (LocalCaller) or under lamorel_launcher with 1 LLM server (CPU, or GPU 0). Per
iteration the figures are metrics.csv's phase times, averaged over iterations 2.. (the first warms
up). Peak memory: each process records its own at exit (max RSS; on CUDA also the peak allocated
by torch) - in-process one process holds everything, under Lamorel rank 0 is the RL process and
rank 1 the LLM server. Start-up is the run's wall time minus its iterations (imports, model load).

The same file is the training script of those runs: with BIDIR_BENCH_MEMORY set it records its
memory there at exit and runs `bidir.train.main()`.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def record_memory_at_exit(directory: str):
    """In a benchmarked process: write {rank, max_rss_mb, cuda_peak_mb} to `directory` at exit."""
    def write():
        figures = {"rank": os.environ.get("RANK", "local"),
                   "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            figures["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            figures["cuda_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        Path(directory, f"memory_{figures['rank']}_{os.getpid()}.json").write_text(json.dumps(figures))
    atexit.register(write)


def overrides(args, model_path: str, model_type: str, output_dir: str) -> list[str]:
    llm = "lamorel_args.llm_configs.main_llm"
    device = "cpu" if args.device == "cpu" else "[0]"
    items = ["rl_script_args.method=bidir", f"rl_script_args.iterations={args.iterations}",
             f"rl_script_args.n_envs={args.n_envs}", f"rl_script_args.steps_per_iteration={args.steps}",
             "rl_script_args.eval_episodes=0", "wandb.mode=disabled", f"rl_script_args.output_dir={output_dir}",
             f"rl_script_args.torch_threads={args.threads}",
             f"{llm}.model_path={model_path}", f"{llm}.model_type={model_type}",
             f"{llm}.pre_encode_inputs={str(model_type == 'seq2seq').lower()}", f"{llm}.lora.enabled={args.lora}",
             f"lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=[{device}]"]
    if args.dtype != "float32":
        items.append(f"{llm}.constructor_kwargs={{dtype:{args.dtype}}}")
    return items + list(args.override)


def run_backend(args, backend: str, model_path: str, model_type: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        memory_dir = Path(tmp, "memory")
        memory_dir.mkdir()
        items = overrides(args, model_path, model_type, str(Path(tmp, "run")))
        script = str(Path(__file__).resolve())
        if backend == "local":
            command = [sys.executable, script, *items]
        else:
            command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(REPO / "lamorel_configs"),
                       "--config-name", "local_cpu", f"rl_script_args.path={script}", *items]
        env = {**os.environ, "BIDIR_BENCH_MEMORY": str(memory_dir), "OMP_NUM_THREADS": str(args.threads),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
                   [str(REPO), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as error:
            return {"backend": backend, "error": f"timed out after {args.timeout} s",
                    "log": (error.stdout or b"")[-1500:].decode(errors="replace") if isinstance(error.stdout, bytes)
                    else str(error.stdout)[-1500:]}
        total = time.perf_counter() - started
        if proc.returncode != 0:
            return {"backend": backend, "error": f"exit {proc.returncode}", "log": (proc.stdout + proc.stderr)[-3000:]}
        with open(Path(tmp, "run", "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        memory = [json.loads(p.read_text()) for p in sorted(memory_dir.glob("*.json"))]
    walls = [0.0] + [float(r["wall_time_s"]) for r in rows]
    per_iteration = [b - a for a, b in zip(walls, walls[1:])]
    later = slice(1, None) if len(rows) > 1 else slice(0, None)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    result = {"backend": backend, "iterations": len(rows), "startup_s": total - walls[-1],
              "iteration_s": mean(per_iteration[later]), "first_iteration_s": per_iteration[0],
              "llm_contexts_per_iteration": mean([int(r["llm_contexts"]) for r in rows][later]) if len(rows) == 1 else
              (int(rows[-1]["llm_contexts"]) - int(rows[0]["llm_contexts"])) / (len(rows) - 1),
              "memory": memory}
    for column in (name for name in rows[0] if name.startswith("time_")):  # bidir.train's phases
        result[f"{column.removeprefix('time_')}_s"] = mean([float(r[column] or 0) for r in rows[later]])
    return result


def child():
    """A benchmarked training process (in-process run, or a lamorel_launcher worker)."""
    record_memory_at_exit(os.environ["BIDIR_BENCH_MEMORY"])
    sys.path.insert(0, str(REPO))
    from bidir.train import main as train_main
    train_main()


def table(results: list[dict], header: str) -> str:
    lines = [header, "",
             "| run | backend | s/iter | teacher scoring | teacher update | student (fwd+update) | env | LLM contexts/iter "
             "| start-up s | peak RSS MB (RL / LLM) | peak CUDA MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['backend']} | {r['error']} | | | | | | | | |")
            continue
        rss = {m["rank"]: m["max_rss_mb"] for m in r["memory"]}
        cuda = max((m.get("cuda_peak_mb", 0) for m in r["memory"]), default=0)
        rss_text = f"{rss.get('local', 0):.0f}" if "local" in rss else f"{rss.get('0', 0):.0f} / {rss.get('1', 0):.0f}"
        lines.append(f"| {r['run']} | {r['backend']} | {r['iteration_s']:.2f} | {r['teacher_scoring_s']:.2f} | "
                     f"{r['teacher_update_s']:.2f} | {r['student_forward_s'] + r['student_update_s']:.2f} | "
                     f"{r['env_s']:.2f} | {r['llm_contexts_per_iteration']:.0f} | {r['startup_s']:.1f} | {rss_text} | "
                     f"{cuda:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="flan-t5-small", help="a bidir.models.SHAPES name")
    parser.add_argument("--lora", action="store_true", help="LoRA adapter (r=8, alpha=16, peft's default targets)")
    parser.add_argument("--backends", nargs="+", default=["local", "lamorel"], choices=["local", "lamorel"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--iterations", type=int, default=3, help="first one is warm-up")
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32, help="frames per iteration, all envs together")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per backend run")
    parser.add_argument("--models", default=None, help="where to build shapes (default: a temporary directory)")
    parser.add_argument("--json", help="append the results (one JSON object per line) to this file")
    parser.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for bidir.train")
    args = parser.parse_args()

    from bidir.models import SHAPES, build_model, shape_parameters

    models = Path(args.models or tempfile.mkdtemp(prefix="bidir-bench-"))
    path = models / args.shape
    started = time.perf_counter()
    if not (path / "config.json").exists():
        build_model(path, args.shape)
    build_s = time.perf_counter() - started
    model_type = SHAPES[args.shape][0]
    run = f"{args.shape} ({shape_parameters(args.shape) / 1e6:.0f}M) {'LoRA' if args.lora else 'full'} {args.dtype}"
    import torch
    machine = (torch.cuda.get_device_name(0) if args.device == "cuda" else
               f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs")
    header = (f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} {machine}, torch "
              f"{torch.__version__}, {args.n_envs} envs x {args.steps // args.n_envs} steps, {args.iterations} "
              f"iterations (mean of 2..), {args.threads} thread(s)/process; built {args.shape} in {build_s:.1f} s")
    results = []
    for backend in args.backends:
        if backend == "lamorel":
            try:
                import lamorel  # noqa: F401
            except ImportError:
                results.append({"run": run, "backend": backend, "error": "lamorel not installed"})
                continue
        result = {"run": run, "shape": args.shape, "lora": args.lora, "dtype": args.dtype, "device": args.device,
                  "machine": machine, "header": header, **run_backend(args, backend, str(path), model_type)}
        results.append(result)
        if "error" in result:
            print(f"{run} {backend}: {result['error']}\n{result.get('log', '')}", file=sys.stderr)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    print(table(results, header), flush=True)


if __name__ == "__main__":
    if os.environ.get("BIDIR_BENCH_MEMORY"):
        child()
    else:
        main()
