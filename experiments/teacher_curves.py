"""The teacher's learning iteration by iteration, per group of runs (mean over seeds): its policy
entropy over the six instructions (uniform: ln 6 = 1.79) and its held-out return acting alone (the
periodic evaluations, `rl_script_args.eval_every`). Prints a markdown table, and draws both curves.

    python experiments/teacher_curves.py "experiments/feedback-sweep-gotolocal/runs/*/seed*" --every 10 \\
        --out experiments/feedback-sweep-gotolocal/teacher_curves.png
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib
import numpy as np

from bidir.run_data import load_runs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNIFORM_ENTROPY = math.log(6)


def mean_curve(curves: list[np.ndarray]) -> np.ndarray:
    """The mean over runs, iteration by iteration, over the iterations every run has."""
    length = min(len(c) for c in curves)
    return np.mean([c[:length] for c in curves], axis=0)


def teacher_curves(runs: dict[str, list[dict]]) -> dict[str, dict[str, np.ndarray]]:
    """Per group with a teacher: its mean entropy and mean teacher-alone return per iteration (NaN
    where no evaluation ran)."""
    curves = {}
    for name, group in runs.items():
        if all("teacher" in r["entropy"] for r in group):
            held_out = [r["agents"].get("eval_teacher_alone_return", np.full(len(r["return"]), np.nan)) for r in group]
            curves[name] = {"entropy": mean_curve([r["entropy"]["teacher"] for r in group]),
                            "teacher_alone": mean_curve(held_out), "n": len(group)}
    return curves


def table(curves: dict[str, dict], every: int) -> str:
    """`entropy / teacher alone` at iteration 1, every `every`, and the last (iterations count from 1)."""
    length = min(len(c["entropy"]) for c in curves.values())
    iterations = sorted({1, *range(every, length + 1, every), length})
    lines = ["| group (n) | " + " | ".join(f"it. {i}" for i in iterations) + " |",
             "|---|" + "---|" * len(iterations)]
    for name, c in curves.items():
        cells = []
        for i in iterations:
            held_out = c["teacher_alone"][i - 1]
            cells.append(f"{c['entropy'][i - 1]:.2f} / " + ("-" if np.isnan(held_out) else f"{held_out:.3f}"))
        lines.append(f"| {name} ({c['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, dict], out: Path):
    """Two panels: the entropy, with the uniform policy's; the teacher alone at its evaluations."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in curves.items():
        iterations = np.arange(1, len(c["entropy"]) + 1)
        (line,) = left.plot(iterations, c["entropy"], label=f"{name} (n = {c['n']})")
        measured = ~np.isnan(c["teacher_alone"])
        right.plot(iterations[measured], c["teacher_alone"][measured], marker="o", color=line.get_color())
    left.axhline(UNIFORM_ENTROPY, color="grey", linestyle=":", label="uniform over the 6 instructions")
    left.set(xlabel="iteration", ylabel="teacher's policy entropy (nats)")
    right.set(xlabel="iteration", ylabel="teacher alone, held-out return")
    figure.legend(loc="lower center", ncol=3, fontsize="small", bbox_to_anchor=(0.5, 0))
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    """CLI: print the table; with --out, draw the curves."""
    parser = argparse.ArgumentParser(prog="teacher_curves.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or glob patterns (quote them)")
    parser.add_argument("--every", type=int, default=10, help="the table's columns: every N iterations")
    parser.add_argument("--out", type=Path, help="where to draw the figure (.png)")
    options = parser.parse_args(argv)
    try:
        curves = teacher_curves(load_runs(options.runs))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if not curves:
        parser.exit(2, f"{parser.prog}: error: no run of a method with a learning teacher in {' '.join(options.runs)}\n")
    print(table(curves, options.every))
    if options.out:
        plot(curves, options.out)
        print(f"written: {options.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
