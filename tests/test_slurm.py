"""The SLURM scripts on a real one-node cluster (.ci/slurm-up.sh): short CPU runs complete,
and a run preempted the way SLURM warns before a time limit (SIGUSR1 to the batch shell)
checkpoints, requeues itself and resumes with every iteration logged exactly once.

Time limits count a job's own running time, from the StartTime SLURM reports: how long a job pends
(a requeued job's hold, CPUs that other jobs hold) depends on SLURM and the machine's load, not on
the scripts, so it is waited out on what SLURM reports (wait_started).

Needs the cluster: `.ci/slurm-up.sh` (CI starts it); skipped when `sinfo` fails.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SLURM_CONF", "/tmp/bidir-slurm/slurm.conf")

# A small real run: offline teacher, CPU, 2 envs, 64 frames per iteration.
SMALL_RUN = ["rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=64",
             "rl_script_args.eval_episodes=0", "rl_script_args.eval_every=0", "wandb.mode=disabled"]


def _cluster_up() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo not installed"
    if not Path(os.environ["SLURM_CONF"]).exists():
        return f"no {os.environ['SLURM_CONF']}"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0:
        return out.stderr.strip()
    return None


_why_not = _cluster_up()
if _why_not:
    pytest.skip(f"no SLURM cluster ({_why_not}); start one with .ci/slurm-up.sh",
                allow_module_level=True)


def _jobcomp_log() -> Path | None:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    match = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)
    return Path(match.group(1)) if match else None


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE"}
# A pending job that SLURM could start (eligible, nothing else running) starts at its next
# scheduling pass (sched_interval=2); STUCK_S of that means it never will.
STUCK_S = 30


def job_info(job_id: str) -> dict:
    """JobState, Restarts, Reason, times..., from scontrol while SLURM remembers the job
    (MinJobAge), then from the job completion log (there is no slurmdbd, hence no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True)
    if out.returncode == 0 and "JobState=" in out.stdout:
        return dict(re.findall(r"\b(JobState|Restarts|ExitCode|Reason|EligibleTime|StartTime)=(\S+)",
                               out.stdout))
    log = _jobcomp_log()
    lines = [line for line in log.read_text().splitlines()
             if f"JobId={job_id} " in line] if log and log.exists() else []
    return dict(re.findall(r"(JobState|ExitCode)=(\S+)", lines[-1])) if lines else {}


def _seconds(slurm_time: str | None) -> float | None:
    """A time scontrol printed (local, 2026-12-03T18:49:37) as time.time() counts it; None if unset."""
    try:
        return datetime.fromisoformat(slurm_time).timestamp()
    except (TypeError, ValueError):  # None, "Unknown", "None", "N/A"
        return None


def _cluster_idle() -> bool:
    """No CPU of the cluster is allocated (sinfo %C: allocated/idle/other/total)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True).stdout
    return out.strip().startswith("0/")


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    """predicate()'s first true value, asked every 0.25 s; fails after timeout s with the log's tail."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):  # asked at least once, even when the time is up
        if time.monotonic() >= deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.25)
    return value


def wait_started(job_id: str, log: Path) -> dict:
    """Waits until SLURM runs the job (or has run it: it ended); returns job_info.

    No fixed budget: how long a job pends is SLURM's doing, not the scripts', e.g. a requeued job's
    hold (EligibleTime, cred_expire after the requeue) and then the CPUs that other jobs hold, up
    to their --time at most. Fails when the cluster stays idle for STUCK_S after the job's
    EligibleTime and SLURM still does not start it (held, or never rescheduled)."""
    stuck_since = None
    while True:
        info = job_info(job_id)
        if info.get("JobState") == "RUNNING" or info.get("JobState") in FINAL:
            return info
        eligible = _seconds(info.get("EligibleTime")) or 0  # Unknown: no hold in time
        if eligible <= time.time() and _cluster_idle():
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > STUCK_S:
                raise AssertionError(f"job {job_id} not started by SLURM although the cluster is idle "
                                     f"(for {STUCK_S}s past its EligibleTime): {info}\n"
                                     f"{log.read_text()[-3000:] if log.exists() else ''}")
        else:
            stuck_since = None
        time.sleep(0.25)


def submit(script: str, out_log: Path, overrides=(), sbatch_args=(), **env) -> str:
    environment = {**os.environ, "PYTHON": sys.executable, "BIDIR_ROOT": str(REPO),
                   **{k: str(v) for k, v in env.items()}}
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={out_log}", "--time=00:10:00",
         *sbatch_args, str(REPO / "slurm" / script), *overrides],
        cwd=REPO, env=environment, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def _left(info: dict, run_s: float) -> float:
    """Seconds left of run_s counted from the job's StartTime (its latest start, after a requeue)."""
    return (_seconds(info.get("StartTime")) or time.time()) + run_s - time.time()


