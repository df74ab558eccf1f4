"""bidir-compare: statistics, convergence frames, and the table from run directories."""
import csv
import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from bidir.compare import (agents_markdown, curves_figure, frames_to, levels_markdown, markdown, mean_ci, paired_difference,
                           smooth, summarize)
from bidir.run_data import load_runs
from entry import run_main


def test_mean_ci_uses_students_t():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2 dof) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    assert mean_ci([0.5])[0] == 0.5 and math.isnan(mean_ci([0.5])[1])  # one run: no interval
    assert math.isnan(mean_ci([])[0])


def test_smoothing_weights_episodes_and_waits_for_a_full_window():
    values = np.array([1.0, np.nan, 0.0, 0.5])
    episodes = np.array([1, 0, 3, 1])
    out = smooth(values, episodes, 3)
    assert np.isnan(out[0]) and np.isnan(out[1])          # window not full yet
    assert out[2] == pytest.approx(1.0 * 1 / 4)            # (1*1 + 0*3) / 4 episodes
    assert out[3] == pytest.approx(0.5 * 1 / 4)            # (0*3 + 0.5*1) / 4


def test_frames_to_threshold():
    frames = np.array([100.0, 200.0, 300.0])
    assert frames_to(frames, np.array([0.5, 0.85, 0.9]), 0.8) == 200.0
    assert math.isnan(frames_to(frames, np.array([0.5, 0.6, np.nan]), 0.8))


def write_run(directory, method, seed, returns, return_threshold=None, config=(), **columns):
    """A run directory as bidir.train leaves it (config.yaml without return_threshold: an older run),
    with `config` ("a.b.c=value" overrides) in its config.yaml and `columns` (name: one value per
    iteration) added to metrics.csv."""
    directory.mkdir(parents=True)
    args = {"method": method, "seed": seed} | ({"return_threshold": return_threshold} if return_threshold else {})
    OmegaConf.save(OmegaConf.merge({"rl_script_args": args}, OmegaConf.from_dotlist(list(config))),
                   directory / "config.yaml")
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["iteration", "frames", "success_rate", "return_mean", "episodes", "wall_time_s",
                                    *columns])
        writer.writeheader()
        for i, r in enumerate(returns):
            writer.writerow({"iteration": i, "frames": 100 * (i + 1), "success_rate": 1.0 if r > 0 else 0.0,
                             "return_mean": r, "episodes": 2, "wall_time_s": i + 1}
                            | {name: values[i] for name, values in columns.items()})


def test_summary_from_run_directories(tmp_path):
    write_run(tmp_path / "a" / "s1", "bidir", 1, [0.0, 0.9, 0.9, 0.9])
    write_run(tmp_path / "a" / "s2", "bidir", 2, [0.0, 0.0, 0.9, 0.9])
    write_run(tmp_path / "b" / "s1", "student", 1, [0.0, 0.0, 0.0, 0.3])
    table = summarize(load_runs([str(tmp_path / "*" / "*")]), last=2, window=2)
    assert list(table) == ["bidir", "student"]
    assert table["bidir"]["seeds"] == 2 and table["bidir"]["final_return"] == (pytest.approx(0.9), 0.0)
    # smoothed over 2 iterations, seed 1 reaches 0.8 at frame 300 (0.9, 0.9), seed 2 at 400
    assert table["bidir"]["frames_to_return_0.8"][0] == 350.0 and table["bidir"]["reached_return_0.8"] == 2
    assert table["student"]["reached_return_0.8"] == 0


def test_frames_to_the_levels_return_threshold_from_the_runs_config(tmp_path):
    write_run(tmp_path / "a" / "s1", "bidir", 1, [0.2, 0.6, 0.6, 0.6], return_threshold=0.5)
    write_run(tmp_path / "a" / "s2", "bidir", 2, [0.2, 0.2, 0.6, 0.9], return_threshold=0.5)
    table = summarize(load_runs([str(tmp_path / "*" / "*")]), last=2, window=2)
    # smoothed over 2 iterations, seed 1 reaches 0.5 at frame 300 (0.6, 0.6), seed 2 at 400 (0.6, 0.9)
    assert table["bidir"]["frames_to_return_0.5"][0] == 350.0 and table["bidir"]["reached_return_0.5"] == 2
    assert "| frames to return 0.5 |" in markdown(table).splitlines()[0]


