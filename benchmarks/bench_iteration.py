"""Per-phase wall time of one training iteration, per method, under the in-process LocalCaller.

    python benchmarks/bench_iteration.py [--methods glam bidir t2s student] [--iterations 4]
        [--model tiny-t5-bc] [--n-envs 2] [--frames 256] [--threads 2]

The reference (issue 3): Lamorel's PPO_finetuning example spends about 16 s per 256-frame
iteration with 2 envs on this kind of machine with a 168k-parameter T5 (14 s in its update).
Targets: glam <= 0.25 x that; bidir <= 1.3 x glam; >= 70% of an iteration in model phases
(teacher scoring, student forward, student update, teacher update). The first iteration is a
warm-up and is left out of the means.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from bidir.train import train

PHASES = ["env", "teacher_scoring", "student_forward", "student_update", "teacher_update"]
MODEL_PHASES = {"teacher_scoring", "student_forward", "student_update", "teacher_update"}


def measure(method: str, args, root: Path) -> dict:
    """Trains `method` for args.iterations and returns mean seconds per phase and per iteration."""
    with initialize_config_module("bidir.conf", version_base=None):
        config = compose("config", overrides=[
            f"rl_script_args.method={method}", f"rl_script_args.output_dir={root / method}",
            f"rl_script_args.iterations={args.iterations}", f"rl_script_args.n_envs={args.n_envs}",
            f"rl_script_args.steps_per_iteration={args.frames}", "rl_script_args.eval_episodes=0",
            f"lamorel_args.llm_configs.main_llm.model_path={args.model}", "wandb.mode=disabled"])
    train(config)
    with open(root / method / "metrics.csv") as f:
        all_rows = list(csv.DictReader(f))
    rows = all_rows[1:]  # the first iteration warms up
    walls = [float(r["wall_time_s"]) for r in all_rows]
    per_iteration = [b - a for a, b in zip(walls, walls[1:])]
    result = {phase: sum(float(r[f"time_{phase}"] or 0) for r in rows) / len(rows) for phase in PHASES}
    result["iteration"] = sum(per_iteration) / len(per_iteration)
    result["llm_contexts"] = (int(rows[-1]["llm_contexts"]) - int(rows[0]["llm_contexts"])) / max(len(rows) - 1, 1)
    return result


def main():
    """Prints a table of per-phase times for each method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["glam", "bidir", "t2s", "student"])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--model", default="tiny-t5-bc")
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {datetime.date.today()} {platform.node()} {platform.machine()} torch {torch.__version__} "
          f"threads {args.threads}; {args.model}, {args.n_envs} envs, {args.frames} frames/iteration")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results[method] = measure(method, args, Path(tmp))
    print(f"{'method':<9}{'iter s':>8}" + "".join(f"{p[:14]:>16}" for p in PHASES) + f"{'model %':>9}{'LLM ctx':>9}")
    for method, r in results.items():
        model = sum(r[p] for p in MODEL_PHASES) / r["iteration"] * 100
        print(f"{method:<9}{r['iteration']:>8.2f}" + "".join(f"{r[p]:>16.3f}" for p in PHASES)
              + f"{model:>8.0f}%{r['llm_contexts']:>9.0f}")
    if "glam" in results:
        print(f"glam / Lamorel PPO_finetuning (16 s): {results['glam']['iteration'] / 16:.3f}")
        if "bidir" in results:
            print(f"bidir / glam: {results['bidir']['iteration'] / results['glam']['iteration']:.2f}")


if __name__ == "__main__":
    main()
