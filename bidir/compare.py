"""Compare methods across runs: `bidir-compare <run dirs or globs> [--out DIR]`
(or `bidir-compare --wandb ENTITY/PROJECT --group EXPERIMENT` when online).

Runs are grouped by their configuration (bidir/run_groups.py): method, model, level and every
other key that changes what a run computes, not by folder. A group is named by its method, or by
its variant where a run lies in experiments/plan.py's layout `<experiment>/<variant>/seed<N>`;
runs of one name whose configurations differ are compared apart, each label saying what sets it
apart, and a seed twice in one group is refused.
Per method, over seeds: mean ± 95% CI (Student's t) of the final mean return and success rate
(the mean of each run's last `--last` iterations), of the held-out evaluation (eval.json), and
the frames each run needed to reach its level's return threshold (`rl_script_args.return_threshold`,
0.8 unless set; one value across the runs compared) and a success rate of 0.9 (curves smoothed over
`--smooth` iterations).
Writes results.md, results.json and comparison.png (mean ± CI against frames; no interval for a
method with one run, and a method whose runs are no longer than the window drawn unsmoothed; the
BabyAI bot and uniform instructions as reference returns where the runs' level was measured), and
agents.md, each agent's held-out return during training, where the runs evaluated it, and
levels.md, the final held-out return on each level, where the runs were evaluated on a mix.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bidir.checks import positive_int  # noqa: E402
from bidir.run_data import AGENTS, ENTROPIES, load_runs, load_wandb_runs, return_threshold  # noqa: E402

# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; 1.96 beyond.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
METHOD_ORDER = ["bidir", "t2s", "glam", "student"]

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
REFERENCE_TABLES = {"BabyAI-GoToRedBallNoDists-v0": EXPERIMENTS / "prompting" / "table.json"}
"""Where a level's reference returns were measured: experiments/prompting/ for the first level, else
experiments/level-references/<level>/ (`level_references`)."""
REFERENCES = {"bot": ("BabyAI bot", ":"), "uniform": ("uniform instructions", "-.")}
"""The references drawn on the curves (a row of those tables: label, line style): what solving the
level looks like, and what an instruction drawn at random already gets."""


def level_references(env_id: str | None) -> dict[str, float]:
    """The committed mean returns of REFERENCES on level `env_id` (a mix too), by label: the BabyAI bot
    and uniform instructions acting alone (prompting.py --references); empty for a level without a
    committed table (or a copy of bidir without experiments/), so that nothing unmeasured is drawn."""
    path = REFERENCE_TABLES.get(env_id) or EXPERIMENTS / "level-references" / str(env_id) / "table.json"
    if env_id is None or not path.is_file():
        return {}
    table = json.loads(path.read_text())
    return {label: table[key]["return_mean"] for key, (label, _) in REFERENCES.items() if key in table}


def draw_references(ax, references: dict[str, float]):
    """`references` (label -> return) as labelled horizontal lines on `ax`."""
    styles = {label: style for label, style in REFERENCES.values()}
    for label, value in references.items():
        ax.axhline(value, linestyle=styles[label], color="black", linewidth=1, label=f"{label} ({value:.3f})")


def legend_below(fig, axes):
    """One legend of every labelled line of `axes` (each label once), under the panels of `fig` (made
    with layout="constrained"): outside every data area, where it cannot hide a curve."""
    entries = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        entries |= {label: handle for handle, label in zip(handles, labels) if label not in entries}
    fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncol=min(len(entries), 4), fontsize=8)


def in_order(runs: dict) -> list[str]:
    """The groups of `runs` in METHOD_ORDER, variants and other groups after the four methods."""
    return sorted(runs, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (NaN for a single value: no interval)."""
    values = np.asarray([v for v in values if v == v], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    t = T95[len(values) - 2] if len(values) - 1 <= len(T95) else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def paired_difference(runs_a: list[dict], runs_b: list[dict], figure) -> tuple[float, float, int]:
    """Mean and 95% CI half-width of figure(a) - figure(b) over the seeds both groups ran (the same
    seed gives both runs the same environments), and the number of pairs."""
    by_seed = {r["seed"]: r for r in runs_b}
    differences = [figure(r) - figure(by_seed[r["seed"]]) for r in runs_a if r["seed"] in by_seed]
    mean, ci = mean_ci(differences)
    return mean, ci, len([d for d in differences if d == d])


def smooth(values: np.ndarray, episodes: np.ndarray, window: int) -> np.ndarray:
    """Episode-weighted trailing mean over `window` iterations; NaN until the window is full, so
    that one lucky early episode does not count as convergence."""
    out = np.full(len(values), np.nan)
    for i in range(window - 1, len(values)):
        weights = episodes[i - window + 1:i + 1]
        chunk = np.nan_to_num(values[i - window + 1:i + 1])
        if weights.sum() > 0:
            out[i] = float((chunk * weights).sum() / weights.sum())
    return out


def frames_to(frames: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """First frame count at which `curve` reaches `threshold` (NaN if never)."""
    reached = np.flatnonzero(curve >= threshold)
    return float(frames[reached[0]]) if len(reached) else float("nan")


def final_mean(values: np.ndarray, last: int = 5) -> float:
    """A run's final figure: the mean of its last `last` iterations (NaN where none has a value)."""
    tail = values[-last:]
    return float(np.nanmean(tail)) if np.any(~np.isnan(tail)) else float("nan")


def frames_to_return(frames: np.ndarray, returns: np.ndarray, episodes: np.ndarray, threshold: float,
                     window: int = 5) -> float:
    """The convergence figure: frames until the `window`-iteration episode-weighted mean return
    reaches `threshold` (NaN if never)."""
    return frames_to(frames, smooth(returns, episodes, window), threshold)


def summarize(runs: dict[str, list[dict]], last: int = 5, window: int = 5) -> dict:
    """Per method: seeds, final return/success, held-out evaluation, frames to thresholds (the
    return's, `return_threshold`, is in the key: frames_to_return_0.8)."""
    threshold = return_threshold(runs)
    table = {}
    for method in in_order(runs):
        group = runs[method]
        final_return = [final_mean(r["return"], last) for r in group]
        final_success = [final_mean(r["success"], last) for r in group]
        to_return = [frames_to_return(r["frames"], r["return"], r["episodes"], threshold, window) for r in group]
        to_success = [frames_to(r["frames"], smooth(r["success"], r["episodes"], window), 0.9) for r in group]
        modes = sorted({mode for r in group for mode in r["eval"]})
        table[method] = {
            "seeds": len(group),
            "final_return": mean_ci(final_return), "final_success": mean_ci(final_success),
            f"frames_to_return_{threshold:g}": mean_ci(to_return),
            f"reached_return_{threshold:g}": int(np.sum(~np.isnan(to_return))),
            "frames_to_success_0.9": mean_ci(to_success), "reached_success_0.9": int(np.sum(~np.isnan(to_success))),
            "eval": {mode: {key: mean_ci([r["eval"][mode][key] for r in group if mode in r["eval"]])
                            for key in ("success_rate", "return_mean", "episode_length_mean")} for mode in modes},
            "policy_entropy": {agent: mean_ci([final_mean(r["entropy"][agent], last) for r in group])
                               for agent in ENTROPIES.values() if all(agent in r.get("entropy", {}) for r in group)},
            "wall_time_s": mean_ci([r["wall_time_s"] for r in group]),
        }
    return table


def _fmt(pair, digits=3) -> str:
    mean, ci = pair
    if mean != mean:
        return "n/a"
    return f"{mean:.{digits}f}" if ci != ci else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def markdown(table: dict) -> str:
    """The results table in Markdown."""
    threshold = next(key for key in next(iter(table.values())) if key.startswith("frames_to_return_")).removeprefix(
        "frames_to_return_")
    lines = [f"| method | n (seeds) | final return | final success | frames to return {threshold} | frames to success 0.9 "
             "| held-out return (mode) | policy entropy (agent) | wall time s |", "|---|---|---|---|---|---|---|---|---|"]
    for method, r in table.items():
        held_out = "; ".join(f"{_fmt(v['return_mean'])} ({mode})" for mode, v in r["eval"].items()) or "n/a"
        entropy = "; ".join(f"{_fmt(v, 2)} ({agent})" for agent, v in r.get("policy_entropy", {}).items()) or "n/a"
        lines.append(
            f"| {method} | {r['seeds']} | {_fmt(r['final_return'])} | {_fmt(r['final_success'])} "
            f"| {_fmt(r[f'frames_to_return_{threshold}'], 0)} ({r[f'reached_return_{threshold}']}/{r['seeds']} reached) "
            f"| {_fmt(r['frames_to_success_0.9'], 0)} ({r['reached_success_0.9']}/{r['seeds']} reached) "
            f"| {held_out} | {entropy} | {_fmt(r['wall_time_s'], 0)} |")
    lines.append("\nmean ± 95% CI (Student's t) over the n runs of a method; a single run has no interval. Final "
                 "figures and policy entropy (over the 6 instructions; uniform: 1.79) are each run's mean over its last "
                 "iterations (`--last`).")
    return "\n".join(lines)


def budget_warnings(runs: dict[str, list[dict]], window: int) -> list[str]:
    """What makes the comparison unfair or the plot uneven: runs of different lengths (their
    final figures and frames-to-threshold measure different budgets) and runs no longer than the
    smoothing window (at most one smoothed point, so `plot` draws them unsmoothed)."""
    lengths = {method: sorted({len(r["frames"]) for r in group}) for method, group in runs.items()}
    warnings = []
    if len({n for ns in lengths.values() for n in ns}) > 1:
        warnings.append("runs differ in length (" + "; ".join(
            f"{method}: {'/'.join(map(str, ns))} iterations" for method, ns in lengths.items())
            + "): final figures and frames to thresholds compare different budgets")
    for method, ns in lengths.items():
        if ns[0] <= window:
            warnings.append(f"{method}: a run of {ns[0]} iterations is no longer than the smoothing window "
                            f"({window}); {method}'s curve is drawn unsmoothed (lower --smooth)")
    return warnings


def split_notes(runs: dict[str, list[dict]]) -> list[str]:
    """One line per name whose runs differ in configuration and so are compared apart (a reader who
    globbed "runs/*" expecting one row per method learns why there are more)."""
    labels = {}
    for label, group in runs.items():
        labels.setdefault(label.split(" [")[0], []).append(label)
    return [f"runs named {name} differ in configuration and are compared apart: {'; '.join(apart)}"
            for name, apart in labels.items() if len(apart) > 1]


def default_title(runs: dict[str, list[dict]]) -> str:
    """What the plot's bands are: a 95% CI needs at least two runs of a method."""
    sizes = {len(group) for group in runs.values()}
    if sizes == {1}:
        return "one run per method (no CI)"
    return "mean ± 95% CI over seeds" + (" (no CI where n=1)" if 1 in sizes else "")


def curves_figure(runs: dict[str, list[dict]], window: int = 5, title: str = ""):
    """Mean ± 95% CI of the smoothed return and success curves per method, against frames; a method
    whose shortest run is no longer than `window` is drawn unsmoothed, with a marker per iteration.
    Where runs evaluated each agent during training, a third panel has each agent's own held-out
    return (teacher alone solid, from the teacher before training at frame 0; student alone dashed).
    Where all runs are of one level, the returns have that level's `level_references`; one legend
    lies under the panels."""
    agents = any(r.get("agents") for group in runs.values() for r in group)
    levels = {r["experiment"].get("rl_script_args.env_id") for group in runs.values() for r in group}
    references = level_references(levels.pop()) if len(levels) == 1 else {}
    fig, axes = plt.subplots(1, 3 if agents else 2, figsize=(16 if agents else 11, 5), layout="constrained")
    for method in in_order(runs):
        group = runs[method]
        length = min(len(r["frames"]) for r in group)
        unsmoothed = length <= window  # smoothing would leave at most one point
        notes = [f"n={len(group)}"] + ["no CI"] * (len(group) == 1) + ["unsmoothed"] * unsmoothed
        label = f"{method} ({', '.join(notes)})"
        frames = group[0]["frames"][:length]
        for ax, key in zip(axes, ("return", "success")):
            curves = np.stack([smooth(r[key][:length], r["episodes"][:length], 1 if unsmoothed else window)
                               for r in group])
            stats = [mean_ci(curves[:, i]) for i in range(length)]
            mean = np.array([s[0] for s in stats])
            ci = np.array([s[1] for s in stats])
            line, = ax.plot(frames, mean, marker="o" if unsmoothed else None, label=label)
            ax.fill_between(frames, mean - ci, mean + ci, alpha=0.2)
        if agents:
            _agent_curves(axes[2], group, line.get_color())
    labels = (f"mean return (smoothed over {window} it.)", f"success rate (smoothed over {window} it.)",
              "held-out return of each agent alone")
    for ax, label in zip(axes, labels):
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[::2]:  # the returns: in training, and held-out where evaluated
        draw_references(ax, references)
    if agents:
        for style, name in zip(("-", "--"), AGENTS.values()):
            axes[2].plot([], [], style, color="grey", label=name)
    legend_below(fig, axes)
    fig.suptitle(title or default_title(runs))
    return fig


def agent_curve(group: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Frames, mean and 95% CI half-width over the group's runs of one agent's held-out return
    (`key`, one of AGENTS) at the iterations where it was evaluated (the same in every run of a
    group), the teacher's from the teacher before training at frame 0; None where a run lacks it."""
    if not all(key in r["agents"] for r in group):
        return None
    length = min(len(r["frames"]) for r in group)
    curves = np.stack([r["agents"][key][:length] for r in group])
    evaluated = ~np.isnan(curves).any(axis=0)
    frames = group[0]["frames"][:length][evaluated]
    stats = [mean_ci(curves[:, i]) for i in np.flatnonzero(evaluated)]
    mean, ci = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
    start = [r["eval"].get("teacher_at_start", {}).get("return_mean") for r in group]
    if key == "eval_teacher_alone_return" and all(v is not None for v in start):
        at_start = mean_ci(start)
        frames, mean, ci = np.insert(frames, 0, 0.0), np.insert(mean, 0, at_start[0]), np.insert(ci, 0, at_start[1])
    return frames, mean, ci


def _agent_curves(ax, group: list[dict], color):
    """Each agent's held-out curve (`agent_curve`) with its band."""
    for key, style in zip(AGENTS, ("-", "--")):
        curve = agent_curve(group, key)
        if curve is None:
            continue
        frames, mean, ci = curve
        ax.plot(frames, mean, style, color=color, marker=".")
        ax.fill_between(frames, mean - ci, mean + ci, color=color, alpha=0.15)


def agents_markdown(runs: dict[str, list[dict]]) -> str:
    """Each agent's held-out return during training as a Markdown table, a row per evaluation
    (frames) and a column per method and agent: mean ± 95% CI over the method's runs. Empty where
    no run evaluated its agents during training."""
    columns = {}
    for method in in_order(runs):
        for key, agent in AGENTS.items():
            curve = agent_curve(runs[method], key)
            if curve is not None:
                columns[f"{method}: {agent} (n={len(runs[method])})"] = dict(zip(curve[0], zip(curve[1], curve[2])))
    if not columns:
        return ""
    frames = sorted({f for column in columns.values() for f in column})
    lines = ["| frames | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for f in frames:
        lines.append(f"| {f:,.0f} | " + " | ".join(_fmt(column[f]) if f in column else "" for column in columns.values())
                     + " |")
    lines.append("\nheld-out return of each agent alone during training (`rl_script_args.eval_every`), mean ± 95% CI "
                 "over the n runs; frame 0 is the teacher before training.")
    return "\n".join(lines)


def levels_markdown(runs: dict[str, list[dict]]) -> str:
    """The final held-out return on each level of a mix as a Markdown table, a row per method and
    mode and a column per level: mean ± 95% CI over the method's runs. Empty where no run was
    evaluated on a mix."""
    evaluated = {}  # (method, mode) -> each run's figures by level
    for method in in_order(runs):
        for r in runs[method]:
            for mode, result in r["eval"].items():
                if "levels" in result:
                    evaluated.setdefault((method, mode), []).append(result["levels"])
    if not evaluated:
        return ""
    levels = list(dict.fromkeys(level for by_run in evaluated.values() for e in by_run for level in e))
    lines = ["| method | mode | n (runs) | " + " | ".join(levels) + " |", "|---|---|---|" + "---:|" * len(levels)]
    for (method, mode), by_run in evaluated.items():
        cells = [_fmt(mean_ci([e[level]["return_mean"] for e in by_run if level in e])) for level in levels]
        lines.append(f"| {method} | {mode} | {len(by_run)} | " + " | ".join(cells) + " |")
    lines.append("\nheld-out return at the end on each level of the mix (eval.json's `levels`), mean ± 95% CI over the n "
                 "runs; each run's episodes of a level are the ones its held-out draws gave that level.")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: Path, window: int = 5, title: str = "") -> Path:
    """`curves_figure` saved to `path`."""
    fig = curves_figure(runs, window, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="bidir-compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories or glob patterns (quote them)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)")
    parser.add_argument("--group", help="with --wandb: only this group (experiment) (default: every group)")
    parser.add_argument("--out", type=Path, default=Path("comparison"),
                        help="where to write the table and plot (default: %(default)s)")
    parser.add_argument("--last", type=positive_int, default=5,
                        help="iterations averaged for the final figures (default: %(default)s)")
    parser.add_argument("--smooth", type=positive_int, default=5,
                        help="iterations in the smoothing window (default: %(default)s)")
    parser.add_argument("--title", default="",
                        help="plot title (default: what the bands are, e.g. 'mean ± 95%% CI over seeds')")
    options = parser.parse_args(argv)
    if bool(options.runs) == bool(options.wandb):
        parser.error("give run directories or --wandb ENTITY/PROJECT (one of the two)")
    if options.group and not options.wandb:
        parser.error("--group selects W&B runs: use it with --wandb ENTITY/PROJECT")
    existing = options.out.absolute()  # the directory --out is, or will be made in
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--out {options.out}: {existing} is not a writable directory; choose another --out")
    try:
        runs = load_wandb_runs(options.wandb, options.group) if options.wandb else load_runs(options.runs)
        return_threshold(runs)
    except ValueError as error:
        parser.exit(2, f"bidir-compare: error: {error}\n")
    for warning in budget_warnings(runs, options.smooth) + split_notes(runs):
        print(f"bidir-compare: warning: {warning}", file=sys.stderr)
    options.out.mkdir(parents=True, exist_ok=True)
    table = summarize(runs, options.last, options.smooth)
    (options.out / "results.json").write_text(json.dumps(table, indent=2))
    (options.out / "results.md").write_text(markdown(table) + "\n")
    agents, levels = agents_markdown(runs), levels_markdown(runs)
    for name, text in (("agents.md", agents), ("levels.md", levels)):
        if text:
            (options.out / name).write_text(text + "\n")
    figure = plot(runs, options.out / "comparison.png", options.smooth, options.title)
    print(markdown(table))
    print(f"\nplot: {figure}\ntable: {options.out / 'results.md'}"
          + (f"\neach agent's held-out curve: {options.out / 'agents.md'}" if agents else "")
          + (f"\nthe return on each level of the mix: {options.out / 'levels.md'}" if levels else ""))


if __name__ == "__main__":
    main()
