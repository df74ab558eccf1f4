"""Bad input is reported in one clear line, before any heavy work, with exit code 2, and leaves the
output directory exactly as it was (absent stays absent, a run stays untouched). Every case goes
through the command line's entry point, in this process (tests/entry.py); the cases that need a
new interpreter (another environment, the installed script's own exit) start one."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entry import run_main

TINY = ["rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=16", "rl_script_args.eval_episodes=0",
        "rl_script_args.eval_every=0", "wandb.mode=disabled"]


def run(*command):
    """`python -m command...` through its entry point in this process: (result, seconds)."""
    started = time.monotonic()
    result = run_main(*command)
    return result, time.monotonic() - started


def run_in_new_interpreter(*command, env=None):
    """`python -m command...` in a new interpreter (its environment `env`): (result, seconds)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=120, env=env)
    return result, time.monotonic() - started


def run_train(output_dir, *overrides):
    return run("bidir.train", f"rl_script_args.output_dir={output_dir}", *TINY, *overrides)


def snapshot(directory):
    """Every file under `directory` with its size, modification time and content; None if absent."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_error_line(result, message, prefix="bidir: error:"):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    return error_lines[0]


@pytest.mark.parametrize("override, message", [
    ("rl_script_args.method=bidr", "rl_script_args.method: unknown method 'bidr'; choose one of: bidir, t2s, glam, "
                                   "student"),
    ("rl_script_args.env_id=BabyAI-GoToRedBallNoDist-v0",
     "rl_script_args.env_id: Unknown env_id 'BabyAI-GoToRedBallNoDist-v0'; closest: BabyAI-GoToRedBallNoDists-v0"),
    ("rl_script_args.n_envs=0", "rl_script_args.n_envs must be >= 1, got 0"),
    ("rl_script_args.n_envs=abc", "rl_script_args.n_envs must be an integer (default: 8), got 'abc'"),
    ("rl_script_args.iterations=abc", "rl_script_args.iterations must be an integer (default: 40), got 'abc'"),
    ("rl_script_args.iterations=2.5", "rl_script_args.iterations must be an integer (default: 40), got 2.5"),
    ("rl_script_args.iterations=-1", "rl_script_args.iterations must be >= 0, got -1"),
    ("rl_script_args.steps_per_iteration=15",
     "rl_script_args.steps_per_iteration (15) must be a multiple of rl_script_args.n_envs (2)"),
    ("rl_script_args.student_lr=fast", "rl_script_args.student_lr must be a number (default: 0.001), got 'fast'"),
    ("rl_script_args.message_dropout=true", "rl_script_args.message_dropout must be a number"),
    ("rl_script_args.gamma=1.5", "rl_script_args.gamma must be in [0.0, 1.0], got 1.5"),
    ("rl_script_args.teacher_normalize_advantages=1", "rl_script_args.teacher_normalize_advantages must be true or false"),
    ("rl_script_args.method=1", "rl_script_args.method must be a string (default: 'bidir'), got 1"),
    ("rl_script_args.instructions=turn left", "rl_script_args.instructions must be a list"),
    ("rl_script_args.instructions=[]", "rl_script_args.instructions is empty"),
    ("rl_script_args.instructions=[turn left,jump]", "rl_script_args.instructions: Instruction(s) ['jump'] map to "
                                                     "no minigrid action; valid instructions: turn left"),
    ("lamorel_args.llm_configs.main_llm.model_path=/tmp/does/not/exist",
     "lamorel_args.llm_configs.main_llm.model_path: model path '/tmp/does/not/exist' does not exist"),
    ("lamorel_args.llm_configs.main_llm.model_path=google/flan-t5-small", "model_path=tiny-t5-bc"),
    ("setting=paper", "model_path=tiny-t5-bc"),  # flan-t5-small, and no hub here
    ("rl_script_args.student_lr=nan", "rl_script_args.student_lr must be a finite number, got nan"),
    ("rl_script_args.reward_scale=inf", "rl_script_args.reward_scale must be a finite number, got inf"),
    ("rl_script_args.teacher_lr=-0.001", "rl_script_args.teacher_lr must be >= 0.0, got -0.001"),
    ("wandb.mode=sometimes", "wandb.mode must be one of offline, online, disabled, got 'sometimes'"),
    ("rl_script_args.prompt_format=glm", "rl_script_args.prompt_format must be one of bidir, glam, chat, got 'glm'"),
    ("lamorel_args.llm_configs.main_llm.candidate_scoring=median",
     "lamorel_args.llm_configs.main_llm.candidate_scoring must be one of sum, mean, got 'median'"),
    ("rl_script_args.prompt_format=chat", "rl_script_args.prompt_format=chat: prompt_format chat needs a model whose "
                                          "tokenizer has a chat template"),
    ("method=glam", "unknown key 'method'; did you mean rl_script_args.method=glam?"),
    ("rl_script_args.iteration=3", "unknown key 'rl_script_args.iteration'; did you mean rl_script_args.iterations=3?"),
])
def test_bad_input_fails_fast_with_one_line_and_creates_nothing(tmp_path, override, message):
    result, seconds = run_train(tmp_path / "run", override)
    assert_one_error_line(result, message)
    assert seconds < 60
    assert not (tmp_path / "run").exists()


def test_the_installed_command_exits_2_with_one_line_and_creates_nothing(tmp_path):
    """The console script itself, in a new interpreter: the exit code and the line reach the shell."""
    script = Path(sys.executable).parent / "bidir-train"
    result = subprocess.run([str(script), f"rl_script_args.output_dir={tmp_path / 'run'}", *TINY,
                             "rl_script_args.n_envs=0"], capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, "rl_script_args.n_envs must be >= 1, got 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # 7 s: a new interpreter
def test_wandb_online_without_credentials(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb"), NETRC=str(home / "netrc"))
    result, seconds = run_in_new_interpreter("bidir.train", f"rl_script_args.output_dir={tmp_path / 'run'}", *TINY,
                                             "wandb.mode=online", env=env)
    assert_one_error_line(result, "run `wandb login` or set WANDB_API_KEY, or log offline with wandb.mode=offline")
    assert seconds < 60 and not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result, _ = run_train(locked / "run")
    assert_one_error_line(result, "not writable")


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result, _ = run_train(target)
    assert_one_error_line(result, f"output_dir {target} is not writable: {target} is not a directory")
    assert target.read_text() == ""


@pytest.mark.parametrize("override, message", [
    ("rl_script_args.no_such_key=1", "no_such_key"),
    ("rl_script_args.iterations=[1", "'[1'"),
])
def test_a_config_hydra_cannot_compose_exits_2(tmp_path, override, message):
    result, _ = run_train(tmp_path / "run", override)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A finished one-iteration `student` run (seed 1) with its checkpoint."""
    out = tmp_path_factory.mktemp("resume") / "run"
    result, _ = run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=1")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("override, difference", [
    ("rl_script_args.method=glam", "rl_script_args.method ('student' there, 'glam' here)"),
    ("rl_script_args.env_id=BabyAI-GoToLocal-v0",
     "rl_script_args.env_id ('BabyAI-GoToRedBallNoDists-v0' there, 'BabyAI-GoToLocal-v0' here)"),
    ("rl_script_args.seed=2", "rl_script_args.seed (1 there, 2 here)"),
    ("rl_script_args.n_envs=4", "rl_script_args.n_envs (2 there, 4 here)"),
    ("rl_script_args.steps_per_iteration=32", "rl_script_args.steps_per_iteration (16 there, 32 here)"),
    ("lamorel_args.llm_configs.main_llm.model_path=tiny-t5", "lamorel_args.llm_configs.main_llm.model_path"),
    ("rl_script_args.iterations=abc", "rl_script_args.iterations must be an integer"),
])
def test_resuming_with_another_configuration_is_refused(student_run, override, difference):
    before = snapshot(student_run)
    result, _ = run_train(student_run, "rl_script_args.method=student", "rl_script_args.iterations=2", override)
    line = assert_one_error_line(result, difference)
    if "there" in difference:
        assert line.count(" there, ") == 1, line  # names each differing key, and only those
        assert f"Resume it with its own values ({student_run / 'config.yaml'})" in line
    assert snapshot(student_run) == before


