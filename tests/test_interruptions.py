"""An interrupted run stops after a complete checkpoint, says so in one line, leaves no staged
(`.tmp`) checkpoint, and resumes where it stopped: SIGINT (Ctrl-C), SIGTERM (scancel) and SIGUSR1
(SLURM's warning before preemption), through the real command line."""
import csv
import signal
import subprocess
import sys
import time

import pytest

from bidir.checkpoint import find as find_checkpoint
from bidir.train import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow  # each case trains, is signalled and resumes in new interpreters


def command(output_dir, iterations):
    return [sys.executable, "-m", "bidir.train", f"rl_script_args.output_dir={output_dir}",
            "rl_script_args.method=student", f"rl_script_args.iterations={iterations}", "rl_script_args.n_envs=2",
            "rl_script_args.steps_per_iteration=16", "rl_script_args.eval_episodes=0", "rl_script_args.eval_every=0", "wandb.mode=disabled"]


def iterations_logged(output_dir):
    try:
        with open(output_dir / "metrics.csv") as f:
            return [int(row["iteration"]) for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("signum, exit_code", [
    (signal.SIGINT, INTERRUPTED_EXIT_CODE),
    (signal.SIGTERM, PREEMPTED_EXIT_CODE),
    (signal.SIGUSR1, PREEMPTED_EXIT_CODE),
])
def test_a_signal_stops_after_a_checkpoint_and_the_run_resumes(tmp_path, signum, exit_code):
    out = tmp_path / "run"
    process = subprocess.Popen(command(out, 100_000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(iterations_logged(out)) < 2 and time.monotonic() < deadline:  # well inside the loop
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("bidir: stopped")]
    name = signal.Signals(signum).name
    assert len(stopped) == 1 and f"stopped by {name}" in stopped[0] and "rerun the same command" in stopped[0]
    assert not list((out / "checkpoints").glob("*.tmp"))
    done = iterations_logged(out)
    assert done == list(range(1, len(done) + 1)) and find_checkpoint(out).name == f"iter_{len(done):06d}"

    resumed = subprocess.run(command(out, len(done) + 1), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert iterations_logged(out) == list(range(1, len(done) + 2))


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(command(out, 100_000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(iterations_logged(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the first one handled: the second interrupts the iteration under way, or the exit
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED_EXIT_CODE and "Traceback" not in stderr, stderr
    assert not list((out / "checkpoints").glob("*.tmp"))
    assert find_checkpoint(out) is not None
