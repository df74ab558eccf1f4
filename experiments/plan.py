"""Turn experiments/paper/grid.yaml into training commands: the one place where a run's
method, seed and budget become a command line and an output directory.

    python experiments/plan.py --count                           # runs in the grid (methods x seeds)
    python experiments/plan.py --task-id 4 --budget short        # the command of array task 4
    python experiments/plan.py --list --budget short             # every command, in array order
    python experiments/plan.py --local --budget short            # run the grid here, one after another
    python experiments/plan.py --local --jobs 2 --budget short   # two at a time (logs in each run dir)
    python experiments/plan.py --method bidir --seed 1 --iterations 40   # one run outside the grid
    python experiments/plan.py --task-id 4 --exec                # become that command (sbatch)

A grid's `methods` may name variants defined under `variants:` (a method plus overrides, e.g. an
ablation or one point of a tuning sweep); a variant's runs go to its own directory.

Trailing `key=value` arguments are hydra overrides added to every command; they replace a
value the plan would set for the same key (e.g. `setting=offline`). slurm/array.sbatch and
slurm/train_*.sbatch build their commands here, so a SLURM run and a local run of the same
(method, seed, budget) are the same command with the same output directory. The output
directory never depends on a SLURM job id: a requeued job resumes where it stopped.

A grid file and the arguments are checked before anything is planned or run: bad input exits with
code 2 and one `plan.py: error:` line that names the key or argument.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bidir.checks import positive_int
from bidir.methods import METHODS
from bidir.run_files import load_yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GRID = REPO / "experiments" / "paper" / "grid.yaml"
GRID_KEYS = {  # key: (type, required); grid.yaml documents each
    "name": (str, True), "methods": (list, True), "variants": (dict, False), "seeds": (list, True),
    "budgets": (dict, True), "output_root": (str, True), "setting": (str, True), "launcher": (str, True),
    "overrides": (list, False),
}
SETTINGS = sorted(p.stem for p in (REPO / "bidir" / "conf" / "setting").glob("*.yaml"))
LAUNCHERS = ["python"] + sorted(p.stem for p in (REPO / "lamorel_configs").glob("*.yaml"))


@dataclass(frozen=True)
class Run:
    method: str      # a method, or a variant of one (its directory name)
    seed: int
    iterations: int
    experiment: str  # groups runs in W&B and on disk
    output_root: Path
    base_method: str = ""          # the method a variant runs (default: `method`)
    overrides: tuple[str, ...] = ()  # the variant's own overrides

    @property
    def output_dir(self) -> Path:
        return self.output_root / self.experiment / self.method / f"seed{self.seed}"


class GridError(ValueError):
    """An experiment file or a choice that cannot make a plan; main reports it in one line (exit 2)."""


def load_grid(path: Path = DEFAULT_GRID) -> dict:
    """The experiment definition in `path`, checked by `check_grid`. A study's folder stands for
    its main grid, `<folder>/grid.yaml` (experiments/README.md: one folder per study)."""
    if path.is_dir():
        path = path / "grid.yaml"
    try:
        with open(path) as f:
            grid = load_yaml(f)  # a key written twice is an error, not a variant dropped
    except OSError as error:
        raise GridError(f"--grid {path}: {error.strerror}; give an experiment file such as "
                        f"experiments/paper/grid.yaml") from None
    except yaml.YAMLError as error:  # its message spans lines
        raise GridError(f"--grid {path} is not valid YAML: {' '.join(str(error).split())}") from None
    check_grid(grid, path)
    return grid


def check_grid(grid, path: Path):
    """GridError naming the file, the key and the fix unless `grid` has exactly the keys of
    GRID_KEYS with usable values: otherwise a typo would surface only when a run starts, or
    silently not at all (an unknown key, a duplicate seed sharing an output directory)."""
    def fail(why):
        raise GridError(f"{path}: {why} (see experiments/paper/grid.yaml)")

    if not isinstance(grid, dict):
        fail(f"expected a mapping with the keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        fail(f"unknown key {', '.join(map(repr, unknown))}; the keys are {', '.join(GRID_KEYS)}")
    for key, (kind, required) in GRID_KEYS.items():
        if grid.get(key) is None and not required:
            continue
        if key not in grid:
            fail(f"missing key {key!r}")
        if not isinstance(grid[key], kind) or required and not grid[key]:
            fail(f"{key} must be a non-empty {'mapping' if kind is dict else kind.__name__}, got {grid[key]!r}")
    variants = grid.get("variants") or {}
    for name, variant in variants.items():
        method = variant.get("method") if isinstance(variant, dict) else None
        if not isinstance(method, str) or method not in METHODS or set(variant) - {"method", "overrides"}:
            fail(f"variant {name!r} must be {{method: one of {', '.join(METHODS)}, overrides: [key=value, ...]}}, "
                 f"got {variant!r}")
        check_overrides(variant.get("overrides") or [], f"variant {name!r}: overrides", fail)
    for method in grid["methods"]:
        if not isinstance(method, str) or method not in METHODS and method not in variants:
            fail(f"methods: unknown method {method!r}; use one of {', '.join(METHODS)} or define it under variants")
    if any(type(seed) is not int for seed in grid["seeds"]):  # nor bool
        fail(f"seeds must be integers, got {grid['seeds']!r}")
    for key in ("methods", "seeds"):
        twice = sorted({str(v) for v in grid[key] if grid[key].count(v) > 1})
        if twice:
            fail(f"{key} lists {', '.join(twice)} more than once (its runs would share an output directory)")
    for budget, iterations in grid["budgets"].items():
        if not (isinstance(budget, str) and type(iterations) is int and iterations >= 1):  # bool is no int here
            fail(f"budgets: {budget!r} must be a name for a positive number of iterations, got {iterations!r}")
    if grid["setting"] not in SETTINGS:
        fail(f"setting must be one of {', '.join(SETTINGS)}, got {grid['setting']!r}")
    if grid["launcher"] not in LAUNCHERS:
        fail(f"launcher must be one of {', '.join(LAUNCHERS)}, got {grid['launcher']!r}")
    check_overrides(grid.get("overrides") or [], "overrides", fail)


def check_overrides(overrides: list, what: str, fail):
    """Hydra overrides are `key=value` strings."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        fail(f"{what} must be a list of key=value overrides, got {overrides!r}")


