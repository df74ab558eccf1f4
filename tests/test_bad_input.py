"""Bad input is reported in one clear line, before any heavy work, with exit code 2."""
import os
import subprocess
import sys
import time

import pytest


def run_train(tmp_path, *overrides):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bidir.train", f"rl_script_args.output_dir={tmp_path / 'run'}",
                             "wandb.mode=disabled", *overrides], capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


@pytest.mark.parametrize("override, message", [
    ("rl_script_args.method=bidr", "unknown method 'bidr'; choose one of: bidir, t2s, glam, student"),
    ("rl_script_args.env_id=BabyAI-GoToRedBallNoDist-v0", "BabyAI-GoToRedBallNoDists-v0"),
    ("rl_script_args.n_envs=0", "n_envs"),
    ("rl_script_args.instructions=[turn left,jump]", "jump"),
    ("lamorel_args.llm_configs.main_llm.model_path=/nonexistent/model", "/nonexistent/model"),
    ("lamorel_args.llm_configs.main_llm.model_path=google/flan-t5-small", "tiny-t5-bc"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, override, message):
    result, seconds = run_train(tmp_path, override)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("bidir: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert seconds < 60
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = subprocess.run([sys.executable, "-m", "bidir.train", f"rl_script_args.output_dir={locked / 'run'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not writable" in result.stderr


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result = subprocess.run([sys.executable, "-m", "bidir.train", f"rl_script_args.output_dir={target}",
                             "wandb.mode=disabled"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not writable" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("rl_script_args.no_such_key=1", "no_such_key"),
    ("rl_script_args.iterations=[1", "'[1'"),
    ("setting=nope", "Could not find 'setting/nope'"),
])
def test_a_config_hydra_cannot_compose_exits_2(tmp_path, override, message):
    result, _ = run_train(tmp_path, override)
    assert result.returncode == 2 and message in result.stderr, result.stderr
