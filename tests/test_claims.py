"""experiments/claims.py: the long-budget figures and the paired table, on hand-computed runs."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from test_compare import write_run  # a run directory as bidir.train leaves it

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import claims  # noqa: E402
from entry import run_main  # noqa: E402


def run(returns, episodes=None, seed=1):
    """A run as load_runs gives it, 256 frames per iteration."""
    returns = np.array(returns, dtype=float)
    episodes = np.ones(len(returns)) if episodes is None else np.array(episodes, dtype=float)
    return {"seed": seed, "return": returns, "episodes": episodes, "frames": 256.0 * np.arange(1, len(returns) + 1),
            "eval": {}, "return_threshold": 0.8}


# 5-iteration means from iteration 5 on: 0.82, 0.90, 0.84, 0.78, 0.78, 0.78
DIP = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6, 0.6, 0.9, 0.9]


def test_lowest_after_reaching_08_is_the_dip_after_the_first_crossing():
    assert math.isclose(claims.lowest_after_threshold(run(DIP)), 0.78)
    assert math.isclose(claims.frames_to_threshold(run(DIP)), 5 * 256)


def test_lowest_after_08_ignores_what_came_before_the_crossing_and_is_nan_if_never_reached():
    early_dip = [0.1] * 5 + [0.9] * 10  # 5-iteration means 0.1, 0.26, ..., 0.74, then 0.9 from iteration 10
    assert math.isclose(claims.lowest_after_threshold(run(early_dip)), 0.9)
    assert math.isnan(claims.lowest_after_threshold(run([0.7] * 20)))


def test_return_last_50_weights_by_episodes_and_uses_the_whole_run_when_shorter():
    assert math.isclose(claims.return_last_50(run(DIP)), 8.0 / 10)
    long = [0.0] * 10 + [0.5] * 25 + [1.0] * 25
    assert math.isclose(claims.return_last_50(run(long)), 0.75)
    weighted = run([0.5] * 25 + [1.0] * 25, episodes=[3] * 25 + [1] * 25)
    assert math.isclose(claims.return_last_50(weighted), (0.5 * 75 + 25) / 100)


def test_claims_table_pairs_by_seed_and_skips_missing_groups():
    runs = {"bidir": [run([0.9] * 10, seed=1), run([0.8] * 10, seed=2)],
            "glam": [run([0.7] * 10, seed=1), run([0.9] * 10, seed=3)]}
    table = claims.claims_table(runs)
    final = next(line for line in table.splitlines() if "| final return |" in line)
    assert final.endswith("| 0.200 (n=1) |")  # only seed 1 is in both groups
    assert "bidir: 0.850 ± 0.635 (n=2)" in final  # t(1) 12.706 x sd 0.0707 / sqrt(2)
    groups = {cell.split(":")[0].strip() for line in table.splitlines()[2:] for cell in line.split("|")[3:5]}
    assert groups == {"bidir", "glam"}  # comparisons with student, t2s or the variants are skipped


def test_convergence_figures_use_the_levels_return_threshold():
    level = run([0.2] * 5 + [0.6] * 5 + [0.4] * 5) | {"return_threshold": 0.5}
    # 5-iteration means 0.28, 0.36, 0.44 from the 6th iteration, 0.52 at the 9th; 0.4 at the 15th
    assert claims.frames_to_threshold(level) == 9 * 256 and math.isclose(claims.lowest_after_threshold(level), 0.4)
    table = claims.claims_table({"bidir": [level], "glam": [level | {"seed": 1}]})
    assert "| frames to return 0.5 |" in table and "| lowest 5-iteration return after reaching 0.5 |" in table
    assert "0.8" not in table
    with pytest.raises(ValueError, match=r"different return thresholds \(0.5, 0.8\)"):
        claims.claims_table({"bidir": [level], "glam": [run([0.9] * 10)]})


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nothing"], "no run directories (with config.yaml and metrics.csv) in {tmp}/nothing"),
    (["{tmp}/bad/*/seed*"], "{tmp}/bad/bidir/seed1/metrics.csv: has no column return_mean"),
    (["{tmp}/runs/*/seed*", "--out", "{tmp}"], "--out {tmp}: {tmp} is a directory; name a file to write"),
    (["{tmp}/runs/*/seed*", "--out", "{tmp}/file/claims.md"],
     "--out {tmp}/file/claims.md: {tmp}/file is a file; name a file to write"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    write_run(tmp_path / "runs" / "bidir" / "seed1", "bidir", 1, [0.5, 0.9])
    write_run(tmp_path / "bad" / "bidir" / "seed1", "bidir", 1, [0.5, 0.9])
    (tmp_path / "bad" / "bidir" / "seed1" / "metrics.csv").write_text("iteration,frames\n0,100\n")
    (tmp_path / "file").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    done = run_main(claims.main, *(arg.replace("{tmp}", str(tmp_path)) for arg in args), prog="claims.py")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("claims.py: error:")]
    assert len(errors) == 1 and message.replace("{tmp}", str(tmp_path)) in errors[0], done.stderr
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "mine"


def test_teacher_frames_to_glams_final_return_reads_the_periodic_curve():
    nan = float("nan")
    bidir, glam = run([0.0] * 6, seed=1), run([0.0] * 6, seed=1)
    bidir["agents"] = {"eval_teacher_alone_return": np.array([0.1, nan, 0.3, nan, 0.5, 0.6])}
    glam["agents"] = {"eval_teacher_alone_return": np.array([0.1, nan, 0.2, nan, 0.3, 0.4])}
    glam["eval"] = {"teacher_alone": {"return_mean": 0.4}}
    figure = claims.teacher_frames_to(0.4)
    assert figure(bidir) == 5 * 256 and figure(glam) == 6 * 256  # the first evaluation at or above 0.4
    assert math.isnan(claims.teacher_frames_to(0.7)(bidir))
    table = claims.claims_table({"bidir": [bidir], "glam": [glam]})
    row = next(line for line in table.splitlines() if "glam's final teacher-alone return (0.400)" in line)
    assert row.endswith("| -256 (n=1) |")  # bidir's teacher got there one iteration sooner


def test_on_a_mix_each_level_is_compared_paired_by_seed():
    def evaluated(seed, go, pick):
        levels = {"BabyAI-GoToObj-v0": {"return_mean": go}, "BabyAI-PickupDist-v0": {"return_mean": pick}}
        return run([0.5] * 10, seed=seed) | {"eval": {"student_alone": {"return_mean": 0.5, "levels": levels}}}
    runs = {"bidir": [evaluated(1, 0.75, 0.25), evaluated(2, 0.75, 0.5)],
            "student": [evaluated(1, 0.5, 0.5), evaluated(2, 0.5, 0.5)]}
    lines = [line for line in claims.claims_table(runs).splitlines() if "on each level of the mix" in line]
    assert [line.split(" | ")[1] for line in lines] == ["held-out return on BabyAI-GoToObj-v0, student alone",
                                                         "held-out return on BabyAI-PickupDist-v0, student alone"]
    # GoToObj: +0.25 on both seeds; PickupDist: -0.25 and 0 (sd 0.1768, t(1) 12.706 x 0.1768 / sqrt(2) = 1.588)
    assert lines[0].endswith("| 0.250 ± 0.000 (n=2) |") and lines[1].endswith("| -0.125 ± 1.588 (n=2) |")
    assert not [line for line in claims.claims_table({"bidir": [run([0.5])], "student": [run([0.4])]}).splitlines()
                if "on each level" in line]  # one level: no such rows
