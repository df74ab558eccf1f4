"""experiments/plan.py: the grid in grid.yaml becomes one command per SLURM array task,
and `--local` runs exactly those commands, in the same order."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "experiments" / "plan.py"
sys.path.insert(0, str(PLAN.parent))
import plan  # noqa: E402
from entry import run_main  # noqa: E402


def run_plan(*args, check=True):
    """`python experiments/plan.py args...`, in this process (tests/entry.py)."""
    done = run_main(plan.main, *args, prog="plan.py")
    if check:
        done.check_returncode()
    return done


def test_grid_is_the_papers_comparison():
    grid = plan.load_grid()
    assert grid["methods"] == ["bidir", "t2s", "glam", "student"]
    assert grid["seeds"] == [1, 2, 3]
    assert grid["budgets"] == {"short": 40, "long": 2100}


def test_count_is_methods_times_seeds():
    assert run_plan("--count").stdout.strip() == "12"


def test_array_order_is_method_major():
    runs = plan.grid_runs(plan.load_grid(), "short")
    assert [(r.method, r.seed) for r in runs[:4]] == [
        ("bidir", 1), ("bidir", 2), ("bidir", 3), ("t2s", 1)]
    assert (runs[11].method, runs[11].seed) == ("student", 3)


def test_task_command_is_exact():
    # Task 4 = second method (t2s), second seed; output_dir depends on the run, not on a job id,
    # so a requeued task finds its checkpoint.
    out = run_plan("--task-id", 4, "--budget", "long", "--python", "python").stdout
    assert out.split() == [
        "python", "-m", "bidir.train",
        "rl_script_args.method=t2s",
        "rl_script_args.seed=2",
        "rl_script_args.iterations=2100",
        f"rl_script_args.output_dir={REPO}/runs/paper-long/t2s/seed2",
        "setting=paper",
        "wandb.group=paper-long",
    ]


def test_overrides_replace_the_plans_values_and_append_new_ones():
    out = run_plan("--task-id", 0, "--python", "python", "--output-root", "/scratch/r",
                   "setting=offline", "rl_script_args.n_envs=2").stdout.split()
    assert "setting=offline" in out and "setting=paper" not in out
    assert out[-1] == "rl_script_args.n_envs=2"
    assert "rl_script_args.output_dir=/scratch/r/paper-short/bidir/seed1" in out


def test_lamorel_launcher_command():
    cmd = plan.command(plan.Run("glam", 1, 40, "e", Path("/o")), setting="paper",
                       launcher="local_gpu", python="python")
    assert cmd[:7] == ["python", "-m", "lamorel_launcher.launch", "--config-path",
                       str(REPO / "lamorel_configs"), "--config-name", "local_gpu"]
    assert cmd[7] == f"rl_script_args.path={REPO}/bidir/train.py"
    assert "rl_script_args.output_dir=/o/e/glam/seed1" in cmd


def test_single_run_outside_the_grid():
    out = run_plan("--method", "student", "--seed", 7, "--iterations", 3, "--experiment", "ci",
                   "--output-root", "/tmp/r", "--setting", "offline", "--python", "python")
    assert out.stdout.split() == [
        "python", "-m", "bidir.train", "rl_script_args.method=student", "rl_script_args.seed=7",
        "rl_script_args.iterations=3", "rl_script_args.output_dir=/tmp/r/ci/student/seed7",
        "setting=offline", "wandb.group=ci"]


def test_task_id_out_of_range_fails():
    assert run_plan("--task-id", 12, check=False).returncode != 0


def stand_in(tmp_path, script: str, **grid_changes) -> list:
    """plan.py arguments for the paper grid with `grid_changes` (runs under tmp_path) and a
    stand-in interpreter that runs the shell `script` instead of training."""
    grid = plan.load_grid()
    grid.update(output_root=str(tmp_path / "runs"), **grid_changes)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    return ["--grid", grid_file, "--python", fake, "setting=offline"]


def test_local_runs_the_array_commands_in_order(tmp_path):
    # A stand-in interpreter records its arguments: --local must run exactly what the array
    # tasks 0..n-1 would run.
    log = tmp_path / "calls.txt"
    common = stand_in(tmp_path, f'echo "$0 $*" >> {log}', methods=["bidir", "student"], seeds=[1, 2])
    grid_file = common[1]
    assert run_plan("--count", "--grid", grid_file).stdout.strip() == "4"
    expected = [run_plan("--task-id", i, *common).stdout.strip() for i in range(4)]
    assert run_plan("--list", *common).stdout.splitlines() == expected
    run_plan("--local", *common)
    assert log.read_text().splitlines() == expected


@pytest.mark.parametrize("budget", ["short", "long"])
def test_iterations_follow_the_budget(budget):
    runs = plan.grid_runs(plan.load_grid(), budget)
    assert {r.iterations for r in runs} == {plan.load_grid()["budgets"][budget]}
    assert len({r.output_dir for r in runs}) == len(runs)


def test_multinode_command_is_torchrun_with_the_rendezvous():
    # One process of a multi-node run: what lamorel_launcher's multinode mode means to start
    # (its own call loses the rendezvous arguments, see plan.command).
    out = run_plan("--method", "bidir", "--launcher", "multi_node", "--python", "python",
                   "--nnodes", 3, "--rdzv-endpoint", "node1:25007", "--rdzv-id", 7001).stdout.split()
    assert out[:9] == ["python", "-m", "torch.distributed.run", "--nnodes=3", "--nproc_per_node=1",
                       "--rdzv-backend=c10d", "--rdzv-endpoint=node1:25007", "--rdzv-id=7001",
                       f"{REPO}/bidir/train.py"]
    assert out[-2:] == [f"--config-path={REPO}/lamorel_configs", "--config-name=multi_node"]
    assert "lamorel_args.distributed_setup_args.multinode_args.main_process_ip=node1" in out
    assert "lamorel_args.distributed_setup_args.multinode_args.main_process_port=25007" in out
    assert "lamorel_args.distributed_setup_args.multinode_args.experiment_id=7001" in out  # an integer


def test_variants_and_two_jobs_at_a_time(tmp_path):
    # a variant runs its method with its own overrides in its own directory; --jobs 2 keeps two
    # runs going at once, each writing to its log beside its run directory
    events = tmp_path / "events.txt"
    common = stand_in(tmp_path, f'echo "start $*" >> {events}\necho "running $*"\nsleep 1\necho "end" >> {events}',
                      methods=["student", "bidir-no-distill"], seeds=[1, 2],
                      variants={"bidir-no-distill": {"method": "bidir", "overrides": ["rl_script_args.distill_coef=0"]}})
    variant = run_plan("--task-id", 2, *common).stdout.split()
    assert "rl_script_args.method=bidir" in variant and "rl_script_args.distill_coef=0" in variant
    assert f"rl_script_args.output_dir={tmp_path}/runs/paper-short/bidir-no-distill/seed1" in variant
    run_plan("--local", "--jobs", 2, *common)
    lines = events.read_text().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["start", "start"]  # the second began before the first ended
    assert sum(line.startswith("start") for line in lines) == 4
    assert "running" in (tmp_path / "runs" / "paper-short" / "bidir-no-distill" / "seed2.log").read_text()


def plan_grid(**changes) -> dict:
    """The paper grid with `changes` (None drops a key)."""
    grid = plan.load_grid()
    grid.update(changes)
    return {key: value for key, value in grid.items() if value is not None}  # None: drop the key


# (grid file text, or changes to the paper grid, or None: no file; plan.py arguments; the error line's message)
BAD_INPUT = {
    "grid file missing": (None, ["--grid", "{tmp}/nope.yaml"],
                          "--grid {tmp}/nope.yaml: No such file or directory; give an experiment file"),
    "grid not YAML": ("methods: [bidir\n", [], "--grid {tmp}/grid.yaml is not valid YAML: while parsing"),
    "key written twice": ("methods: [bidir]\nvariants:\n  a: {method: bidir}\n  a: {method: glam}\n", [],
                          "--grid {tmp}/grid.yaml is not valid YAML: key 'a' is written twice in \"{tmp}/grid.yaml\", "
                          "line 4, column 3"),
    "grid not a mapping": ("[bidir, glam]\n", [], "{tmp}/grid.yaml: expected a mapping with the keys name, methods"),
    "unknown key": (dict(seed=[1]), [], "{tmp}/grid.yaml: unknown key 'seed'; the keys are name, methods"),
    "missing key": (dict(budgets=None), [], "{tmp}/grid.yaml: missing key 'budgets'"),
    "wrong type": (dict(methods="bidir"), [], "{tmp}/grid.yaml: methods must be a non-empty list, got 'bidir'"),
    "unknown method": (dict(methods=["bidr"]), [],
                       "{tmp}/grid.yaml: methods: unknown method 'bidr'; use one of bidir, t2s, glam, student or "
                       "define it under variants"),
    "method not a name": (dict(methods=[["bidir"]]), [], "{tmp}/grid.yaml: methods: unknown method ['bidir']"),
    "bad variant": (dict(methods=["v"], variants={"v": {"method": "bidir", "override": ["a=1"]}}), [],
                    "{tmp}/grid.yaml: variant 'v' must be {method: one of bidir, t2s, glam, student, overrides:"),
    "seed not an integer": (dict(seeds=[1, "2"]), [], "{tmp}/grid.yaml: seeds must be integers, got [1, '2']"),
    "seed twice": (dict(seeds=[1, 2, 1]), [], "{tmp}/grid.yaml: seeds lists 1 more than once"),
    "budget not positive": (dict(budgets={"short": 0}), [],
                            "{tmp}/grid.yaml: budgets: 'short' must be a name for a positive number of "
                            "iterations, got 0"),
    "unknown setting": (dict(setting="offlin"), [],
                        "{tmp}/grid.yaml: setting must be one of offline, paper, smollm2, got 'offlin'"),
    "unknown launcher": (dict(launcher="slurm"), [], "{tmp}/grid.yaml: launcher must be one of python, local_cpu"),
    "override not key=value": (dict(overrides=["wandb.mode"]), [],
                               "{tmp}/grid.yaml: overrides must be a list of key=value overrides, got ['wandb.mode']"),
    "unknown budget": ({}, ["--budget", "medium"], "--budget medium: the grid's budgets are short, long; choose one"),
    "--method unknown": ({}, ["--method", "bidr"], "argument --method: invalid choice: 'bidr'"),
    "--setting unknown": ({}, ["--setting", "offlin"], "argument --setting: invalid choice: 'offlin'"),
    "--jobs 0": ({}, ["--jobs", "0"], "argument --jobs: expected a positive integer, got 0"),
    "--nnodes 1": ({}, ["--nnodes", "1", "--rdzv-endpoint", "n:1"], "--nnodes 1: a multi-node run has an RL"),
    "--nnodes, no endpoint": ({}, ["--nnodes", "2"], "--nnodes needs --rdzv-endpoint host:port (the first node)"),
    "--nnodes, python launcher": ({}, ["--nnodes", "2", "--rdzv-endpoint", "n:1", "--launcher", "python"],
                                  "--nnodes needs a Lamorel launcher: add --launcher multi_node"),
    "--rdzv-id not an integer": ({}, ["--rdzv-id", "8-0"], "argument --rdzv-id: invalid int value: '8-0'"),
    "--seed not in the grid": ({}, ["--seed", "9"], "--seed 9: the grid's seeds are 1, 2, 3"),
    "--check, unknown key": ({}, ["--check", "--setting", "offline", "rl_script_args.teacher_lrr=1"],
                             "unknown key 'rl_script_args.teacher_lrr'; did you mean rl_script_args.teacher_lr=1?"),
    "--check, bad value": ({}, ["--check", "--setting", "offline", "rl_script_args.teacher_lr=-1"],
                           "rl_script_args.teacher_lr must be >= 0.0, got -1"),
}


def test_seed_keeps_that_seeds_runs_in_array_order():
    every = run_plan("--list", "--python", "python").stdout.splitlines()
    seed2 = run_plan("--list", "--python", "python", "--seed", 2).stdout.splitlines()
    assert seed2 == [cmd for cmd in every if "rl_script_args.seed=2 " in cmd] and len(seed2) == 4


def test_check_of_a_multinode_restart_accepts_the_runs_own_config(tmp_path):
    # what train_multinode.sbatch checks when a requeued job starts again: the run's saved config
    # was composed with Lamorel's multinode arguments, and only the rendezvous id differs now
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bidir import checkpoint

    run = plan.Run("student", 1, 40, "default", tmp_path)
    config_dir, name, overrides = plan.trainer_config(run, "offline", "multi_node", [],
                                                      plan.Rendezvous(2, "n1:25001", 7000))
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(name, overrides=overrides)
    checkpoint.save(run.output_dir, 1, {"iteration": 1})  # a run one iteration in, as far as --check reads it
    (run.output_dir / "metrics.csv").write_text("iteration\n1\n")
    OmegaConf.save(config, run.output_dir / "config.yaml", resolve=True)
    common = ["--method", "student", "--setting", "offline", "--launcher", "multi_node", "--nnodes", 2,
              "--rdzv-endpoint", "n1:25001", "--rdzv-id", 7001, "--output-root", tmp_path, "--check"]
    assert run_plan(*common).returncode == 0
    changed = run_plan(*common, "rl_script_args.student_lr=0.01", check=False)
    assert changed.returncode == 2 and "holds a run with another configuration: rl_script_args.student_lr" \
        in changed.stderr, changed.stderr


def test_check_passes_a_good_run_and_creates_nothing(tmp_path):
    out = run_plan("--method", "student", "--setting", "offline", "--check", "--output-root", tmp_path / "runs",
                   "rl_script_args.student_epochs=8").stdout
    assert "rl_script_args.student_epochs=8" in out and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_with_one_line_and_runs_nothing(tmp_path, case):
    grid, args, message = BAD_INPUT[case]
    grid_file = tmp_path / "grid.yaml"
    if isinstance(grid, str):
        grid_file.write_text(grid)
    elif grid is not None:
        grid = plan_grid(**{"output_root": str(tmp_path / "runs"), **grid})
        grid_file.write_text(yaml.safe_dump(grid, sort_keys=False))
    fake = tmp_path / "python"  # a stand-in trainer that leaves a trace if anything runs
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\n")
    fake.chmod(0o755)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if "--grid" not in args:
        args += ["--grid", grid_file]
    if "--method" not in args:  # the two exclude each other
        args = ["--local", *args]
    done = run_plan(*args, "--python", fake, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("plan.py: error:")]
    assert len(errors) == 1 and message.replace("{tmp}", str(tmp_path)) in errors[0], done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ran").exists()
