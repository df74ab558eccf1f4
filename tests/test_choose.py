"""experiments/choose.py: a sweep's choice by its rule, on hand-made figures and runs."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import choose  # noqa: E402


def table(**figures):
    return {name: {"T": t, "R": r} for name, (t, r) in figures.items()}


def test_the_best_teacher_among_the_returns_near_the_best():
    # c's teacher is best but its return is 0.03 below a's: out; b beats the default a on T
    figures = table(a=(0.80, 0.90), b=(0.85, 0.885), c=(0.95, 0.87))
    assert choose.choose(figures, "a", 0.02, 0.005) == ("b", ["a", "b"])


def test_the_default_stays_unless_beaten_by_more_than_the_margin():
    figures = table(a=(0.800, 0.90), b=(0.804, 0.90))
    assert choose.choose(figures, "a", 0.02, 0.005)[0] == "a"
    assert choose.choose(figures, "a", 0.02, 0.003)[0] == "b"


def test_a_default_whose_return_is_too_low_does_not_stay():
    figures = table(a=(0.90, 0.80), b=(0.70, 0.90))
    assert choose.choose(figures, "a", 0.02, 0.005) == ("b", ["b"])


def test_figures_average_each_agent_over_the_seeds():
    runs = [{"return": np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
             "eval": {"teacher_alone": {"return_mean": t}, "student_alone": {"return_mean": s}}}
            for t, s in [(0.8, 0.6), (0.9, 0.7)]]
    f = choose.figures(runs)
    assert (f["n"], f["T"], f["S"]) == (2, pytest.approx(0.85), pytest.approx(0.65))
    assert f["R"] == pytest.approx(0.8)  # the last five iterations: 0.6 .. 1.0
