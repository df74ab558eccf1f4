"""The files a run holds, read back and checked: config.yaml, metrics.csv, eval*.json and the
checkpoints. A file that cannot be used is one `BadRunFile` line naming the file and the field;
a run that cannot be resumed without losing work is one `UsageError` line saying what is missing
and how to go on. Nothing here writes, but `keep_aside`, which renames and never deletes."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from bidir import checkpoint, checks
from bidir.checks import UsageError, check_ranges, check_types, with_documented_defaults

log = logging.getLogger("bidir")

START_EVAL = "eval_start.json"
FIGURES = {"success_rate": float, "return_mean": float, "episode_length_mean": float, "episodes": int}
"""The figures of one evaluation mode (bidir.rollout.summarize_episodes), with their types."""


class BadRunFile(UsageError, ValueError):
    """A run file that cannot be used: one line naming the file and the field (exit code 2)."""


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error (YAML keeps the
    last one: a variant or a setting written twice would be dropped without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(stream):
    """YAML from a string or an open file, refusing a key written twice in a mapping."""
    return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader


def one_line(error: Exception) -> str:
    """An exception's message on one line (YAML's span several)."""
    return " ".join(str(error).split())


def read_config(path: Path) -> DictConfig:
    """A run's saved config.yaml, with the keys added since at their defaults, checked as a new
    run's would be (types, ranges, relations); BadRunFile names the file and the key."""
    path = Path(path)
    try:
        with open(path) as f:
            tree = load_yaml(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise BadRunFile(f"{path} does not parse ({one_line(error).replace(str(path), path.name)}); restore it "
                         f"from a copy") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("rl_script_args"), dict):
        raise BadRunFile(f"{path} is not a run's configuration (no rl_script_args); restore it from a copy")
    try:
        config = with_documented_defaults(OmegaConf.create(tree))
        check_types(config)
        check_ranges(config)
    except UsageError as error:
        raise BadRunFile(f"{path}: {error}; restore it from a copy") from None
    except Exception as error:  # noqa: BLE001 - omegaconf raises many kinds (an interpolation, a bad key)
        raise BadRunFile(f"{path} is not a run's configuration ({one_line(error)}); restore it from a copy") from None
    return config


def read_iterations(path: Path) -> tuple[list[int], str | None]:
    """The iterations metrics.csv holds, 1, 2, ... n, up to its first damaged line; with what is
    wrong there (None: no damage). A kill while a row is appended leaves such a line past the
    last checkpoint, which resuming replaces; before it, rows are missing."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return [], f"cannot be read ({one_line(error)})"
    if not header:
        return [], None
    if "iteration" not in header:
        return [], "has no column iteration (its header is damaged)"
    iterations = []
    for line, row in enumerate(rows, start=2):
        text = row.get("iteration") or ""
        if None in row or None in row.values():
            return iterations, f"line {line} has {'more' if None in row else 'fewer'} fields than the header"
        if text != str(len(iterations) + 1):
            return iterations, f"line {line} is iteration {text!r}, not {len(iterations) + 1}"
        for column, value in row.items():
            if value != "" and not _is_number(value):
                return iterations, f"line {line}: {column} is {value!r}, not a number"
        iterations.append(int(text))
    return iterations, None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _span(first: int, last: int) -> str:
    """'iteration 3' or 'iterations 1-3'."""
    return f"iteration {first}" if first == last else f"iterations {first}-{last}"


def read_evaluation(path: Path) -> dict:
    """An eval*.json's results (mode -> figures, with per-level figures under `levels` for a mix),
    checked; BadRunFile names the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BadRunFile(f"{path} is not JSON ({one_line(error)}); restore it from a copy or delete it") from None
    fail = lambda field, why: BadRunFile(f"{path}: {field} {why}; restore it from a copy or delete it")  # noqa: E731
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise fail("results", "must be a mapping of evaluation mode to figures")
    if "checkpoint" in data and not isinstance(data["checkpoint"], str):
        raise fail("checkpoint", "must be a string")
    for mode, figures in data["results"].items():
        _check_figures(figures, f"results.{mode}", fail)
        levels = figures.get("levels", {})
        if not isinstance(levels, dict):
            raise fail(f"results.{mode}.levels", "must be a mapping of level to figures")
        for level, by_level in levels.items():
            _check_figures(by_level, f"results.{mode}.levels.{level}", fail)
    return data["results"]


