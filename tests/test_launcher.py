"""bidir.train under lamorel_launcher (Lamorel v0.3, CPU servers): every method trains, Lamorel and
LocalCaller agree, and a dead LLM server ends the run instead of hanging it.

Every run is started at once by the `runs` fixture (each in its own tmp cwd, with timeouts) and the
tests wait on the ones they need, so the file costs about as much as its slowest run.

Agreement (measured on 2 CPU cores, torch 2.13, tiny-t5, 2 iterations x 32 frames):
- counts and episode statistics (frames, episodes, success, returns, lengths, LLM contexts,
  agreement rate) are identical: the same instructions and actions are sampled;
- float metrics differ by at most 2.7e-7 (1 server) and 2.3e-7 (2 servers): float32 rounding.
  LocalCaller encodes a context once for all its candidates where Lamorel re-encodes it per
  candidate (other batch shapes, other GEMM summation orders), and with 2 servers DDP averages two
  half-batch gradients instead of summing one batch. We assert 2e-6 + 1e-6 * |x|, about 10x the
  measured gap, tight enough to catch any semantic difference (a wrong token, pad or minibatch
  moves a metric by >= 1e-3);
- with 2 servers this holds only when the teacher's PPO uses one minibatch per epoch
  (teacher_minibatch_size >= transitions, here 32): Lamorel hands each server a contiguous half of
  the rows and each server splits its half into the same number of minibatches, so with M > 1
  minibatches the optimizer steps see other row subsets than on one server (a 4e-2 gap in
  teacher_entropy after 2 iterations with teacher_minibatch_size=16): statistically the same
  PPO, numerically another run.
"""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lamorel", reason="Lamorel v0.3 is not installed (pip install -e '.[lamorel]')")

