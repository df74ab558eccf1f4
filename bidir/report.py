"""What a run shows at its end: the learning-curve plot, the held-out evaluation and a summary."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # runs on headless nodes
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402

from bidir.compare import (draw_references, final_mean, frames_to_return, legend_below,  # noqa: E402
                           level_references, smooth)
from bidir.evaluate import evaluate, evaluate_all, format_table  # noqa: E402
from bidir.run_files import keep_aside  # noqa: E402

LAST = 5
"""Iterations a run's final figures average over (bidir-compare's --last default)."""
START_EVAL = "eval_start.json"
"""The teacher's held-out evaluation before its first update (methods whose teacher learns)."""


def _floats(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in ("", None) else float("nan") for r in rows]


AGENT_CURVES = {"eval_teacher_alone_return": ("teacher alone", "tab:red"),
                "eval_student_alone_return": ("student alone", "tab:purple"),
                "eval_student_with_teacher_return": ("student with teacher", "tab:orange")}
"""The held-out curves of each agent (rl_script_args.eval_every), as labelled in the plots."""


def plot_learning_curve(rows: list[dict], path: Path, title: str, window: int = 5, start: dict | None = None,
                        env_id: str | None = None) -> Path:
    """Training return and success rate against frames (each iteration's value as dots, the
    episode-weighted mean over `window` iterations as a line: few episodes end per iteration), and,
    where the run evaluated them, each agent's own held-out return with the teacher's share of
    acting (`start`: the teacher alone before training, drawn at frame 0). The returns have the
    level's references (`level_references` of `env_id`, where measured); one legend lies under the panels."""
    frames, episodes = np.array(_floats(rows, "frames")), np.array(_floats(rows, "episodes"))
    agents = [key for key in AGENT_CURVES if rows and key in rows[0]]
    references = level_references(env_id)
    fig, axes = plt.subplots(1, 3 if agents else 2, figsize=(15 if agents else 10, 4.4), layout="constrained")
    for ax, key, label, color in zip(axes, ("return_mean", "success_rate"), ("mean return", "success rate"),
                                     ("tab:blue", "tab:green")):
        values = np.array(_floats(rows, key))
        ax.plot(frames, values, ".", color=color, alpha=0.35, label="per iteration")
        ax.plot(frames, smooth(values, episodes, window), color=color, label=f"mean over {window} iterations")
        ax.set_ylabel(f"{label} in training (whoever acted)")
    draw_references(axes[0], references)
    if agents:
        ax = axes[2]
        for key in agents:
            label, color = AGENT_CURVES[key]
            values = np.array(_floats(rows, key))
            seen = ~np.isnan(values)
            x, y = frames[seen], values[seen]
            if start and key == "eval_teacher_alone_return":
                x, y = np.insert(x, 0, 0.0), np.insert(y, 0, start["return_mean"])
            ax.plot(x, y, "o-", color=color, markersize=3, label=label)
        if rows and "teacher_share" in rows[0]:
            ax.plot(frames, _floats(rows, "teacher_share"), "--", color="grey", label="teacher's share of acting")
        draw_references(ax, references)
        ax.set_ylabel("held-out return of each agent")
    for ax in axes:
        ax.set_xlabel("frames")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    legend_below(fig, axes)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_teacher_at_start(config, method, trainer):
    """Before the first update of a learning teacher, its held-out teacher-alone figures go to
    eval_start.json: the reference that says whether training (and the critique) improved it.
    The evaluation leaves the run itself untouched (memo and LLM counters restored)."""
    args = config.rl_script_args
    path = Path(args.output_dir) / START_EVAL
    if args.eval_episodes <= 0 or not method.teacher_learns or trainer.iteration > 0 or path.exists():
        return
    contexts = trainer.teacher.llm_contexts
    result = evaluate("teacher_alone", args.env_id, list(args.instructions), args.eval_episodes, 0,
                      teacher=trainer.teacher, prompt_history=args.prompt_history, teacher_every=args.teacher_every)
    trainer.teacher.forget()
    trainer.teacher.llm_contexts = contexts
    path.write_text(json.dumps({"results": {"teacher_at_start": result}}, indent=2))


def finish_run(config, trainer, latest_checkpoint) -> dict:
    """Plots the curve, evaluates on held-out seeds, writes eval.json and prints the summary:
    the final return, the frames to `return_threshold`, and the held-out figures (with the teacher
    before training, where it learned). Returns those headline figures, as the run's W&B summary
    holds them: `final_return`, `frames_to_return_<threshold>` (NaN: not reached) and `eval`
    (mode -> figures, `teacher_at_start` included)."""
    args = config.rl_script_args
    out = Path(args.output_dir)
    rows = _read_rows(out / "metrics.csv")
    start = json.loads((out / START_EVAL).read_text())["results"]["teacher_at_start"] if (out / START_EVAL).exists() \
        else None
    plot = plot_learning_curve(rows, out / "learning_curve.png", f"{args.method} on {args.env_id} (seed {args.seed})",
                               start=start, env_id=args.env_id)
    results = {}
    if args.eval_episodes > 0:
        if trainer.student:
            trainer.student.eval()
        results = evaluate_all(args.method, args, trainer.student, trainer.teacher, args.eval_episodes)
        text = json.dumps({"checkpoint": str(latest_checkpoint), "results": results}, indent=2)
        keep_aside(out / "eval.json", unless_text=text)  # an earlier final evaluation (a run extended) stays
        (out / "eval.json").write_text(text)
    print(f"\n{args.method} on {args.env_id}: {trainer.iteration} iterations, {trainer.frames} frames, "
          f"{trainer.wall_time:.0f} s")
    headline = {}
    if rows:
        returns, episodes = np.array(_floats(rows, "return_mean")), np.array(_floats(rows, "episodes"))
        threshold = args.return_threshold
        reached = frames_to_return(np.array(_floats(rows, "frames")), returns, episodes, threshold)
        last = min(LAST, len(rows))  # a run shorter than LAST iterations averages what it has
        print(f"training: final return {final_mean(returns, last):.3f} (mean of the last {last} "
              f"iteration{'s' if last > 1 else ''}); "
              + (f"return {threshold:g} reached at {reached:,.0f} frames" if reached == reached
                 else f"return {threshold:g} not reached")
              + f" (episode-weighted mean over {LAST} iterations)")
        headline = {"final_return": final_mean(returns, last), f"frames_to_return_{threshold:g}": reached}
    if results:
        shown = dict(results)
        if start:
            shown["teacher_at_start"] = start
        print(f"held-out evaluation ({args.eval_episodes} episodes per mode):")
        print(format_table(shown))
        headline["eval"] = shown
    print(f"learning curve: {plot}")
    print(f"metrics: {out / 'metrics.csv'}")
    return headline


def _read_rows(path: Path) -> list[dict]:
    import csv
    with path.open() as f:
        return list(csv.DictReader(f))