def test_each_agents_policy_entropy_at_the_end_where_the_method_has_that_agent(tmp_path):
    write_run(tmp_path / "bidir" / "seed1", "bidir", 1, [0.5] * 3, teacher_policy_entropy=[0.9, 1.4, 1.6],
              student_entropy=[1.7, 1.5, 1.5])
    write_run(tmp_path / "bidir" / "seed2", "bidir", 2, [0.5] * 3, teacher_policy_entropy=[0.9, 1.2, 1.2],
              student_entropy=[1.7, 1.1, 1.1])
    write_run(tmp_path / "glam" / "seed1", "glam", 1, [0.5] * 3, teacher_policy_entropy=[1.0, 0.8, 0.6])
    write_run(tmp_path / "student" / "seed1", "student", 1, [0.5] * 3)  # a run made before the column: no figure
    table = summarize(load_runs([str(tmp_path / "*" / "seed*")]), last=2, window=2)
    # last 2 iterations: teacher 1.5 and 1.2, mean 1.35, half-width t(0.975, 1) * 0.15 = 12.706 * 0.15
    assert table["bidir"]["policy_entropy"]["teacher"] == (pytest.approx(1.35), pytest.approx(12.706 * 0.15, rel=1e-3))
    assert table["bidir"]["policy_entropy"]["student"][0] == pytest.approx(1.3)
    assert list(table["glam"]["policy_entropy"]) == ["teacher"] and table["student"]["policy_entropy"] == {}
    rows = {line.split(" | ")[0]: line.split(" | ")[7] for line in markdown(table).splitlines()[2:5]}
    assert rows == {"| bidir": "1.35 ± 1.91 (teacher); 1.30 ± 2.54 (student)", "| glam": "0.70 (teacher)",
                    "| student": "n/a"}


def test_a_run_that_has_not_finished_an_iteration_is_left_out(tmp_path):
    write_run(tmp_path / "a" / "s1", "bidir", 1, [0.0, 0.9])
    write_run(tmp_path / "b" / "s1", "glam", 1, [])  # header only
    write_run(tmp_path / "c" / "s1", "t2s", 1, [])
    (tmp_path / "c" / "s1" / "metrics.csv").write_text("")  # created, not yet written
    assert list(load_runs([str(tmp_path / "*" / "*")])) == ["bidir"]


NO_CRITIQUE = ["rl_script_args.critique_imitation=0"]


def test_plan_layout_groups_by_variant_and_pairs_seeds(tmp_path):
    # <experiment>/<variant>/seed<N>: an ablation of bidir is its own group
    write_run(tmp_path / "x" / "bidir" / "seed1", "bidir", 1, [0.5, 0.9])
    write_run(tmp_path / "x" / "bidir" / "seed2", "bidir", 2, [0.5, 0.7])
    write_run(tmp_path / "x" / "bidir-no-critique" / "seed1", "bidir", 1, [0.5, 0.6], config=NO_CRITIQUE)
    write_run(tmp_path / "x" / "bidir-no-critique" / "seed2", "bidir", 2, [0.5, 0.6], config=NO_CRITIQUE)
    write_run(tmp_path / "x" / "bidir-no-critique" / "seed3", "bidir", 3, [0.5, 0.6], config=NO_CRITIQUE)
    runs = load_runs([str(tmp_path / "x" / "*" / "seed*")])
    assert sorted(runs) == ["bidir", "bidir-no-critique"]
    final = lambda run: float(run["return"][-1])  # noqa: E731
    # seeds 1 and 2 in both: differences 0.3 and 0.1, mean 0.2, t(1) = 12.706, sd 0.1414 / sqrt(2)
    mean, ci, n = paired_difference(runs["bidir"], runs["bidir-no-critique"], final)
    assert n == 2 and mean == pytest.approx(0.2) and ci == pytest.approx(12.706 * 0.1)