def wait_ended(job_id: str, run_s: float, log: Path) -> dict:
    """Waits until the job has ended and returns job_info; run_s bounds the job's running time
    only: it counts from the StartTime SLURM reports, not from when the job was queued."""
    info = wait_started(job_id, log)
    if info.get("JobState") in FINAL:
        return info
    return wait_for(lambda: (i := job_info(job_id)).get("JobState") in FINAL and i, _left(info, run_s),
                    f"job {job_id} to finish (started {info.get('StartTime')}, {run_s}s allowed)", log)


def wait_done(job_id: str, run_s: float, log: Path) -> dict:
    """wait_ended, and the job COMPLETED."""
    info = wait_ended(job_id, run_s, log)
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{log.read_text()[-3000:]}"
    return info


def metrics(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Submit every job at once so that they share the cluster's CPUs; the preempted run
    goes first, so that it starts at once."""
    root = tmp_path_factory.mktemp("slurm-runs")
    submitted = {}
    specs = {
        # Long enough (iterations take ~0.2 s) that the signal lands mid-run.
        "preempted": dict(METHOD="student", ITERATIONS=40, SEED=1),
        "student": dict(METHOD="student", ITERATIONS=3, SEED=2),
        "bidir": dict(METHOD="bidir", ITERATIONS=3, SEED=1),
    }
    for name, spec in specs.items():
        log = root / f"{name}.out"
        job_id = submit("train_cpu.sbatch", log, SMALL_RUN, OUTPUT_ROOT=root, EXPERIMENT="ci",
                        SETTING="offline", **spec)
        output_dir = root / "ci" / spec["METHOD"] / f"seed{spec['SEED']}"
        submitted[name] = dict(spec, job_id=job_id, log=log, output_dir=output_dir)

    # The grid as an array (slurm/array.sbatch + experiments/plan.py), on a two-task grid.
    grid = dict(name="ci-grid", methods=["t2s", "student"], seeds=[3], budgets={"tiny": 2},
                output_root=str(root), setting="offline", launcher="python", overrides=SMALL_RUN)
    grid_file = root / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    array_id = submit("array.sbatch", root / "array-%a.out", sbatch_args=["--array=0-1"],
                      GRID=grid_file, BUDGET="tiny")
    submitted["array"] = dict(job_id=array_id, grid=grid, root=root)
    yield submitted
    for job in submitted.values():
        subprocess.run(["scancel", job["job_id"]], capture_output=True)


def assert_every_iteration_once(rows: list[dict], iterations: int):
    assert [int(r["iteration"]) for r in rows] == list(range(1, iterations + 1))
    frames = [int(float(r["frames"])) for r in rows]
    assert all(a < b for a, b in zip(frames, frames[1:])), frames
    for column in ("success_rate", "return_mean", "episode_length_mean", "wall_time_s"):
        assert column in rows[0]


def preempt_and_resume(job: dict, started_s: int, requeued_s: int, done_s: int) -> str:
    """Sends a running job what SLURM sends before its time limit (--signal=B:USR1), waits for the
    requeue and the end, checks that the rerun resumed from the checkpoint and that every iteration
    ran exactly once; returns the job's log."""
    job_id, log, output_dir = job["job_id"], job["log"], job["output_dir"]
    info = wait_started(job_id, log)
    wait_for(lambda: len(metrics(output_dir)) >= 2, _left(info, started_s),
             f"two iterations logged (job {job_id} started {info.get('StartTime')}, {started_s}s allowed)", log)
    assert job_info(job_id).get("JobState") == "RUNNING"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)

    def requeued():
        info = job_info(job_id)
        if int(info.get("Restarts", 0)) >= 1:
            return True
        assert info.get("JobState") not in FINAL, f"job {job_id} ended without a requeue: {info}"

    wait_for(requeued, requeued_s, f"job {job_id} to be requeued", log)
    stopped_at = len(metrics(output_dir))
    assert stopped_at < job["ITERATIONS"], "the run finished before the signal; make it longer"
    # done_s counts from the restart: SLURM's hold on the requeued job and the CPUs other jobs
    # hold meanwhile are waited out by wait_started, on what scontrol reports.
    wait_done(job_id, done_s, log)

    assert_every_iteration_once(metrics(output_dir), job["ITERATIONS"])
    text = log.read_text()
    # The rerun went on from the checkpoint; one that trained again from iteration 1 would log
    # every iteration once too (a fresh run rewrites metrics.csv).
    assert re.search(rf"resuming from \S+ \(iteration {stopped_at}\)", text), \
        f"job {job_id}'s rerun did not resume from iteration {stopped_at}'s checkpoint:\n{text[-3000:]}"
    return text