def resolve_root(output_root: str | Path) -> Path:
    """Relative output roots are relative to the repository, whatever the working directory."""
    root = Path(output_root)
    return root if root.is_absolute() else REPO / root


def budget_iterations(grid: dict, budget: str) -> int:
    """The iterations of `budget` (GridError if the grid has no such budget)."""
    if budget not in grid["budgets"]:
        raise GridError(f"--budget {budget}: the grid's budgets are {', '.join(grid['budgets'])}; choose one")
    return grid["budgets"][budget]


def grid_runs(grid: dict, budget: str, output_root: str | Path | None = None) -> list[Run]:
    """The grid's runs in array order: method-major, then seed (task id = m * n_seeds + s)."""
    iterations = budget_iterations(grid, budget)
    root = resolve_root(output_root if output_root is not None else grid["output_root"])
    experiment = f"{grid['name']}-{budget}"
    variants = grid.get("variants") or {}
    return [
        Run(method, int(seed), iterations, experiment, root,
            variants.get(method, {}).get("method", method), tuple(variants.get(method, {}).get("overrides", ())))
        for method in grid["methods"]
        for seed in grid["seeds"]
    ]


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate hydra overrides; a later one replaces an earlier one with the same key
    (hydra itself rejects two values for a config group such as `setting`)."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged[_override_key(override)] = override
    return list(merged.values())


@dataclass(frozen=True)
class Rendezvous:
    """One process of a multi-node run: torchrun joins `nnodes` such processes (one per
    SLURM task) at `endpoint` (host:port of the first node) under the id `rdzv_id` (an integer:
    it is also Lamorel's multinode_args.experiment_id)."""

    nnodes: int
    endpoint: str
    rdzv_id: int


def trainer_overrides(run: Run, setting: str) -> list[str]:
    """The hydra overrides that make bidir.train's config the run's."""
    return [
        f"rl_script_args.method={run.base_method or run.method}",
        f"rl_script_args.seed={run.seed}",
        f"rl_script_args.iterations={run.iterations}",
        f"rl_script_args.output_dir={run.output_dir}",
        f"setting={setting}",
        f"wandb.group={run.experiment}",
        *run.overrides,
    ]


