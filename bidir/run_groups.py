"""Which runs may be pooled into one row of a comparison: runs of the same configuration.

Two runs are pooled when they share every key of their configuration that changes what is
computed: method, model, level, every hyperparameter (keys missing from an older run's config.yaml
count at their documented defaults), wherever their folders lie. A run's name (its method, or the
variant folder of experiments/plan.py's `<variant>/seed<N>` layout) only labels its group; runs of
one name that differ are labelled apart, with the keys that tell them apart. A seed counted twice
in one group is refused, since it would pass one run's outcome off as two independent ones.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from bidir.checks import MODEL_PATH, RESUMABLE_CHANGES, with_documented_defaults

NOT_THE_EXPERIMENT = RESUMABLE_CHANGES + ("rl_script_args.seed",)
"""Keys that say how long a run went, where it ran, how it was shown, or which seed it drew: runs
that differ only there are repeats of one experiment (the budget is checked apart: compare's
length warning and the shared return threshold)."""

FIRST_KEYS = ("rl_script_args.method", MODEL_PATH, "rl_script_args.env_id")
"""The keys a label names first when runs differ in them: what a reader tells runs apart by."""


def experiment_keys(config: dict) -> dict:
    """{"a.b.c": value} for every key of a run's resolved configuration that changes what it computes,
    a key the run's configuration lacks at its documented default (it was added since, and defaults
    to the old behaviour). The model counts by its folder's name (`tiny-t5-bc`), not by where that
    folder lay on the machine that ran it."""
    return {**_documented(), **_leaves(config)}


@functools.lru_cache(maxsize=1)
def _documented() -> dict:
    """`_leaves` of bidir/conf/config.yaml's documented defaults (read once: hundreds of runs ask)."""
    return _leaves(OmegaConf.to_container(with_documented_defaults(OmegaConf.create({})), resolve=True))


def _leaves(config: dict) -> dict:
    """`experiment_keys` of `config` alone."""
    leaves = {}

    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif not f"{prefix}{key}".startswith(NOT_THE_EXPERIMENT):
                leaves[f"{prefix}{key}"] = value

    walk(config, "")
    if isinstance(leaves.get(MODEL_PATH), str):
        leaves[MODEL_PATH] = Path(leaves[MODEL_PATH]).name
    return leaves


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """`runs` (each with "name", "experiment" from `experiment_keys`, "seed" and "path") grouped by
    experiment: {label: runs}. A group is labelled by its runs' name (names joined by " + " where
    runs of one experiment lie under several); where two groups would share a label, each gets what
    sets it apart (`bidir [model_path=smollm2-135m-instruct, ...]`). A seed twice in one group is a
    ValueError naming both runs."""
    experiments, members = [], []
    for run in runs:
        if run["experiment"] not in experiments:
            experiments.append(run["experiment"])
            members.append([])
        members[experiments.index(run["experiment"])].append(run)
    names = [" + ".join(dict.fromkeys(run["name"] for run in group)) for group in members]
    groups = {}
    for name, experiment, group in zip(names, experiments, members):
        namesakes = [other for other, other_name in zip(experiments, names) if other_name == name]
        label = name if len(namesakes) == 1 else f"{name} [{_what_sets_apart(experiment, namesakes)}]"
        _check_each_seed_once(label, group)
        groups[label] = group
    return groups


def _what_sets_apart(experiment: dict, experiments: list[dict], shown: int = 3) -> str:
    """`key=value` for the keys whose values differ among `experiments`, as `experiment` has them:
    the first keys of FIRST_KEYS, then the rest by name; `shown` at most, then how many more."""
    keys = {key for other in experiments for key in other.keys() | experiment.keys()
            if any(other.get(key) != experiment.get(key) for other in experiments)}
    ordered = [key for key in FIRST_KEYS if key in keys] + sorted(keys - set(FIRST_KEYS))
    parts = [f"{key.rsplit('.', 1)[-1]}={experiment.get(key)}" for key in ordered[:shown]]
    return ", ".join(parts + ([f"+{len(ordered) - shown} more"] if len(ordered) > shown else []))


def _check_each_seed_once(label: str, runs: list[dict]):
    """ValueError when two runs of one group share a seed: the same environments twice are not two
    samples, and a mean ± CI over them would overstate n."""
    first = {}
    for run in runs:
        if run["seed"] in first:
            raise ValueError(f"{label}: seed {run['seed']} twice ({first[run['seed']]} and {run['path']}); a seed "
                             "counts once in a comparison: leave one of them out of the patterns")
        first[run["seed"]] = run["path"]