def test_preempted_run_requeues_and_resumes(jobs):
    text = preempt_and_resume(jobs["preempted"], 150, 60, 180)
    assert "command exited with 3" in text  # bidir.train.PREEMPTED_EXIT_CODE
    assert "requeueing job" in text
    assert "restart 1" in text  # the same job id ran again (--open-mode=append keeps both)


@pytest.mark.parametrize("name", ["student", "bidir"])
def test_short_cpu_run_completes(jobs, name):
    job = jobs[name]
    info = wait_done(job["job_id"], 200, job["log"])
    assert info.get("Restarts", "0") == "0"
    assert_every_iteration_once(metrics(job["output_dir"]), job["ITERATIONS"])


def test_array_runs_the_plans_commands(jobs):
    job, grid = jobs["array"], jobs["array"]["grid"]
    for task, method in enumerate(grid["methods"]):
        log = job["root"] / f"array-{task}.out"
        wait_done(f"{job['job_id']}_{task}", 200, log)
        assert f"--task-id {task} --budget tiny" in log.read_text()
        output_dir = job["root"] / "ci-grid-tiny" / method / "seed3"
        assert_every_iteration_once(metrics(output_dir), grid["budgets"]["tiny"])


def test_finished_run_submitted_again_changes_nothing(jobs):
    # A requeue that arrives after the last iteration, or a user resubmitting a grid, must not
    # train further or duplicate rows.
    job = jobs["student"]
    wait_done(job["job_id"], 200, job["log"])
    before = (job["output_dir"] / "metrics.csv").read_bytes()
    log = job["log"].with_name("student-again.out")
    job_id = submit("train_cpu.sbatch", log, SMALL_RUN, OUTPUT_ROOT=job["output_dir"].parents[2],
                    EXPERIMENT="ci", SETTING="offline", METHOD="student", ITERATIONS=3, SEED=2)
    wait_done(job_id, 120, log)
    assert (job["output_dir"] / "metrics.csv").read_bytes() == before


# slurm/train_multinode.sbatch on CPU: each of 2 tasks (the cluster's 2 CPUs) is one process of
# Lamorel's multinode setup, the RL process or the LLM server (--gpus-per-task=0: on the CPU).
MULTINODE_RUN = [*SMALL_RUN, "rl_script_args.steps_per_iteration=32",
                 "lamorel_args.llm_configs.main_llm.model_path=tiny-t5"]
MULTINODE_CPU = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-task=0"]


@pytest.fixture(scope="module")
def multinode_jobs(tmp_path_factory):
    """Both multinode jobs at once, the preempted one first."""
    pytest.importorskip("lamorel", reason="Lamorel v0.3 is not installed (pip install -e '.[lamorel]')")
    root = tmp_path_factory.mktemp("slurm-multinode")
    submitted = {}
    for name, spec in [("preempted", dict(ITERATIONS=40, SEED=1)), ("complete", dict(ITERATIONS=2, SEED=2))]:
        log = root / f"{name}.out"
        job_id = submit("train_multinode.sbatch", log, MULTINODE_RUN, MULTINODE_CPU,
                        OUTPUT_ROOT=root, EXPERIMENT="ci", SETTING="offline", METHOD="bidir", **spec)
        submitted[name] = dict(spec, job_id=job_id, log=log,
                               output_dir=root / "ci" / "bidir" / f"seed{spec['SEED']}")
    yield submitted
    for job in submitted.values():
        subprocess.run(["scancel", job["job_id"]], capture_output=True)


def test_preempted_multinode_run_requeues_and_resumes(multinode_jobs):
    job = multinode_jobs["preempted"]
    text = preempt_and_resume(job, 300, 120, 400)
    assert "requeueing job" in text and "restart 1" in text
    # the rerun joins a fresh rendezvous
    assert f"--rdzv-id={int(job['job_id']) * 1000 + 1} " in text


def test_multinode_run_on_cpu_completes(multinode_jobs):
    job = multinode_jobs["complete"]
    info = wait_done(job["job_id"], 400, job["log"])
    assert info.get("Restarts", "0") == "0"
    assert_every_iteration_once(metrics(job["output_dir"]), job["ITERATIONS"])
    text = job["log"].read_text()
    # the LLM server on the CPU, and an integer rendezvous id (Lamorel's experiment_id)
    assert "main_llm.devices_per_process=[cpu]" in text
    assert f"--rdzv-id={int(job['job_id']) * 1000} " in text


