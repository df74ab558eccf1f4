"""bidir-trace: one held-out episode, step by step, as text and as an animated picture."""
import numpy as np
import pytest
from PIL import Image

from bidir.evaluate import load_run, restore
from bidir.trace import main as trace_cli
from bidir.trace import trace_episode, trace_text
from bidir.train import train
from entry import run_main
from test_train import small_config


MIX = "BabyAI-GoToObj-v0+BabyAI-PickupDist-v0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace")
    for method in ("bidir", "student"):
        train(small_config(root / method, method, "rl_script_args.eval_episodes=0"))
    train(small_config(root / "mix", "student", "rl_script_args.eval_episodes=0", f"rl_script_args.env_id={MIX}"))
    return root


def traced(run_dir, mode, seed=0):
    config, saved = load_run(run_dir)
    student, teacher = restore(config, saved)
    return config, trace_episode(config, student, teacher, mode, seed, iteration=2)


def test_teacher_alone_executes_every_instruction_it_draws(runs):
    config, (mission, steps, frames, episode) = traced(runs / "bidir", "teacher_alone")
    assert mission.startswith("go to") and len(steps) == len(frames) == episode["length"]
    assert all(s.actor == "teacher" and s.action == s.instruction and s.student_value is None for s in steps)
    assert all(abs(sum(s.probs) - 1) < 0.01 and s.prompt.startswith("Goal of the agent") for s in steps)
    assert sum(s.reward for s in steps) == pytest.approx(episode["return"])
    assert all(s.critique is None for s in steps)


def test_critique_is_the_students_advantage_and_the_rows_are_the_teachers(runs):
    config, (_, steps, _, _) = traced(runs / "bidir", "student_with_teacher", seed=1)
    args = config.rl_script_args
    # every step is a query (teacher_every 1) where the student chose: GAE by hand, the episode ends
    expected, next_value, next_advantage = [], 0.0, 0.0
    for s in reversed(steps):
        delta = s.reward + args.gamma * next_value - s.student_value
        next_advantage = delta + args.gamma * args.lam * next_advantage
        next_value = s.student_value
        expected.append(next_advantage)
    expected = np.array(expected[::-1])
    assert all(s.actor == "student" and s.shown for s in steps)
    np.testing.assert_allclose([s.critique for s in steps], expected, rtol=1e-4, atol=1e-6)
    # the default critique: no PPO row where the student chose; imitation where A_S > 0, weighted
    # by A_S (the trace shows rows before normalisation)
    assert all(s.ppo is None for s in steps)
    imitated = [s.imitation if s.imitation is not None else 0.0 for s in steps]
    np.testing.assert_allclose(imitated, np.maximum(expected, 0), rtol=1e-4, atol=1e-6)
    text = trace_text(steps, ["header"], list(args.instructions))
    assert text.count("\nstep ") == len(steps)
    assert text.count("teacher row: imitates") == sum(s.critique > 0 for s in steps)


@pytest.mark.slow  # 5 s
def test_every_row_variant_shows_ppo_on_the_students_steps_with_their_weights(runs):
    config, saved = load_run(runs / "bidir")
    config.rl_script_args.teacher_ppo_rows = "all"
    student, teacher = restore(config, saved)
    _, steps, _, _ = trace_episode(config, student, teacher, "student_with_teacher", 1, iteration=2)
    assert all(s.ppo is not None and 0.0 < s.ppo[1] <= 1.0 for s in steps)
    # the student acts alone (eps 0): mu_T(a) = sum_i pi_T(i) pi_S(a | i), so the weight is min(1, pi_T(a) / mu_T(a))
    assert any(s.ppo[1] < 1.0 for s in steps)
    text = trace_text(steps, ["header"], list(config.rl_script_args.instructions))
    assert text.count("teacher row: PPO on") == len(steps)


