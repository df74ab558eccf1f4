"""A run's data as the comparisons read it: its metrics.csv, config.yaml and held-out evaluations
(eval_start.json, eval.json) from a run directory, or the same from W&B, grouped by configuration
(bidir/run_groups.py: runs of one method or variant that differ are labelled apart)."""
from __future__ import annotations

import csv
import glob
import re
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bidir.run_files import read_config, read_evaluation

from bidir.run_groups import experiment_keys, group_runs


THRESHOLD_BEFORE_THE_KEY = 0.8
"""The return threshold of a run made before `rl_script_args.return_threshold` existed: its figures
were measured at 0.8."""


def return_threshold(runs: dict[str, list[dict]]) -> float:
    """The return threshold the runs share (each run's `rl_script_args.return_threshold`); runs made
    with different thresholds measure different things, so comparing them is a ValueError."""
    thresholds = {r["return_threshold"] for group in runs.values() for r in group}
    if len(thresholds) > 1:
        raise ValueError(f"the runs use different return thresholds ({', '.join(f'{t:g}' for t in sorted(thresholds))}): "
                         "compare runs of one level, or give them one rl_script_args.return_threshold")
    return thresholds.pop()


def group_name(path: Path, method: str) -> str:
    """The variant directory of plan.py's `<variant>/seed<N>` layout, else the method."""
    return path.parent.name if re.fullmatch(r"seed\d+", path.name) else method


def _bad_file(path: Path, why) -> ValueError:
    """The one-line error for a run file that cannot be used (YAML and JSON errors span lines)."""
    return ValueError(" ".join(f"{path}: {why}; fix or delete it, or leave its run out of the patterns".split()))


AGENTS = {"eval_teacher_alone_return": "teacher alone", "eval_student_alone_return": "student alone"}
"""Each agent's held-out return during training (rl_script_args.eval_every), where a run has it."""

ENTROPIES = {"teacher_policy_entropy": "teacher", "student_entropy": "student"}
"""Each agent's policy entropy over the states of an iteration (uniform over the 6 instructions: ln 6 =
1.79), where the method has that agent: with the critique, the teacher's follows the student's."""


def _read_metrics(path: Path) -> list[dict]:
    """metrics.csv's rows, each with the columns compare uses as floats (NaN where empty)."""
    required = ("frames", "return_mean", "success_rate", "episodes", "wall_time_s")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise _bad_file(path, f"cannot be read ({error})") from None
    if not header:  # a run that has not finished its first iteration
        return []
    missing = [c for c in required if c not in header]
    columns = required + tuple(c for c in (*AGENTS, *ENTROPIES) if c in header)
    if missing:
        raise _bad_file(path, f"has no column {', '.join(missing)}")
    values = []
    for line, row in enumerate(rows, start=2):
        try:
            values.append({c: float(row[c]) if row[c] != "" else np.nan for c in columns})
        except (TypeError, ValueError):  # a short row (None) or a non-number
            raise _bad_file(path, f"line {line} is not numeric in {', '.join(columns)}") from None
    return values


def load_runs(patterns: list[str]) -> dict[str, list[dict]]:
    """Run directories (those with config.yaml and metrics.csv) grouped by `group_runs`: by method or
    variant and configuration; a file that cannot be read or parsed, or a seed twice in one group,
    is a ValueError naming it (runs without rows are skipped)."""
    runs = []
    paths = sorted({Path(p) for pattern in patterns for p in (glob.glob(pattern) or [pattern])})
    for path in paths:
        if not (path / "metrics.csv").exists() or not (path / "config.yaml").exists():
            continue
        config = read_config(path / "config.yaml")  # checked as a run's: one line naming the file and the key
        method, seed = str(config.rl_script_args.method), int(config.rl_script_args.seed)
        as_saved = OmegaConf.load(path / "config.yaml").rl_script_args  # without the keys added since
        threshold = float(as_saved.get("return_threshold", THRESHOLD_BEFORE_THE_KEY))
        experiment = experiment_keys(OmegaConf.to_container(config, resolve=True))
        rows = _read_metrics(path / "metrics.csv")
        if not rows:
            continue
        column = lambda key: np.array([r[key] for r in rows])  # noqa: E731
        evaluation = {}
        for name in ("eval_start.json", "eval.json"):  # the teacher before training, then the final figures
            if (path / name).exists():
                evaluation.update(read_evaluation(path / name))  # checked: one line naming the file and field
        runs.append({
            "name": group_name(path, method), "experiment": experiment, "path": str(path), "seed": seed, "frames": column("frames"),
            "return": column("return_mean"), "success": column("success_rate"), "episodes": column("episodes"),
            "eval": evaluation, "wall_time_s": rows[-1]["wall_time_s"], "return_threshold": threshold,
            "agents": {key: column(key) for key in AGENTS if key in rows[0]},
            "entropy": {agent: column(key) for key, agent in ENTROPIES.items() if key in rows[0]}})
    if not runs:
        raise ValueError(f"no run directories (with config.yaml and metrics.csv) in {' '.join(patterns)}")
    return group_runs(runs)


def load_wandb_runs(project: str, group: str | None) -> dict[str, list[dict]]:
    """The same structure as `load_runs`, from a W&B project ("entity/project") when online;
    bidir logs every metrics.csv column under its own name, with step = frames."""
    import wandb

    runs = []
    for run in wandb.Api(timeout=30).runs(project, filters={"group": group} if group else {}):
        rows = [r for r in run.scan_history(keys=["frames", "return_mean", "success_rate", "episodes"])]
        if not rows or "rl_script_args" not in run.config:
            continue
        column = lambda key: np.array([float(r.get(key, np.nan)) for r in rows])  # noqa: E731
        runs.append({
            "name": run.config["rl_script_args"]["method"], "experiment": experiment_keys(dict(run.config)), "path": run.url, "seed": run.config["rl_script_args"]["seed"], "frames": column("frames"),
            "return": column("return_mean"), "success": column("success_rate"), "episodes": column("episodes"),
            "eval": dict(run.summary.get("eval", {})),
            "return_threshold": float(run.config["rl_script_args"].get("return_threshold", THRESHOLD_BEFORE_THE_KEY)),
            "wall_time_s": float(run.summary.get("wall_time_s", np.nan))})
    if not runs:
        raise ValueError(f"no bidir runs in W&B project {project}" + (f", group {group}" if group else ""))
    return group_runs(runs)