pytestmark = [pytest.mark.lamorel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bidir" / "train.py"
RUN_TIMEOUT_S = 300          # a whole 2-iteration run, all runs sharing the machine
DEATH_EXIT_BOUND_S = 120     # launcher exit after the LLM server is killed
TIMING = {"wall_time_s", "fps"}
EXACT = {"iteration", "frames", "success_rate", "return_mean", "episode_length_mean", "episodes",
         "llm_contexts", "agreement_rate", "message_shown", "distill_weight"}
ATOL, RTOL = 2e-6, 1e-6

SMALL = ["rl_script_args.iterations=2", "rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=32",
         "rl_script_args.seed=3", "lamorel_args.llm_configs.main_llm.model_path=tiny-t5", "wandb.mode=disabled",
         "rl_script_args.eval_episodes=0", "rl_script_args.eval_every=0"]
TWO_SERVERS = ["lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes=2",
               "lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=[cpu,cpu]"]
ONE_MINIBATCH = ["rl_script_args.teacher_minibatch_size=32"]  # = transitions per iteration (32 queries)

# name: (under the launcher?, overrides)
RUNS = {
    "bidir": (True, ["rl_script_args.method=bidir", "rl_script_args.eval_episodes=2", *ONE_MINIBATCH]),
    "bidir_2servers": (True, ["rl_script_args.method=bidir", *ONE_MINIBATCH, *TWO_SERVERS]),
    "t2s": (True, ["rl_script_args.method=t2s"]),
    "glam": (True, ["rl_script_args.method=glam", "rl_script_args.teacher_minibatch_size=16"]),
    # A resolved model path: with a built-in name (tiny-t5) the student run fails under the launcher,
    # since bidir.train resolves the name only when the method has a teacher, while the launcher
    # starts an LLM server anyway, which then asks the hub for "tiny-t5" (a bug in train.check_config).
    "student": (True, ["rl_script_args.method=student", "lamorel_args.llm_configs.main_llm.model_path={tiny_t5}"]),
    "bidir_local": (False, ["rl_script_args.method=bidir", "rl_script_args.eval_episodes=2", *ONE_MINIBATCH]),
    # long enough to outlive the kill; its LLM server is killed by test_llm_server_death_fails_the_launcher
    "doomed": (True, ["rl_script_args.method=bidir", "rl_script_args.iterations=1000",
                      "rl_script_args.teacher_minibatch_size=16"]),
}


def command(under_launcher: bool, overrides: list[str], output_dir: Path) -> list[str]:
    keys = {o.split("=", 1)[0] for o in overrides}
    args = [*(o for o in SMALL if o.split("=", 1)[0] not in keys), *overrides, f"rl_script_args.output_dir={output_dir}"]
    if under_launcher:
        return [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(REPO / "lamorel_configs"),
                "--config-name", "local_cpu", f"rl_script_args.path={TRAIN}", *args]
    return [sys.executable, "-m", "bidir.train", *args]


def children(pid: int) -> list[int]:
    """Every live descendant of pid (torchrun starts its workers in new sessions: no process group)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


class Run:
    """One training run in its own process; `output_dir` (default: its own) lets a run resume
    another's."""

    def __init__(self, name: str, under_launcher: bool, overrides: list[str], root: Path,
                 output_dir: Path | None = None):
        self.name, self.dir = name, root / name
        self.dir.mkdir()
        self.output_dir = output_dir or self.dir / "out"
        self.log_path = self.dir / "log.txt"
        # One torch thread per process, as torchrun gives its workers (LocalCaller included: with the
        # default thread count several runs on 2 cores spin against each other, 5x slower).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
        self.started = time.monotonic()
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(command(under_launcher, overrides, self.output_dir), cwd=self.dir, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, text=True)

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not finish within {timeout} s:\n{self.log()}")

    def rows(self) -> list[dict]:
        with (self.output_dir / "metrics.csv").open() as f:
            return list(csv.DictReader(f))

    def kill(self):
        """SIGKILL this run's processes, by pid (descendants first)."""
        for pid in reversed(children(self.proc.pid)) + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("launcher")
    from bidir.models import resolve_model_path
    tiny_t5 = resolve_model_path("tiny-t5")
    started = {name: Run(name, launcher, [o.format(tiny_t5=tiny_t5) for o in overrides], root)
               for name, (launcher, overrides) in RUNS.items()}
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.kill()


def finished(run: Run) -> list[dict]:
    code = run.wait()
    assert code == 0, f"{run.name} exited with {code}:\n{run.log()}"
    rows = run.rows()
    assert [int(r["iteration"]) for r in rows] == [1, 2], run.log()
    assert [int(r["frames"]) for r in rows] == [32, 64]
    return rows


def assert_agree(local: list[dict], lamorel: list[dict], rtol: float = RTOL) -> float:
    """Same columns and rows; EXACT columns equal, other non-timing floats within ATOL + rtol*|x|.
    Returns the largest absolute difference seen."""
    assert len(local) == len(lamorel)
    worst = 0.0
    for a, b in zip(local, lamorel):
        assert a.keys() == b.keys()
        for key in a:
            if key in TIMING or key.startswith("time_") or a[key] == b[key]:
                continue
            assert key not in EXACT, f"iteration {a['iteration']} {key}: {a[key]} (local) != {b[key]} (lamorel)"
            x, y = float(a[key]), float(b[key])  # '' (absent) on one side only would raise here
            assert not (math.isnan(x) or math.isnan(y)), f"{key}: {a[key]} vs {b[key]}"
            assert abs(x - y) <= ATOL + rtol * abs(y), f"iteration {a['iteration']} {key}: {x} vs {y}"
            worst = max(worst, abs(x - y))
    return worst


def test_llm_server_death_fails_the_launcher(runs):
    """Killing the LLM server (torchrun worker RANK=1) mid-run ends the launcher with a non-zero
    status and torchrun's failure report, within DEATH_EXIT_BOUND_S: the client's pending gloo call
    fails at once ('Connection reset/closed by peer') and torchrun stops the rest."""
    run = runs["doomed"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    metrics = run.output_dir / "metrics.csv"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # one iteration done
        assert run.proc.poll() is None, f"the run ended before the kill:\n{run.log()}"
        assert time.monotonic() < deadline, f"no iteration within {RUN_TIMEOUT_S} s:\n{run.log()}"
        time.sleep(0.5)
    workers = {int(environ(pid).get("RANK", -1)): pid for pid in children(run.proc.pid)
               if "LOCAL_RANK" in environ(pid)}
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        code = run.proc.wait(timeout=DEATH_EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        alive = [pid for pid in children(run.proc.pid)]
        run.kill()
        pytest.fail(f"launcher still running {DEATH_EXIT_BOUND_S} s after the LLM server died "
                    f"(live processes {alive}):\n{run.log()}")
    took = time.monotonic() - killed
    log = run.log(20000)
    assert code != 0, log
    assert "FAILED" in log and "ChildFailedError" in log, log
    assert "rank      : 1" in log and "SIGKILL" in log, log  # the root cause names the dead server
    print(f"launcher exited {code} {took:.1f} s after the LLM server was killed")


@pytest.mark.parametrize("name", ["bidir", "bidir_2servers", "t2s", "glam", "student"])
def test_method_trains_under_launcher(runs, name):
    rows = finished(runs[name])
    assert all(int(r["episodes"]) >= 0 for r in rows)
    teacher_learns = name.startswith("bidir") or name == "glam"
    assert all((r.get("teacher_policy_loss", "") != "") == teacher_learns for r in rows), rows
    assert all((int(r["llm_contexts"]) > 0) == (name != "student") for r in rows), rows
    if name == "bidir":
        assert (runs[name].output_dir / "eval.json").exists()


@pytest.mark.parametrize("name", ["bidir", "bidir_2servers"])
def test_lamorel_agrees_with_local_caller(runs, name):
    local = finished(runs["bidir_local"])
    worst = assert_agree(local, finished(runs[name]))
    print(f"{name}: largest difference from LocalCaller {worst:.2e}")