@pytest.mark.slow  # 21 s: two runs traced
def test_with_the_gate_the_teacher_imitates_only_where_the_student_was_surer(runs):
    config, saved = load_run(runs / "bidir")
    student, teacher = restore(config, saved)
    surer = steps = 0
    for seed in (0, 1, 2):
        config.rl_script_args.critique_where_surer = False
        _, everywhere, _, _ = trace_episode(config, student, teacher, "student_with_teacher", seed, iteration=2)
        config.rl_script_args.critique_where_surer = True
        _, gated, _, _ = trace_episode(config, student, teacher, "student_with_teacher", seed, iteration=2)
        assert [s.action for s in gated] == [s.action for s in everywhere]  # the gate changes learning, not acting
        for s, t in zip(gated, everywhere):
            assert s.critique == t.critique
            assert s.imitation == (t.imitation if s.student_entropy < s.teacher_entropy else None)
        surer += sum(s.student_entropy < s.teacher_entropy and s.critique > 0 for s in gated)
        steps += sum(s.critique > 0 for s in gated)
    assert 0 < surer < steps  # these episodes hold imitated steps on both sides of the gate


@pytest.mark.slow  # 6 s
def test_training_mode_acts_as_the_run_at_its_checkpoint(runs):
    config, (_, steps, _, _) = traced(runs / "bidir", "training")
    # iteration 2 of 30: the teacher acts with eps = 1 - 2/30, the student sees half the messages
    assert {s.actor for s in steps} <= {"teacher", "student"} and any(s.actor == "teacher" for s in steps)
    _, (_, student_steps, _, _) = traced(runs / "student", "training")
    assert all(s.actor == "student" and s.probs is None and s.critique is None for s in student_steps)


@pytest.mark.slow  # 11 s
def test_a_run_made_before_the_newer_keys_is_traced_as_it_acted(runs, tmp_path):
    # config.yaml of a run made before teacher_share_end and critique_where_surer: no floor, no gate
    import re
    import shutil
    old = shutil.copytree(runs / "bidir", tmp_path / "old")
    text = (old / "config.yaml").read_text()
    stripped = re.sub(r"\n *(teacher_share_end|critique_where_surer):[^\n]*", "", text)
    assert stripped.count("\n") == text.count("\n") - 2
    (old / "config.yaml").write_text(stripped)
    trace_cli([str(old), "--out", str(tmp_path / "old_trace")])
    trace_cli([str(runs / "bidir"), "--out", str(tmp_path / "new_trace")])
    assert (tmp_path / "old_trace.txt").read_text().splitlines()[1:] == \
        (tmp_path / "new_trace.txt").read_text().splitlines()[1:]


def test_cli_writes_the_text_and_a_picture_per_step(runs, tmp_path, capsys):
    trace_cli([str(runs / "bidir"), "--mode", "student_alone", "--out", str(tmp_path / "t")])
    text = (tmp_path / "t.txt").read_text()
    steps = text.count("\nstep ")
    assert "student_alone" in text.splitlines()[0] and steps >= 1
    picture = Image.open(tmp_path / "t.gif")
    assert picture.n_frames == steps + 1  # one per step, then the outcome
    assert "written: " in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nothing"], "bidir-trace: error: {tmp}/nothing is not a bidir run directory (no config.yaml)"),
    (["{student}", "--mode", "teacher_alone"],
     "bidir-trace: error: --mode teacher_alone does not apply to student; choose one of training, student_alone"),
    (["{student}", "--out", "{tmp}/no/t"], "bidir-trace: error: --out {tmp}/no/t: {tmp}/no is not a directory"),
    (["{student}", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
])
def test_bad_input_exits_2_with_one_line(runs, tmp_path, args, message):
    fill = lambda s: s.replace("{tmp}", str(tmp_path)).replace("{student}", str(runs / "student"))  # noqa: E731
    done = run_main("bidir.trace", *map(fill, args))
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(errors) == 1 and fill(message) in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("**/*.gif"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_trace_on_a_mix_names_the_level_drawn(runs, tmp_path, seed):
    trace_cli([str(runs / "mix"), "--seed", str(seed), "--out", str(tmp_path / "t")])
    line = (tmp_path / "t.txt").read_text().splitlines()[1]
    level = {"go": "BabyAI-GoToObj-v0", "pick": "BabyAI-PickupDist-v0"}[line.split(": '")[1].split()[0]]
    assert line.startswith(f"{MIX} (this episode: {level}), held-out seed {seed}: ")