# Bad input to each script: the job exits with 2 and one `<script>: error:` line naming the problem and
# the fix (plan.py's own line for the values it checks), no traceback, no run directory. Each case:
# (script, environment, sbatch arguments (None: the script's usual ones here), the error line).
MULTINODE_CPU_ONE_TASK = ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-task=0"]
SCRIPT_ARGS = {"array.sbatch": ["--array=0"], "train_cpu.sbatch": [],
               "train_gpu.sbatch": ["--gres=none", "--cpus-per-task=1"], "train_multinode.sbatch": MULTINODE_CPU}
BAD_JOBS = {
    **{f"{script}, BIDIR_ROOT not a checkout": (
        script, dict(BIDIR_ROOT="{tmp}"), None,
        f"{script}: error: BIDIR_ROOT={{tmp}} is not a bidir checkout; submit from the repository root or set "
        "BIDIR_ROOT") for script in SCRIPT_ARGS},
    **{f"{script}, PYTHON missing": (
        script, dict(PYTHON="{tmp}/python"), None,
        f"{script}: error: PYTHON={{tmp}}/python cannot import bidir (") for script in SCRIPT_ARGS},
    "train_cpu.sbatch, METHOD unknown": ("train_cpu.sbatch", dict(METHOD="bidr"), None,
                                         "plan.py: error: argument --method: invalid choice: 'bidr'"),
    "array.sbatch, not an array": ("array.sbatch", {}, [],
                                   "array.sbatch: error: no array task id: submit with sbatch --array=0-N"),
    "array.sbatch, BUDGET unknown": ("array.sbatch", dict(BUDGET="medium"), None,
                                     "plan.py: error: --budget medium: the grid's budgets are short, long"),
    "train_gpu.sbatch, N_LLM_SERVERS=0": ("train_gpu.sbatch", dict(N_LLM_SERVERS=0), None,
                                          "train_gpu.sbatch: error: N_LLM_SERVERS=0 must be a number of LLM "
                                          "servers, 1 or more (on the CPU), or unset: one server per GPU"),
    "train_multinode.sbatch, one task": ("train_multinode.sbatch", {}, MULTINODE_CPU_ONE_TASK,
                                         "train_multinode.sbatch: error: a multinode run needs 2 or more SLURM "
                                         "tasks (the RL process and the LLM servers), got 1"),
    "train_multinode.sbatch, MASTER_PORT": ("train_multinode.sbatch", dict(MASTER_PORT="http"), None,
                                            "train_multinode.sbatch: error: MASTER_PORT=http must be a port"),
    "train_multinode.sbatch, METHOD unknown": ("train_multinode.sbatch", dict(METHOD="bidr"), None,
                                               "plan.py: error: argument --method: invalid choice: 'bidr'"),
    "train_multinode.sbatch, unknown key": ("train_multinode.sbatch", {}, None,
                                            "plan.py: error: unknown key 'rl_script_args.teacher_lrr'; did you mean "
                                            "rl_script_args.teacher_lr=1?"),
}
BAD_OVERRIDES = {"train_multinode.sbatch, unknown key": ["rl_script_args.teacher_lrr=1"]}
"""Hydra overrides after the script's name: checked once, not once per task."""


@pytest.fixture(scope="module")
def bad_jobs(tmp_path_factory):
    """Every bad-input job at once (each ends within seconds)."""
    root = tmp_path_factory.mktemp("slurm-bad-input")
    submitted = {}
    for i, (case, (script, env, sbatch_args, _)) in enumerate(BAD_JOBS.items()):
        env = {key: str(value).replace("{tmp}", str(root)) for key, value in env.items()}
        log = root / f"{i}.out"
        job_id = submit(script, log, overrides=BAD_OVERRIDES.get(case, ()),
                        sbatch_args=SCRIPT_ARGS[script] if sbatch_args is None else sbatch_args,
                        OUTPUT_ROOT=root / "runs", SETTING="offline", **env)
        submitted[case] = dict(job_id=job_id, log=log, root=root)
    yield submitted
    for job in submitted.values():
        subprocess.run(["scancel", job["job_id"]], capture_output=True)


@pytest.mark.parametrize("case", BAD_JOBS)
def test_bad_input_fails_the_job_with_exit_2_and_one_line(bad_jobs, case):
    job, message = bad_jobs[case], BAD_JOBS[case][3].replace("{tmp}", str(bad_jobs[case]["root"]))
    info = wait_ended(job["job_id"], 200, job["log"])
    text = job["log"].read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"].startswith("2:"), f"{info}\n{text}"
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(message), text
    assert "Traceback" not in text and not (job["root"] / "runs").exists()