def check_run_config(run: Run, setting: str, launcher: str = "python", overrides: list[str] = (),
                     rendezvous: Rendezvous | None = None):
    """Checks the config the run's command composes as bidir.train does before it starts (key
    names, values, the model, the output folder, a resumed run's saved config), creating nothing;
    raises GridError with the trainer's message. Sbatch scripts call it once (`--check`), so that
    bad input is not reported once per SLURM task."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bidir.checks import UsageError, check_config, check_override_keys
    from bidir.run_files import check_resumable
    config_dir, config_name, hydra_overrides = trainer_config(run, setting, launcher, overrides, rendezvous)
    try:
        check_override_keys(hydra_overrides)
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            config = compose(config_name, overrides=hydra_overrides)
            check_config(config)
            check_resumable(config)  # a run to resume: its own configuration, nothing lost
    except (UsageError, HydraException, OmegaConfBaseException) as error:
        raise GridError(str(error).splitlines()[0]) from None


def trainer_config(run: Run, setting: str, launcher: str = "python", overrides: list[str] = (),
                   rendezvous: Rendezvous | None = None) -> tuple[Path, str, list[str]]:
    """The trainer's config for `run`: (config directory, config name, hydra overrides).

    launcher "python" is bidir's own config; any other value names a config in lamorel_configs/
    (local_cpu, local_gpu, multi_node), which extends it; a multi-node process (`rendezvous`) also
    sets Lamorel's multinode arguments."""
    run_overrides = trainer_overrides(run, setting)
    if launcher == "python":
        return REPO / "bidir" / "conf", "config", merge_overrides(run_overrides, list(overrides))
    lamorel_overrides = [f"rl_script_args.path={REPO / 'bidir' / 'train.py'}"]
    multinode = [] if rendezvous is None else [
        "lamorel_args.distributed_setup_args.multinode=true",
        f"lamorel_args.distributed_setup_args.multinode_args.main_process_ip="
        f"{rendezvous.endpoint.rsplit(':', 1)[0]}",
        f"lamorel_args.distributed_setup_args.multinode_args.main_process_port="
        f"{rendezvous.endpoint.rsplit(':', 1)[1]}",
        f"lamorel_args.distributed_setup_args.multinode_args.experiment_id={rendezvous.rdzv_id}",
    ]
    return (REPO / "lamorel_configs", launcher,
            merge_overrides(lamorel_overrides, run_overrides, multinode, list(overrides)))


def command(
    run: Run,
    setting: str,
    launcher: str = "python",
    overrides: list[str] = (),
    python: str = sys.executable,
    rendezvous: Rendezvous | None = None,
) -> list[str]:
    """The command line that trains `run` (with `trainer_config`'s config).

    launcher "python" runs the trainer in-process (`python -m bidir.train`); any other value
    names a config in lamorel_configs/ for lamorel_launcher. With `rendezvous`, the command is the
    torchrun call that lamorel_launcher's multinode mode means to make: Lamorel v0.3 passes
    `--standalone False` to torchrun, which argparse reads as `--standalone` followed by the script
    name, so the rendezvous arguments are lost and every process waits alone forever.
    """
    config_dir, config_name, hydra_overrides = trainer_config(run, setting, launcher, overrides, rendezvous)
    if launcher == "python":
        return [python, "-m", "bidir.train"] + hydra_overrides
    if rendezvous is None:
        return [python, "-m", "lamorel_launcher.launch", "--config-path", str(config_dir),
                "--config-name", config_name] + hydra_overrides
    return ([python, "-m", "torch.distributed.run", f"--nnodes={rendezvous.nnodes}", "--nproc_per_node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={rendezvous.rdzv_id}",
             str(REPO / "bidir" / "train.py")]
            + hydra_overrides + [f"--config-path={config_dir}", f"--config-name={config_name}"])


