"""End-to-end runs of the one training loop under the in-process LocalCaller: every method,
resume equality, and a checkpoint's evaluation."""
import csv
import json
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from bidir.checkpoint import find as find_checkpoint
from bidir.evaluate import evaluate_all, load_run, restore
from bidir.metrics import FIRST_COLUMNS, MetricsLog
from bidir.train import train
from entry import run_main


def timing(column):
    return column in ("wall_time_s", "fps") or column.startswith("time_")


def small_config(output_dir, method, *overrides):
    """A run small enough for a test: 2 envs, 32 frames per iteration, the untrained tiny-t5."""
    with initialize_config_module("bidir.conf", version_base=None):
        return compose("config", overrides=[
            f"rl_script_args.method={method}", f"rl_script_args.output_dir={output_dir}",
            "rl_script_args.iterations=2", "rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=32",
            "rl_script_args.eval_episodes=3", "rl_script_args.eval_every=0", "rl_script_args.teacher_minibatch_size=16",
            "lamorel_args.llm_configs.main_llm.model_path=tiny-t5", "wandb.mode=disabled", *overrides])


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_resumed_run_equals_uninterrupted(tmp_path, method, overrides, iterations, stop_at):
    """Trains `iterations` in one go and again stopped after `stop_at` and resumed; asserts the two
    metrics.csv agree but for timings. Returns the resumed run's folder."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(small_config(whole, method, *overrides, f"rl_script_args.iterations={iterations}"))
    train(small_config(split, method, *overrides, f"rl_script_args.iterations={stop_at}"))
    train(small_config(split, method, *overrides, f"rl_script_args.iterations={iterations}"))
    strip = lambda rows: [{k: v for k, v in r.items() if not timing(k)} for r in rows]  # noqa: E731
    assert strip(read_rows(split / "metrics.csv")) == strip(read_rows(whole / "metrics.csv"))
    return split


@pytest.mark.parametrize("method", ["bidir", "t2s", "glam", "student"])
def test_two_iterations_write_a_valid_metrics_csv(tmp_path, method):
    out = tmp_path / method
    train(small_config(out, method))
    rows = read_rows(out / "metrics.csv")
    assert tuple(rows[0])[:len(FIRST_COLUMNS)] == FIRST_COLUMNS
    assert all(value != "" for value in rows[0].values())  # columns are what the method's updates return
    # iteration N is the one checkpointed as iter_00000N
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert find_checkpoint(out).name == "iter_000002"
    assert [int(r["frames"]) for r in rows] == [32, 64]
    assert 0 < float(rows[0]["wall_time_s"]) < float(rows[1]["wall_time_s"])
    for r in rows:
        if int(r["episodes"]):
            assert 0.0 <= float(r["success_rate"]) <= 1.0 and 0.0 <= float(r["return_mean"]) <= 1.0
    assert (out / "learning_curve.png").stat().st_size > 0
    results = json.loads((out / "eval.json").read_text())["results"]
    expected = {"bidir": 3, "t2s": 3, "glam": 1, "student": 1}[method]
    assert len(results) == expected
    if method in ("bidir", "glam"):
        assert rows[1]["teacher_value_loss"] != ""
    if method in ("bidir", "t2s"):
        assert float(rows[0]["distill_weight"]) == 3.0 and rows[0]["agreement_rate"] != ""
    if method == "bidir":
        assert int(rows[0]["teacher_imitation_rows"]) >= 0 and float(rows[0]["teacher_share"]) == 1.0
    if method == "student":
        assert "teacher_share" not in rows[0] and "student_approx_kl" in rows[0]


@pytest.mark.parametrize("method", ["bidir", "student"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, method):
    assert_resumed_run_equals_uninterrupted(tmp_path, method, ["rl_script_args.eval_episodes=0"], 4, 2)


def test_restarting_a_finished_run_adds_nothing(tmp_path):
    out = tmp_path / "done"
    train(small_config(out, "student", "rl_script_args.eval_episodes=0"))
    before = (out / "metrics.csv").read_text()
    train(small_config(out, "student", "rl_script_args.eval_episodes=0"))
    assert (out / "metrics.csv").read_text() == before


def test_the_summary_reports_frames_to_the_levels_return_threshold(tmp_path, capsys):
    # a return is below 1 on every episode (1 - 0.9 x steps / max_steps), so 1 is never reached
    train(small_config(tmp_path / "run", "student", "rl_script_args.eval_episodes=0",
                       "rl_script_args.return_threshold=1.0"))
    assert "; return 1 not reached (episode-weighted mean over 5 iterations)" in capsys.readouterr().out


def test_reloaded_checkpoint_gives_the_same_evaluation(tmp_path):
    out = tmp_path / "eval"
    train(small_config(out, "bidir", "rl_script_args.eval_episodes=4"))
    in_process = json.loads((out / "eval.json").read_text())["results"]
    config, checkpoint = load_run(out)
    student, teacher = restore(config, checkpoint)
    assert evaluate_all("bidir", config.rl_script_args, student, teacher, episodes=4) == in_process


def test_a_diverged_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "diverged"
    train(small_config(out, "student", "rl_script_args.iterations=1", "rl_script_args.eval_episodes=0"))
    saved = out / "config.yaml"  # the same run, whose rewards overflow float32 from iteration 2 on
    saved.write_text(saved.read_text().replace("reward_scale: 1.0", "reward_scale: 1.0e+38"))
    with pytest.raises(FloatingPointError, match=r"student_value_loss is (inf|nan) at iteration \d; the last good "
                                                 r"checkpoint is kept") as error:
        train(small_config(out, "student", "rl_script_args.iterations=4", "rl_script_args.reward_scale=1e38"))
    diverged = int(re.search(r"at iteration (\d)", str(error.value)).group(1))  # the first reward overflows
    assert diverged > 1
    kept = [f"iter_{i:06d}" for i in range(1, diverged)]
    assert sorted(p.name for p in (out / "checkpoints").glob("iter_*[0-9]")) == kept[-3:]
    assert [int(r["iteration"]) for r in read_rows(out / "metrics.csv")] == list(range(1, diverged))


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    out = tmp_path / "trunc"
    train(small_config(out, "bidir", "rl_script_args.iterations=3", "rl_script_args.eval_episodes=0",
                       "rl_script_args.keep_checkpoints=2"))
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("iter_*[0-9]"))
    assert checkpoints == ["iter_000002", "iter_000003"]  # only the last keep_checkpoints remain
    newest = out / "checkpoints" / "iter_000003" / "trainer.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a kill in the middle of a write
    assert find_checkpoint(out).name == "iter_000002"
    train(small_config(out, "bidir", "rl_script_args.iterations=3", "rl_script_args.eval_episodes=0"))
    assert [r["iteration"] for r in read_rows(out / "metrics.csv")] == ["1", "2", "3"]


def test_teacher_queried_every_k_steps_reuses_its_message(tmp_path):
    out = tmp_path / "every3"
    train(small_config(out, "bidir", "rl_script_args.teacher_every=3", "rl_script_args.eval_episodes=0"))
    # 16 steps x 2 envs per iteration: 32 queries when K = 1; with K = 3, one at steps 0, 3, ..., 15
    # (6 per env) plus one at each new episode.
    for row in read_rows(out / "metrics.csv"):
        assert 12 <= int(row["teacher_queries"]) <= 12 + int(row["episodes"])


def test_bidir_eval_cli_on_a_run_directory(tmp_path):
    out = tmp_path / "cli"
    train(small_config(out, "glam", "rl_script_args.eval_episodes=0"))
    done = run_main("bidir.evaluate", str(out), "--episodes", "3", "--json", str(tmp_path / "eval.json"))
    assert done.returncode == 0, done.stderr
    assert "teacher_alone" in done.stdout
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert list(results) == ["teacher_alone"] and results["teacher_alone"]["episodes"] == 3
    missing = run_main("bidir.evaluate", str(tmp_path / "none"))
    assert missing.returncode == 2 and "not a bidir run directory" in missing.stderr


@pytest.mark.parametrize("teacher_share, overrides", [
    (0.0, ["rl_script_args.teacher_share_start=0.0"]), (1.0, ["rl_script_args.teacher_share_start=1.0"]),
    (1.0, ["rl_script_args.teacher_share_start=0.0", "rl_script_args.teacher_share_iterations=0",
           "rl_script_args.teacher_share_end=1.0"])])
def test_who_acts_and_the_behaviour_probability_the_student_learns_from(tmp_path, teacher_share, overrides):
    # eps = 1: every action is the teacher's instruction, with behaviour probability 1;
    # eps = 0: the student acts, and its own probability is the behaviour's. A floor
    # (teacher_share_end) sets eps once the hand-over is over, here from the first iteration.
    from bidir.methods import get_method
    from bidir.metrics import Phases
    from bidir.models import resolve_model_path
    from bidir.critique import CritiqueSettings, teacher_rows
    from bidir.teacher import start_teacher
    from bidir.train import Trainer
    config = small_config(tmp_path, "bidir", *overrides)
    config.lamorel_args.llm_configs.main_llm.model_path = resolve_model_path("tiny-t5")
    bidir = get_method("bidir")
    trainer = Trainer(config, bidir, start_teacher(config, bidir))
    rollout, _ = trainer.collect(Phases())
    assert rollout.executed.all() == bool(teacher_share) and rollout.executed.any() == bool(teacher_share)
    if teacher_share:
        assert (rollout.action == rollout.instruction).all()
        assert (rollout.logprob == 0.0).all()
    else:
        assert (rollout.logprob < 0.0).all()
    rows = teacher_rows(rollout, np.zeros(2, np.float32), np.ones(rollout.done.shape, np.float32), None,
                        CritiqueSettings("executed", "teacher", imitate=True, where_surer=False, normalize=True,
                                         gamma=0.99, lam=0.95))
    # PPO only where the teacher's instruction was executed; imitation only where the student chose
    assert rows.ppo.all() == bool(teacher_share) and not (rows.imitation[rows.ppo] > 0).any()
    assert (rows.imitation > 0).all() != bool(teacher_share)


@pytest.mark.slow  # 7 s
def test_each_agents_held_out_curve_is_measured_without_changing_training(tmp_path):
    plain, measured = tmp_path / "plain", tmp_path / "measured"
    train(small_config(plain, "bidir", "rl_script_args.iterations=5", "rl_script_args.eval_episodes=0"))
    train(small_config(measured, "bidir", "rl_script_args.iterations=5", "rl_script_args.eval_episodes=0",
                       "rl_script_args.eval_every=2", "rl_script_args.eval_every_episodes=2"))
    rows = read_rows(measured / "metrics.csv")
    # at the first and last iteration and every eval_every in between
    assert [r["iteration"] for r in rows if r["eval_teacher_alone_return"] != ""] == ["1", "2", "4", "5"]
    for r in rows:
        if r["eval_student_alone_success"] != "":
            assert 0.0 <= float(r["eval_student_alone_success"]) <= 1.0
            assert r["eval_student_with_teacher_return"] != "" and float(r["time_held_out_eval"]) > 0
    strip = lambda rows: [{k: v for k, v in r.items() if not timing(k) and not k.startswith("eval_")}  # noqa: E731
                          for r in rows]
    assert strip(rows) == strip(read_rows(plain / "metrics.csv"))


@pytest.mark.slow  # 8 s
def test_a_mix_is_evaluated_level_by_level():
    from bidir.envs import INSTRUCTIONS
    from bidir.evaluate import evaluate, format_table
    from bidir.student import Student
    mix = "BabyAI-GoToObj-v0+BabyAI-PickupDist-v0"
    torch.manual_seed(0)
    result = evaluate("student_alone", mix, list(INSTRUCTIONS), 8, 0, student=Student(6, 6))
    levels = result["levels"]
    assert list(levels) == mix.split("+")
    assert sum(r["episodes"] for r in levels.values()) == result["episodes"] == 8
    assert all(r["episodes"] > 0 for r in levels.values())  # 8 draws of two levels: both drawn here
    weighted = sum(r["return_mean"] * r["episodes"] for r in levels.values()) / 8
    assert weighted == pytest.approx(result["return_mean"])
    table = format_table({"student_alone": result}).splitlines()
    assert [line.split()[0] for line in table] == ["mode", "student_alone", *mix.split("+")]
    assert "levels" not in evaluate("student_alone", "BabyAI-GoToObj-v0", list(INSTRUCTIONS), 2, 0,
                                    student=Student(6, 6))


def test_a_short_run_says_what_its_final_figures_average(tmp_path, capsys):
    train(small_config(tmp_path / "run", "student", "rl_script_args.eval_episodes=0"))
    assert "(mean of the last 2 iterations)" in capsys.readouterr().out


def test_the_w_and_b_summary_holds_the_headline_and_one_teacher_alone(tmp_path):
    config = small_config(tmp_path / "run", "bidir", "wandb.mode=offline")
    (tmp_path / "run").mkdir()
    metrics = MetricsLog(config, 0, None)
    row = {column: 1 for column in FIRST_COLUMNS} | {"eval_teacher_alone_return": 0.4}  # a periodic 10-episode figure
    metrics.write(row)
    held_out = {"teacher_alone": {"return_mean": 0.9}, "teacher_at_start": {"return_mean": 0.44}}
    metrics.summarize({"final_return": 0.89, "frames_to_return_0.8": 3072.0, "eval": held_out})
    summary = metrics.wandb.summary
    assert summary["final_return"] == 0.89 and summary["eval"]["teacher_at_start"]["return_mean"] == 0.44
    assert not [key for key in summary.keys() if key.startswith("eval_")]
    metrics.close()
