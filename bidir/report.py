"""What a run shows at its end: the learning-curve plot, the held-out evaluation and a summary."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs on headless nodes
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402

from bidir.compare import smooth  # noqa: E402
from bidir.evaluate import evaluate_all, format_table  # noqa: E402


def _floats(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in ("", None) else float("nan") for r in rows]


def plot_learning_curve(rows: list[dict], path: Path, title: str, window: int = 5) -> Path:
    """Mean return and success rate against frames: each iteration's value (dots) and the
    episode-weighted mean over `window` iterations (line), since few episodes end per iteration."""
    frames, episodes = np.array(_floats(rows, "frames")), np.array(_floats(rows, "episodes"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label, color in zip(axes, ("return_mean", "success_rate"), ("mean return", "success rate"),
                                     ("tab:blue", "tab:green")):
        values = np.array(_floats(rows, key))
        ax.plot(frames, values, ".", color=color, alpha=0.35, label="per iteration")
        ax.plot(frames, smooth(values, episodes, window), color=color, label=f"mean over {window} iterations")
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish_run(config, trainer, caller) -> dict:
    """Plots the curve, evaluates on held-out seeds, writes eval.json and prints the summary."""
    args = config.rl_script_args
    out = Path(args.output_dir)
    plot = plot_learning_curve(_read_rows(out / "metrics.csv"), out / "learning_curve.png",
                               f"{args.method} on {args.env_id} (seed {args.seed})")
    results = {}
    if args.eval_episodes > 0:
        if trainer.student:
            trainer.student.eval()
        results = evaluate_all(args.method, args, trainer.student, trainer.teacher, args.eval_episodes)
        (out / "eval.json").write_text(json.dumps({"checkpoint": str(trainer.checkpoint), "results": results},
                                                  indent=2))
    print(f"\n{args.method} on {args.env_id}: {trainer.iteration} iterations, {trainer.frames} frames, "
          f"{trainer.wall_time:.0f} s")
    if results:
        print(f"held-out evaluation ({args.eval_episodes} episodes per mode):")
        print(format_table(results))
    print(f"learning curve: {plot}")
    print(f"metrics: {out / 'metrics.csv'}")
    return results


def _read_rows(path: Path) -> list[dict]:
    import csv
    with path.open() as f:
        return list(csv.DictReader(f))
