"""experiments/teacher_curves.py: the teacher's entropy and held-out return per iteration, mean over
seeds, on hand-written runs."""
import sys
from pathlib import Path

from test_compare import write_run  # a run directory as bidir.train leaves it

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import teacher_curves  # noqa: E402
from entry import run_main  # noqa: E402

NAN = float("nan")


def test_the_table_is_the_mean_over_seeds_at_each_column_and_the_figure_is_drawn(tmp_path):
    write_run(tmp_path / "runs" / "bidir" / "seed1", "bidir", 1, [0.1, 0.2, 0.3, 0.4],
              teacher_policy_entropy=[1.0, 1.2, 1.4, 1.6], eval_teacher_alone_return=[0.4, "", 0.5, 0.6])
    write_run(tmp_path / "runs" / "bidir" / "seed2", "bidir", 2, [0.1, 0.2, 0.3],
              teacher_policy_entropy=[0.8, 0.8, 0.6], eval_teacher_alone_return=[0.2, "", 0.3])
    write_run(tmp_path / "runs" / "student" / "seed1", "student", 1, [0.1, 0.2, 0.3],
              student_entropy=[1.0, 1.0, 1.0])  # no teacher: not drawn
    out = tmp_path / "curves.png"
    done = run_main(teacher_curves.main, str(tmp_path / "runs" / "*" / "seed*"), "--every", "2", "--out", str(out),
                    prog="teacher_curves.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "| group (n) | it. 1 | it. 2 | it. 3 |",  # the shorter run's 3 iterations, every 2, and the last
        "|---|---|---|---|",
        "| bidir (2) | 0.90 / 0.300 | 1.00 / - | 1.00 / 0.400 |"]
    assert out.stat().st_size > 0


def test_runs_without_a_learning_teacher_exit_2_with_one_line(tmp_path):
    write_run(tmp_path / "runs" / "student" / "seed1", "student", 1, [0.1, 0.2], student_entropy=[1.0, 1.0])
    done = run_main(teacher_curves.main, str(tmp_path / "runs" / "*" / "seed*"), prog="teacher_curves.py")
    assert done.returncode == 2 and done.stderr.startswith("teacher_curves.py: error: no run of a method with a "
                                                           "learning teacher in ")