def test_a_changed_budget_or_presentation_key_resumes(tmp_path):
    out = tmp_path / "run"
    assert run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=1")[0].returncode == 0
    result, _ = run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=2",
                          "rl_script_args.keep_checkpoints=1", "wandb.project=elsewhere")
    assert result.returncode == 0, result.stderr
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_a_run_made_before_a_key_existed_resumes_at_its_default(student_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(student_run, out)
    saved = (out / "config.yaml").read_text()
    assert "  prompt_format: bidir\n" in saved
    (out / "config.yaml").write_text(saved.replace("  prompt_format: bidir\n", ""))
    result, _ = run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=2",
                          "rl_script_args.prompt_format=glam")
    assert_one_error_line(result, "rl_script_args.prompt_format ('bidir' there, 'glam' here)")
    result, _ = run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=2")
    assert result.returncode == 0, result.stderr


def test_resuming_a_run_whose_config_no_longer_parses_is_refused(student_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(student_run, out)
    (out / "config.yaml").write_text("rl_script_args: [unclosed\n")
    before = snapshot(out)
    result, _ = run_train(out, "rl_script_args.method=student", "rl_script_args.iterations=2")
    assert_one_error_line(result, f"cannot resume {out}: its config.yaml does not parse")
    assert snapshot(out) == before


def test_help_documents_every_key_and_lists_the_methods():
    result, _ = run("bidir.train", "--help")
    assert result.returncode == 0, result.stderr
    assert "glam" in result.stdout and "the RL student alone" in result.stdout
    assert "teacher_share_start: 1.0    # eps_0" in result.stdout  # config.yaml's own documentation


def test_bidir_teacher_bad_input(tmp_path):
    result, _ = run("bidir.teacher_cli", "pretrain", "--output", str(tmp_path / "out"), "--levels", "BabyAI-Nope-v0")
    assert_one_error_line(result, "--levels: unknown BabyAI level 'BabyAI-Nope-v0'", prefix="bidir-teacher: error:")
    result, _ = run("bidir.teacher_cli", "pretrain", "--output", str(tmp_path / "out"), "--epochs", "0")
    assert result.returncode == 2 and "expected a positive integer, got 0" in result.stderr
    result, _ = run("bidir.teacher_cli", "build")
    assert_one_error_line(result, "build: --output is required (or --list)", prefix="bidir-teacher: error:")
    assert not (tmp_path / "out").exists()


def test_bidir_eval_bad_input_and_default_output(student_run, tmp_path):
    before = snapshot(student_run)
    result, _ = run("bidir.evaluate", str(student_run), "--episodes", "0")
    assert_one_error_line(result, "--episodes: expected a positive integer, got 0", prefix="bidir-eval: error:")
    assert snapshot(student_run) == before
    result, _ = run("bidir.evaluate", str(tmp_path / "none"))
    assert_one_error_line(result, "not a bidir run directory", prefix="bidir-eval: error:")
    result, _ = run("bidir.evaluate", str(student_run), "--seed", "-1")
    assert result.returncode == 2 and "--seed: expected an integer >= 0, got -1" in result.stderr
    result, _ = run("bidir.evaluate", str(student_run), "--json", str(tmp_path / "no" / "dir.json"))
    assert_one_error_line(result, "is not a directory", prefix="bidir-eval: error:")
    assert snapshot(student_run) == before
    # a re-evaluation never replaces the run's own held-out result (what bidir-compare reports)
    result, _ = run("bidir.evaluate", str(student_run), "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert f"written to {student_run / 'eval_iter_000001_seed0.json'}" in result.stdout
    assert {k: v for k, v in snapshot(student_run).items() if k != "eval_iter_000001_seed0.json"} == before


def test_bidir_eval_and_trace_refuse_a_damaged_run_and_an_unusable_output(student_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(student_run, out)
    saved = out / "config.yaml"
    saved.write_text(saved.read_text().replace("  seed: 1\n", "  seed: abc\n"))
    result, _ = run("bidir.evaluate", str(out))
    assert result.stderr == (f"bidir-eval: error: {saved}: rl_script_args.seed must be an integer (default: 1), "
                             f"got 'abc'; restore it from a copy\n")
    shutil.copy(student_run / "config.yaml", saved)
    newest = out / "checkpoints" / "iter_000001"
    trainer = newest / "trainer.pt"
    size = trainer.stat().st_size
    trainer.write_bytes(trainer.read_bytes()[:size // 2])
    before = snapshot(out)
    for command, prog in (("bidir.evaluate", "bidir-eval"), ("bidir.trace", "bidir-trace")):
        result, _ = run(command, str(newest))
        assert result.returncode == 2 and result.stderr == (
            f"{prog}: error: {newest} is not a complete checkpoint: trainer.pt has {size // 2} bytes, not the {size} "
            f"written; give the run directory {out} to use its newest complete checkpoint\n")
        result, _ = run(command, str(out))
        assert result.returncode == 2 and result.stderr == (
            f"{prog}: error: {out} has no complete checkpoint (iter_000001: trainer.pt has {size // 2} bytes, not "
            f"the {size} written); restore one from a copy\n")
    assert snapshot(out) == before
    (tmp_path / "trace.gif").mkdir()
    result, _ = run("bidir.trace", str(student_run), "--out", str(tmp_path / "trace"))
    assert result.returncode == 2 and result.stderr == (f"bidir-trace: error: --out {tmp_path / 'trace'}: "
                                                        f"{tmp_path / 'trace.gif'} is a directory; choose another --out\n")
    assert not (tmp_path / "trace.txt").exists()


@pytest.mark.slow  # 6 s: a new interpreter
def test_prompting_with_an_unknown_level_creates_nothing(tmp_path):
    result = subprocess.run([sys.executable, "experiments/prompting.py", "--env-id", "BabyAI-Nope-v0", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert_one_error_line(result, "--env-id: Unknown env_id 'BabyAI-Nope-v0'", prefix="prompting.py: error:")
    assert not (tmp_path / "out").exists()