SMOLLM2 = ["lamorel_args.llm_configs.main_llm.model_path=/cache/smollm2-135m-instruct",
           "lamorel_args.llm_configs.main_llm.model_type=causal", "rl_script_args.teacher_lr=0.001"]


def compare(*patterns, out):
    return run_main("bidir.compare", *map(str, patterns), "--out", str(out))


def test_runs_of_one_method_with_different_models_are_compared_apart(tmp_path):
    # the case: `bidir-compare "runs/*"` over a tiny-t5 and a SmolLM2 bidir run, both seed 1
    write_run(tmp_path / "runs" / "bidir_seed1", "bidir", 1, [0.5, 0.9],
              config=["lamorel_args.llm_configs.main_llm.model_path=/a/bidir/assets/tiny-t5-bc"])
    write_run(tmp_path / "runs" / "smollm2", "bidir", 1, [0.1, 0.2], config=SMOLLM2)
    done = compare(tmp_path / "runs" / "*", out=tmp_path / "cmp")
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert sorted(table) == ["bidir [model_path=smollm2-135m-instruct, model_type=causal, teacher_lr=0.001]",
                             "bidir [model_path=tiny-t5-bc, model_type=seq2seq, teacher_lr=0.0001]"]
    assert all(row["seeds"] == 1 for row in table.values())
    assert "runs named bidir differ in configuration and are compared apart" in done.stderr


def test_runs_that_differ_only_in_where_and_how_long_they_ran_are_pooled(tmp_path):
    # the model's folder, output_dir, the budget and the evaluation's size do not change the experiment;
    # a key missing from an older run's config.yaml counts at its documented default
    write_run(tmp_path / "a" / "seed1", "glam", 1, [0.5, 0.9], config=[
        "lamorel_args.llm_configs.main_llm.model_path=/machine-a/tiny-t5-bc", "rl_script_args.output_dir=a",
        "rl_script_args.iterations=2", "rl_script_args.eval_episodes=10", "rl_script_args.teacher_share_end=0"])
    write_run(tmp_path / "b" / "seed2", "glam", 2, [0.5, 0.7], config=[
        "lamorel_args.llm_configs.main_llm.model_path=/machine-b/tiny-t5-bc", "rl_script_args.output_dir=b",
        "rl_script_args.iterations=40", "rl_script_args.eval_episodes=100"])
    assert {label: len(group) for label, group in load_runs([str(tmp_path / "*" / "seed*")]).items()} == {"a + b": 2}


def test_a_non_default_key_sets_runs_apart(tmp_path):
    write_run(tmp_path / "runs" / "seed1", "bidir", 1, [0.5, 0.9])
    write_run(tmp_path / "runs" / "seed2", "bidir", 2, [0.5, 0.9], config=NO_CRITIQUE)
    runs = load_runs([str(tmp_path / "runs" / "seed*")])
    assert sorted(runs) == ["runs [critique_imitation=0]", "runs [critique_imitation=1.0]"]


def test_a_seed_twice_in_one_group_is_refused(tmp_path):
    # the same run copied, or rerun into a second folder: one seed's outcome must not count as two
    write_run(tmp_path / "runs" / "bidir_seed1", "bidir", 1, [0.5, 0.9])
    write_run(tmp_path / "runs" / "bidir_seed1_copy", "bidir", 1, [0.5, 0.9])
    done = compare(tmp_path / "runs" / "*", out=tmp_path / "cmp")
    assert done.returncode == 2 and not (tmp_path / "cmp").exists()
    assert done.stderr == (f"bidir-compare: error: bidir: seed 1 twice ({tmp_path / 'runs' / 'bidir_seed1'} and "
                           f"{tmp_path / 'runs' / 'bidir_seed1_copy'}); a seed counts once in a comparison: leave one "
                           "of them out of the patterns\n")