def _check_figures(figures, field: str, fail):
    if not isinstance(figures, dict):
        raise fail(field, "must be a mapping of figures")
    for name, kind in FIGURES.items():
        if name not in figures and name != "return_mean":  # what the comparisons need; the rest typed when there
            continue
        value = figures.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and float(value).is_integer() and value >= 0
        elif ok and not math.isnan(value):  # NaN: no episode ended
            ok = math.isfinite(value)
        if not ok:
            raise fail(f"{field}.{name}", f"must be {'a count' if kind is int else 'a number'}, got {value!r}")


def check_run_dir(output_dir: Path, needs_teacher: bool) -> Path | None:
    """What a run directory holds can be resumed with nothing lost: returns its newest complete
    checkpoint (None: a fresh start, which overwrites no history), else one UsageError line."""
    output_dir = Path(output_dir)
    metrics = output_dir / "metrics.csv"
    fix = "restore it from a copy, or start afresh in a new rl_script_args.output_dir"
    candidates = checkpoint.candidates(output_dir)
    latest, skipped = checkpoint.scan(output_dir, needs_teacher)
    if candidates and latest is None:
        raise UsageError(f"cannot resume {output_dir}: none of its checkpoints is complete ({'; '.join(skipped)}); "
                         f"restore them from a copy, or start afresh in a new rl_script_args.output_dir")
    iterations, damage = read_iterations(metrics) if metrics.exists() else (None, None)
    if latest is None:
        if iterations or damage:
            raise UsageError(f"cannot start in {output_dir}: its metrics.csv holds "
                             f"{_span(1, iterations[-1]) if iterations else 'rows'} but there is no checkpoint "
                             f"to resume them from; restore checkpoints/ from a copy, or choose a new "
                             f"rl_script_args.output_dir")
        return None
    needed = checkpoint.iteration_of(latest)
    if not (output_dir / "config.yaml").exists():
        raise UsageError(f"cannot resume {output_dir}: its config.yaml is missing (checkpoint {latest.name}); {fix}")
    if iterations is None:
        raise UsageError(f"cannot resume {output_dir}: its metrics.csv is missing, and checkpoint {latest.name} "
                         f"is at iteration {needed}: {_span(1, needed)} would be lost; {fix}")
    if len(iterations) < needed:
        held = _span(1, iterations[-1]) if iterations else "no iteration"
        raise UsageError(f"cannot resume {output_dir}: its metrics.csv holds {held}"
                         f"{f' ({damage})' if damage else ''}, but checkpoint {latest.name} is at iteration "
                         f"{needed}: {_span(len(iterations) + 1, needed)} would be lost; {fix}")
    if (output_dir / START_EVAL).exists():
        try:
            read_evaluation(output_dir / START_EVAL)
        except BadRunFile as error:
            raise UsageError(f"cannot resume {output_dir}: "
                             f"{str(error).replace(str(output_dir / START_EVAL), f'its {START_EVAL}')}") from None
    return latest


