"""A sweep's choice by the rule written in its grid before the runs:

    python experiments/choose.py "runs/feedback-sweep-short/*/seed*" --default bidir \
        --candidates bidir bidir-all-own bidir-all-student [--tolerance 0.02] [--margin 0.005]

Per candidate (a group as bidir-compare groups runs), over its seeds: T, the teacher alone's held-out
return (eval.json; the student alone's where the method has no teacher), R, the final return (mean of
the last 5 iterations), and S, the student alone's held-out return where there is one (reported,
not used). Among the candidates whose R is within `tolerance` of the best R, the one with the
highest T is chosen; it replaces the default only if its T beats the default's by more than
`margin` (and the default is itself among them); otherwise the default stays.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from bidir.compare import mean_ci
from bidir.run_data import load_runs

from claims import final_return, held_out


def figures(group: list[dict]) -> dict[str, float]:
    """T, R and S (see the module's docstring) averaged over the group's runs, with n."""
    teacher = [held_out("teacher_alone")(r) for r in group]
    if np.isnan(teacher).all():
        teacher = [held_out("student_alone")(r) for r in group]
    return {"T": float(np.mean(teacher)), "R": float(np.mean([final_return(r) for r in group])),
            "S": float(np.mean([held_out("student_alone")(r) for r in group])),
            "n": len(group), "T_ci": mean_ci(teacher)[1]}


def choose(table: dict[str, dict], default: str, tolerance: float, margin: float) -> tuple[str, list[str]]:
    """The chosen candidate and the candidates within `tolerance` of the best R."""
    best_return = max(f["R"] for f in table.values())
    eligible = [name for name, f in table.items() if f["R"] >= best_return - tolerance]
    best = max(eligible, key=lambda name: table[name]["T"])
    if default in eligible and table[best]["T"] <= table[default]["T"] + margin:
        best = default
    return best, eligible


def main(argv=None) -> int:
    """CLI: prints the candidates' figures and the choice."""
    parser = argparse.ArgumentParser(prog="choose.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or glob patterns")
    parser.add_argument("--candidates", nargs="+", required=True, help="the groups the rule chooses among")
    parser.add_argument("--default", required=True, help="the candidate that stays unless beaten")
    parser.add_argument("--tolerance", type=float, default=0.02, help="how far below the best R a candidate may be")
    parser.add_argument("--margin", type=float, default=0.005, help="how far T must beat the default's")
    options = parser.parse_args(argv)
    try:
        runs = load_runs(options.runs)
    except ValueError as error:
        parser.exit(2, f"choose.py: error: {error}\n")
    missing = [c for c in [*options.candidates, options.default] if c not in runs]
    if missing:
        parser.exit(2, f"choose.py: error: no runs for {', '.join(missing)}; groups found: {', '.join(runs)}\n")
    table = {name: figures(runs[name]) for name in options.candidates}
    chosen, eligible = choose(table, options.default, options.tolerance, options.margin)
    print("| candidate | n | T: teacher alone, held out | R: final return | S: student alone, held out |")
    print("|---|---|---|---|---|")
    for name, f in table.items():
        mark = " (chosen)" if name == chosen else "" if name in eligible else " (R too low)"
        student = "" if np.isnan(f["S"]) else f"{f['S']:.3f}"
        print(f"| {name}{mark} | {f['n']} | {f['T']:.3f} ± {f['T_ci']:.3f} | {f['R']:.3f} | {student} |")
    print(f"\nchosen: {chosen} (R within {options.tolerance} of the best: {', '.join(eligible)}; "
          f"the default {options.default} stays unless beaten on T by more than {options.margin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