def test_cli_writes_table_and_plot_and_rejects_empty_input(tmp_path):
    write_run(tmp_path / "runs" / "s1", "glam", 1, [0.1, 0.2, 0.3])
    out = tmp_path / "cmp"
    done = run_main("bidir.compare", str(tmp_path / "runs" / "*"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "| glam | 1 |" in (out / "results.md").read_text() and (out / "comparison.png").stat().st_size > 0
    empty = run_main("bidir.compare", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and "no run directories" in empty.stderr


def test_cli_warns_about_unequal_budgets_and_short_runs_and_gives_no_interval_for_one_run(tmp_path):
    write_run(tmp_path / "runs" / "bidir1", "bidir", 1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    write_run(tmp_path / "runs" / "bidir2", "bidir", 2, [0.1, 0.2, 0.3, 0.4, 0.5, 0.7])
    write_run(tmp_path / "runs" / "glam1", "glam", 1, [0.1, 0.2, 0.3])
    done = run_main("bidir.compare", str(tmp_path / "runs" / "*"), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("bidir-compare: warning:")]
    assert warnings == [
        "bidir-compare: warning: runs differ in length (bidir: 6 iterations; glam: 3 iterations): final figures "
        "and frames to thresholds compare different budgets",
        "bidir-compare: warning: glam: a run of 3 iterations is no longer than the smoothing window (5); glam's "
        "curve is drawn unsmoothed (lower --smooth)"]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert "| 2 | 0.410 ± 0.127 |" in rows["bidir"]  # mean of the last 5 iterations, 2 runs
    assert "| 1 | 0.200 | 1.000 |" in rows["glam"] and "±" not in rows["glam"]


def test_runs_no_longer_than_the_window_are_drawn_unsmoothed_and_n_is_in_legend_and_title(tmp_path):
    write_run(tmp_path / "bidir1", "bidir", 1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    write_run(tmp_path / "bidir2", "bidir", 2, [0.1, 0.2, 0.3, 0.4, 0.5, 0.7])
    write_run(tmp_path / "glam1", "glam", 1, [0.1, 0.2, 0.3, 0.4, 0.5])  # as long as the window
    write_run(tmp_path / "student1", "student", 1, [0.4])                # a single iteration
    runs = load_runs([str(tmp_path / "*")])
    figure = curves_figure(runs, window=5)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert list(lines)[:3] == ["bidir (n=2)", "glam (n=1, no CI, unsmoothed)", "student (n=1, no CI, unsmoothed)"]
    assert list(lines["glam (n=1, no CI, unsmoothed)"].get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert list(lines["student (n=1, no CI, unsmoothed)"].get_ydata()) == [0.4]
    assert lines["student (n=1, no CI, unsmoothed)"].get_marker() == "o"  # one point: visible only as a marker
    smoothed = lines["bidir (n=2)"].get_ydata()
    assert np.isnan(smoothed[:4]).all() and smoothed[5] == pytest.approx(0.41)  # mean of 2.0 / 5 and 2.1 / 5
    assert figure._suptitle.get_text() == "mean ± 95% CI over seeds (no CI where n=1)"
    assert curves_figure({"glam": runs["glam"]})._suptitle.get_text() == "one run per method (no CI)"
    assert curves_figure({"bidir": runs["bidir"]})._suptitle.get_text() == "mean ± 95% CI over seeds"


def reference_lines(ax) -> dict:
    """The horizontal reference lines drawn on a panel: label -> y."""
    return {line.get_label(): line.get_ydata()[0] for line in ax.lines
            if line.get_label().startswith(("BabyAI bot", "uniform instructions"))}


def legend_outside_every_panel(figure) -> bool:
    """Whether the figure's one legend lies outside the data area of every panel (and none has its own)."""
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    return all(not legend.overlaps(ax.get_window_extent()) and ax.get_legend() is None for ax in figure.axes)


def test_the_legend_lies_outside_every_panel_and_a_known_level_has_its_references(tmp_path):
    level = "rl_script_args.env_id="
    write_run(tmp_path / "bidir" / "seed1", "bidir", 1, [0.1, 0.2, 0.3], eval_teacher_alone_return=[0.2, 0.3, 0.4])
    write_run(tmp_path / "pickup" / "seed1", "bidir", 1, [0.1, 0.2, 0.3], config=[level + "BabyAI-PickupDist-v0"])
    write_run(tmp_path / "unknown" / "seed1", "bidir", 1, [0.1, 0.2, 0.3], config=[level + "BabyAI-GoToDoor-v0"])

    def curves(*folders):
        return curves_figure(load_runs([str(tmp_path / folder / "seed1") for folder in folders]), window=2)

    figure = curves("bidir")
    assert legend_outside_every_panel(figure)
    # GoToRedBallNoDists (the default level): experiments/prompting/table.json, on both return panels
    assert [reference_lines(ax) for ax in figure.axes[::2]] == [
        {"BabyAI bot (0.928)": pytest.approx(0.928, abs=5e-4),
         "uniform instructions (0.138)": pytest.approx(0.138, abs=5e-4)}] * 2
    assert reference_lines(figure.axes[1]) == {}  # success rates: no return reference
    # a level of experiments/level-references/
    assert reference_lines(curves("pickup").axes[0]) == {
        "BabyAI bot (0.916)": pytest.approx(0.916, abs=5e-4),
        "uniform instructions (0.142)": pytest.approx(0.142, abs=5e-4)}
    # a level never measured, or runs of two levels: no reference
    assert reference_lines(curves("unknown").axes[0]) == {}
    assert reference_lines(curves("pickup", "unknown").axes[0]) == {}


def test_a_runs_learning_curve_has_its_levels_references_and_its_legend_below(tmp_path, monkeypatch):
    import matplotlib.figure

    from bidir.report import plot_learning_curve
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, path, **_: saved.append(figure))
    rows = [{"frames": 100 * i, "episodes": 2, "return_mean": 0.1 * i, "success_rate": 0.5,
             "eval_teacher_alone_return": 0.3 if i in (1, 4) else ""} for i in range(1, 5)]
    for level in ("BabyAI-PutNextLocal-v0", "BabyAI-GoToDoor-v0"):
        plot_learning_curve(rows, tmp_path / "curve.png", "a run", window=2, env_id=level)
    known, unknown = saved
    for ax in (known.axes[0], known.axes[2]):  # the returns: in training and held out
        assert reference_lines(ax) == {"BabyAI bot (0.915)": pytest.approx(0.915, abs=5e-4),
                                       "uniform instructions (0.000)": 0.0}
    assert not any(reference_lines(ax) for ax in unknown.axes)
    assert legend_outside_every_panel(known)


def test_help_shows_the_defaults():
    done = run_main("bidir.compare", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for default in ["(default: comparison)", "final figures (default: 5)", "smoothing window (default: 5)",
                    "(default: every group)"]:
        assert default in text, done.stdout


def rewrite(path, text):
    path.unlink()
    path.write_text(text)


@pytest.mark.parametrize("damage, args, message", [
    (None, ["--smooth", "0"], "--smooth: expected a positive integer, got 0"),
    (None, ["--last", "x"], "--last: expected a positive integer, got 'x'"),
    (None, ["--group", "g"], "--group selects W&B runs: use it with --wandb ENTITY/PROJECT"),
    (lambda run: None, ["{tmp}/nothing"], "no run directories (with config.yaml and metrics.csv) in {tmp}/nothing"),
    (lambda run: (run / "metrics.csv").unlink() or (run / "metrics.csv").mkdir(), [],
     "{run}/metrics.csv: cannot be read ([Errno 21] Is a directory"),
    (lambda run: rewrite(run / "metrics.csv", "iteration,frames,success_rate\n0,100,0.5\n"), [],
     "{run}/metrics.csv: has no column return_mean, episodes, wall_time_s; fix or delete it"),
    (lambda run: rewrite(run / "metrics.csv", (run / "metrics.csv").read_text().replace(",0.2,", ",abc,")), [],
     "{run}/metrics.csv: line 3 is not numeric in frames, return_mean, success_rate, episodes, wall_time_s"),
    (lambda run: rewrite(run / "config.yaml", "rl_script_args: {method: [glam\n"), [],
     "{run}/config.yaml does not parse (while parsing a flow sequence in \"config.yaml\", line 1, column 26 expected "
     "',' or ']', but got '<stream end>' in \"config.yaml\", line 2, column 1); restore it from a copy"),
    (lambda run: rewrite(run / "config.yaml", "wandb: {mode: offline}\n"), [],
     "{run}/config.yaml is not a run's configuration (no rl_script_args); restore it from a copy"),
    (lambda run: rewrite(run / "config.yaml", (run / "config.yaml").read_text().replace("seed: 1", "seed: abc")), [],
     "{run}/config.yaml: rl_script_args.seed must be an integer (default: 1), got 'abc'; restore it from a copy"),
    (lambda run: rewrite(run / "config.yaml", (run / "config.yaml").read_text() + "rl_script_args: {seed: 2}\n"), [],
     "{run}/config.yaml does not parse (key 'rl_script_args' is written twice in \"config.yaml\", line 4, column 1); "
     "restore it from a copy"),
    (lambda run: (run / "eval.json").write_text('{"results": '), [],
     "{run}/eval.json is not JSON (Expecting value: line 1 column 13 (char 12)); restore it from a copy or delete it"),
    (lambda run: (run / "eval.json").write_text('{"results": {"student_alone": {"success_rate": "high"}}}'), [],
     "{run}/eval.json: results.student_alone.success_rate must be a number, got 'high'; restore it from a copy or "
     "delete it"),
    (lambda run: write_run(run.parent / "s2", "glam", 2, [0.1, 0.2, 0.3], return_threshold=0.5), [],
     "the runs use different return thresholds (0.5, 0.8): compare runs of one level"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, damage, args, message):
    run = tmp_path / "runs" / "s1"
    write_run(run, "glam", 1, [0.1, 0.2, 0.3])
    if damage:
        damage(run)
    patterns = [] if args[:1] == ["{tmp}/nothing"] else [str(tmp_path / "runs" / "*")]
    args = [arg.format(tmp=tmp_path) for arg in args]
    done = run_main("bidir.compare", *patterns, *args, "--out", str(tmp_path / "cmp"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("bidir-compare: error:")]
    assert len(errors) == 1 and message.format(run=run, tmp=tmp_path) in errors[0], done.stderr
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("out", ["file", "file/cmp"])
def test_cli_out_that_cannot_be_a_directory_exits_2_and_changes_nothing(tmp_path, out):
    write_run(tmp_path / "runs" / "s1", "glam", 1, [0.1, 0.2, 0.3])
    (tmp_path / "file").write_text("mine")
    done = run_main("bidir.compare", str(tmp_path / "runs" / "*"), "--out", str(tmp_path / out))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("bidir-compare: error:")]
    assert errors == [f"bidir-compare: error: --out {tmp_path / out}: {tmp_path / 'file'} is not a writable "
                      "directory; choose another --out"], done.stderr
    assert (tmp_path / "file").read_text() == "mine"


def test_each_agents_held_out_curve_is_averaged_over_seeds_from_the_teacher_at_start(tmp_path):
    for seed, (teacher, student) in enumerate([(0.5, 0.2), (0.7, 0.4)], start=1):
        path = tmp_path / "bidir" / f"seed{seed}"
        write_run(path, "bidir", seed, [0.1, 0.2, 0.3, 0.4])
        with open(path / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        for i, row in enumerate(rows):  # evaluated at iterations 1 and 4 only
            evaluated = i in (0, 3)
            row["eval_teacher_alone_return"] = teacher + 0.1 * i if evaluated else ""
            row["eval_student_alone_return"] = student + 0.1 * i if evaluated else ""
        with open(path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (path / "eval_start.json").write_text('{"results": {"teacher_at_start": {"return_mean": %s}}}' % (teacher - 0.3))
    figure = curves_figure(load_runs([str(tmp_path / "bidir" / "seed*")]), window=2)
    teacher_line, student_line = [line for line in figure.axes[2].lines  # not the legend's keys or the references
                                  if len(line.get_xdata()) and line.get_label().startswith("_")]
    # each agent's curve has its 95% CI band over the two seeds
    assert len(figure.axes[2].collections) == 2
    # the teacher from before training (frame 0), then the mean over the two seeds where evaluated
    np.testing.assert_allclose(teacher_line.get_xdata(), [0, 100, 400])
    np.testing.assert_allclose(teacher_line.get_ydata(), [0.3, 0.6, 0.9])
    np.testing.assert_allclose(student_line.get_xdata(), [100, 400])
    np.testing.assert_allclose(student_line.get_ydata(), [0.3, 0.6])
    # the same figures as a table: the teacher before training at frame 0, then both agents
    table = agents_markdown(load_runs([str(tmp_path / "bidir" / "seed*")])).splitlines()
    assert table[0] == "| frames | bidir: teacher alone (n=2) | bidir: student alone (n=2) |"
    # seeds 0.2/0.4 (start), 0.5/0.7 and 0.8/1.0: mean 0.3, 0.6, 0.9 ± 12.706 x 0.1414 / sqrt(2) = 1.271
    assert table[2:5] == ["| 0 | 0.300 ± 1.271 |  |", "| 100 | 0.600 ± 1.271 | 0.300 ± 1.271 |",
                          "| 400 | 0.900 ± 1.271 | 0.600 ± 1.271 |"]
    assert agents_markdown(load_runs([str(tmp_path / "bidir" / "seed1")]))  # one run: means, no interval
    write_run(tmp_path / "student" / "seed1", "student", 1, [0.1, 0.2])
    assert agents_markdown(load_runs([str(tmp_path / "student" / "seed1")])) == ""  # no evaluation during training


def test_a_mix_is_reported_level_by_level(tmp_path):
    def level(ret):
        return {"return_mean": ret, "success_rate": 1.0, "episode_length_mean": 9.0, "episodes": 3}
    for seed, (go, pick) in enumerate([(0.8, 0.2), (0.6, float("nan"))], start=1):  # seed 2 drew no PickupDist
        path = tmp_path / "bidir" / f"seed{seed}"
        write_run(path, "bidir", seed, [0.1, 0.2])
        levels = {"BabyAI-GoToObj-v0": level(go), "BabyAI-PickupDist-v0": level(pick)}
        result = {"return_mean": 0.5, "success_rate": 0.5, "episode_length_mean": 9.0, "episodes": 6, "levels": levels}
        (path / "eval.json").write_text(json.dumps({"results": {"student_alone": result}}))
    write_run(tmp_path / "student" / "seed1", "student", 1, [0.1, 0.2])  # evaluated on one level: no row
    table = levels_markdown(load_runs([str(tmp_path / "*" / "seed*")])).splitlines()
    assert table[0] == "| method | mode | n (runs) | BabyAI-GoToObj-v0 | BabyAI-PickupDist-v0 |"
    # 0.8 and 0.6: mean 0.7 ± 12.706 x 0.1414 / sqrt(2) = 1.271; PickupDist drawn in one run only
    assert table[2:] == ["| bidir | student_alone | 2 | 0.700 ± 1.271 | 0.200 |", "",
                         table[4]] and table[4].startswith("held-out return at the end on each level")
    assert levels_markdown(load_runs([str(tmp_path / "student" / "seed1")])) == ""