def keep_aside(path: Path, unless_text: str | None = None) -> Path | None:
    """Renames `path` to the first free `<stem>.<n><suffix>` so that what replaces it loses
    nothing; returns the new name (None when there was nothing to keep, or its text is
    `unless_text`, the same content)."""
    path = Path(path)
    if not path.exists() or (unless_text is not None and path.read_text() == unless_text):
        return None
    n = 1
    while (kept := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    path.rename(kept)
    log.warning("kept the previous %s as %s", path.name, kept.name)
    return kept


def save_config(config: DictConfig, path: Path):
    """Writes a run's config.yaml (resolved) whole: staged and renamed, so a kill never leaves
    half of it."""
    path = Path(path)
    staged = path.with_name(path.name + ".tmp")
    OmegaConf.save(config, staged, resolve=True)
    staged.replace(path)


def open_run(path: Path) -> tuple[DictConfig, Path]:
    """(config, checkpoint) of a run directory (its newest complete checkpoint) or of one of its
    checkpoint directories (refused unless complete), for bidir-eval and bidir-trace; a run or
    checkpoint that cannot be used is one BadRunFile line."""
    from bidir.envs import instruction_actions
    from bidir.methods import get_method

    path = Path(path)
    given_checkpoint = path.parent.name == "checkpoints" and path.name.startswith("iter_")
    run_dir = path.parent.parent if given_checkpoint else path
    if not (run_dir / "config.yaml").exists():
        raise BadRunFile(f"{run_dir} is not a bidir run directory (no config.yaml)")
    config = read_config(run_dir / "config.yaml")
    args = config.rl_script_args
    for key, check in (("method", get_method), ("instructions", instruction_actions)):
        try:
            check(args[key])
        except ValueError as error:
            raise BadRunFile(f"{run_dir / 'config.yaml'}: rl_script_args.{key}: {error}") from None
    needs_teacher = get_method(args.method).teacher_learns
    if given_checkpoint:
        why = checkpoint.problem(path, needs_teacher) if path.is_dir() else "it does not exist"
        if why:
            raise BadRunFile(f"{path} is not a complete checkpoint: {why}; give the run directory {run_dir} to use "
                             f"its newest complete checkpoint")
        return config, path
    latest, skipped = checkpoint.scan(run_dir, needs_teacher)
    if latest is None:
        raise BadRunFile(f"{run_dir} has no complete checkpoint"
                         + (f" ({'; '.join(skipped)}); restore one from a copy" if skipped else ""))
    for line in skipped:
        log.warning("skipping incomplete checkpoint %s", line)
    return config, latest


def check_resumable(config: DictConfig):
    """A run directory with checkpoints is resumed only when nothing of it would be lost
    (`bidir.run_files.check_run_dir`) and with the configuration it was made with, apart from
    checks.RESUMABLE_CHANGES: anything else would mix two experiments under one label."""
    from bidir.methods import get_method

    output_dir = Path(config.rl_script_args.output_dir)
    saved_path = output_dir / "config.yaml"
    if saved_path.exists() and checkpoint.candidates(output_dir):
        _check_same_config(config, output_dir, saved_path)
    # then what the run holds (the same method's files): a complete checkpoint and the history it covers
    check_run_dir(output_dir, get_method(config.rl_script_args.method).teacher_learns)


def _check_same_config(config: DictConfig, output_dir: Path, saved_path: Path):
    """The configuration of a run to resume is its saved one, but for checks.RESUMABLE_CHANGES."""
    leaves, show, model = checks._leaves, checks._show, checks.MODEL_PATH
    try:
        saved = leaves(OmegaConf.to_container(read_config(saved_path), resolve=True))
    except BadRunFile as error:
        raise UsageError(f"cannot resume {output_dir}: {str(error).replace(str(saved_path), 'its config.yaml')}, "
                         f"or choose a new rl_script_args.output_dir") from None
    new = leaves(OmegaConf.to_container(config, resolve=True))
    if saved.get(model) != new.get(model):  # a method without a teacher records the name unresolved
        saved[model], new[model] = _resolved(saved.get(model)), _resolved(new.get(model))
    missing = object()
    differences = [f"{key} ({show(saved.get(key, missing))} there, {show(new.get(key, missing))} here)"
                   for key in sorted(saved.keys() | new.keys())
                   if not key.startswith(checks.RESUMABLE_CHANGES)
                   and not _same(saved.get(key, missing), new.get(key, missing))]
    if differences:
        raise UsageError(f"output_dir {output_dir} holds a run with another configuration: "
                         f"{'; '.join(differences)}. Resume it with its own values ({saved_path}) or choose "
                         f"a new rl_script_args.output_dir")


def _same(a, b) -> bool:
    """Config values are equal (NaN equals NaN: a value is the same setting as itself)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _resolved(model_path):
    """The path a model name resolves to; the name itself if it does not resolve."""
    from bidir.models import resolve_model_path
    try:
        return resolve_model_path(model_path)
    except (ValueError, OSError, TypeError):
        return model_path


def output_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (one phrase), checked before any work so that a bad
    path fails before anything is written; None when it can."""
    path = Path(path)
    if not path.parent.is_dir():
        return f"{path.parent} is not a directory"
    if path.is_dir():
        return f"{path} is a directory"
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path if path.exists() else path.parent} is not writable"
    return None