def run_local(commands: list[list[str]], logs: list[Path] | None = None, jobs: int = 1) -> int:
    """Run the commands here, `jobs` at a time (finished runs return at once: they resume).
    With one job a run prints to the console; with several each writes to its log file."""
    failed, running, pending = 0, {}, list(enumerate(commands))
    while pending or running:
        while pending and len(running) < jobs:
            i, cmd = pending.pop(0)
            print(f"[plan {i + 1}/{len(commands)}] {shlex.join(cmd)}", flush=True)
            if jobs == 1 or logs is None:
                out = None
            else:
                logs[i].parent.mkdir(parents=True, exist_ok=True)
                out = logs[i].open("a")
            running[i] = (subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT if out else None), out)
        time.sleep(0.2)
        for i, (process, out) in list(running.items()):
            if process.poll() is None:
                continue
            del running[i]
            if out:
                out.close()
            if process.returncode != 0:
                failed += 1
            print(f"[plan {i + 1}/{len(commands)}] exited with {process.returncode}"
                  + (f" (log: {logs[i]})" if out else ""), flush=True)
    print(f"[plan] {len(commands) - failed}/{len(commands)} runs succeeded", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", action="store_true", help="print the number of runs in the grid")
    what.add_argument("--task-id", type=int, help="print the command of this array index")
    what.add_argument("--list", action="store_true", help="print every command in array order")
    what.add_argument("--local", action="store_true", help="run the grid here (see --jobs)")
    what.add_argument("--method", choices=list(METHODS), help="one run outside the grid (with --seed, --iterations)")
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID, help="a grid file, or a study folder (its grid.yaml), e.g. experiments/levels-mix")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="with --local: runs at a time (give each a core: torch_threads is 1)")
    parser.add_argument("--budget", default="short", help="a key of the grid's budgets")
    parser.add_argument("--seed", type=int, help="with --method: its seed (default 1); with a grid: only the runs "
                        "of this seed, so that a long study runs seed by seed, every method paired")
    parser.add_argument("--iterations", type=int, help="with --method (default: the budget's)")
    parser.add_argument("--experiment", default="default", help="with --method: group/directory name")
    parser.add_argument("--output-root", help="replaces the grid's output_root")
    parser.add_argument("--setting", choices=SETTINGS, help="replaces the grid's setting")
    parser.add_argument("--launcher", choices=LAUNCHERS,
                        help="replaces the grid's launcher (python, or a lamorel_configs/ name)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the commands")
    parser.add_argument("--nnodes", type=int,
                        help="multi-node run (lamorel launcher only): processes that join, one per task")
    parser.add_argument("--rdzv-endpoint", help="with --nnodes: host:port of the first node")
    parser.add_argument("--rdzv-id", type=int, default=0,
                        help="with --nnodes: rendezvous id, an integer unique per job and restart")
    parser.add_argument("--exec", action="store_true",
                        help="with --task-id or --method: become the command (for sbatch scripts)")
    parser.add_argument("--check", action="store_true",
                        help="first check each run's config as bidir.train would (exit 2 with its error line)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every command")
    args = parser.parse_args(argv)
    if args.nnodes is not None:
        if args.nnodes < 2:
            parser.error(f"--nnodes {args.nnodes}: a multi-node run has an RL process and at least one LLM "
                         "server; give 2 or more")
        if not re.fullmatch(r"[^:]+:\d+", args.rdzv_endpoint or ""):
            parser.error(f"--nnodes needs --rdzv-endpoint host:port (the first node), got {args.rdzv_endpoint}")

    try:
        grid = load_grid(args.grid)
        if args.method is not None:
            iterations = budget_iterations(grid, args.budget) if args.iterations is None else args.iterations
            root = resolve_root(args.output_root or grid["output_root"])
            runs = [Run(args.method, 1 if args.seed is None else args.seed, iterations, args.experiment, root)]
        else:
            runs = grid_runs(grid, args.budget, args.output_root)
            if args.seed is not None:
                if args.seed not in grid["seeds"]:
                    raise GridError(f"--seed {args.seed}: the grid's seeds are {', '.join(map(str, grid['seeds']))}")
                runs = [run for run in runs if run.seed == args.seed]
    except GridError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    launcher = args.launcher or grid["launcher"]
    if args.nnodes and launcher == "python":
        parser.error("--nnodes needs a Lamorel launcher: add --launcher multi_node")
    if args.count:
        print(len(runs))
        return 0
    overrides = merge_overrides(grid.get("overrides") or [], args.overrides)
    rendezvous = Rendezvous(args.nnodes, args.rdzv_endpoint, args.rdzv_id) if args.nnodes else None
    if args.check:
        try:
            for run in runs:
                check_run_config(run, args.setting or grid["setting"], launcher, overrides, rendezvous)
        except GridError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
    commands = [
        command(
            run,
            setting=args.setting or grid["setting"],
            launcher=launcher,
            overrides=overrides,
            python=args.python,
            rendezvous=rendezvous,
        )
        for run in runs
    ]
    if args.local:
        return run_local(commands, [run.output_dir.parent / f"{run.output_dir.name}.log" for run in runs], args.jobs)
    if args.task_id is not None:
        if not 0 <= args.task_id < len(commands):
            parser.error(f"--task-id {args.task_id} outside 0..{len(commands) - 1}")
        commands = [commands[args.task_id]]
    if args.exec:
        if len(commands) != 1:
            parser.error("--exec needs --task-id or --method")
        print(f"[plan] exec {shlex.join(commands[0])}", file=sys.stderr, flush=True)
        os.chdir(REPO)
        os.execvp(commands[0][0], commands[0])  # same pid: signals reach the trainer
    for cmd in commands:
        print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
