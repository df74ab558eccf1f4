"""The study's claims as paired differences over seeds:

    python experiments/claims.py "runs/offline-short/*/seed*" [--out claims.md]

Each line compares two groups (methods or variants, as bidir-compare groups them) on one figure:
both groups' mean ± 95% CI with n, and the mean ± 95% CI of the per-seed difference A - B over
the seeds both ran (same seed, same training environments; held-out episodes are the same for
every run). A comparison whose groups are missing is skipped. Convergence is measured at the runs'
return threshold (`rl_script_args.return_threshold`, suited to their level; 0.8 unless set).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bidir.compare import final_mean, frames_to_return, mean_ci, paired_difference, smooth
from bidir.run_data import load_runs, return_threshold


def final_return(run, last=5):
    """Mean return over the run's last `last` iterations."""
    return final_mean(run["return"], last)


def frames_to_threshold(run):
    """Frames until the 5-iteration episode-weighted mean return reaches the run's return threshold
    (NaN: never)."""
    return frames_to_return(run["frames"], run["return"], run["episodes"], run["return_threshold"])


def return_last_50(run):
    """Episode-weighted mean return over the run's last 50 iterations (all of them if fewer): at
    long budgets a steadier figure than the last 5."""
    return float(smooth(run["return"], run["episodes"], min(50, len(run["return"])))[-1])


def lowest_after_threshold(run):
    """Stability: the lowest 5-iteration episode-weighted mean return from the iteration where it
    first reached the run's return threshold on (NaN: never reached)."""
    curve = smooth(run["return"], run["episodes"], 5)
    reached = np.flatnonzero(curve >= run["return_threshold"])
    return float(np.nanmin(curve[reached[0]:])) if len(reached) else float("nan")


def held_out(mode):
    """The held-out mean return of `mode` (eval.json), NaN when the run has none."""
    return lambda run: float(run["eval"].get(mode, {}).get("return_mean", np.nan))


def held_out_on(level, mode):
    """The held-out mean return of `mode` on one level of a mix (eval.json's `levels`), NaN when
    the run has none or drew no episode of that level."""
    return lambda run: float(run["eval"].get(mode, {}).get("levels", {}).get(level, {}).get("return_mean", np.nan))


TO_THRESHOLD = "frames to return {threshold}"
AFTER_THRESHOLD = "lowest 5-iteration return after reaching {threshold}"
FIGURES = {  # a name with {threshold} gets the runs' return threshold in the table
    "final return": final_return,
    TO_THRESHOLD: frames_to_threshold,
    "return, last 50 iterations (or all)": return_last_50,
    AFTER_THRESHOLD: lowest_after_threshold,
    "held-out return, student alone": held_out("student_alone"),
    "held-out return, teacher alone": held_out("teacher_alone"),
    "held-out return, student with teacher": held_out("student_with_teacher"),
    "held-out return, teacher alone - teacher at start": lambda run: (held_out("teacher_alone")(run)
                                                                      - held_out("teacher_at_start")(run)),
}

COMPARISONS = [  # (claim, A, B, figures)
    ("paper: bidir vs glam", "bidir", "glam",
     ["final return", TO_THRESHOLD, "return, last 50 iterations (or all)",
      AFTER_THRESHOLD]),
    ("teacher -> student: bidir's student vs the RL-only student", "bidir", "student",
     ["held-out return, student alone", "final return", TO_THRESHOLD, "return, last 50 iterations (or all)"]),
    ("student -> teacher: bidir's teacher vs the frozen teacher (t2s)", "bidir", "t2s",
     ["held-out return, teacher alone"]),
    ("student -> teacher: each teacher's gain over its start", "bidir", "glam",
     ["held-out return, teacher alone - teacher at start"]),
    ("student -> teacher: bidir's teacher vs glam's", "bidir", "glam", ["held-out return, teacher alone"]),
    ("the critique's own effect: bidir vs bidir without it", "bidir", "bidir-no-critique",
     ["held-out return, teacher alone", "held-out return, student alone", "final return", TO_THRESHOLD]),
    ("ablation: bidir vs bidir without the acting mixture", "bidir", "bidir-no-mixture",
     ["final return", TO_THRESHOLD, "held-out return, teacher alone", "held-out return, student alone"]),
    ("ablation: bidir vs bidir without distillation", "bidir", "bidir-no-distill",
     ["final return", TO_THRESHOLD, "held-out return, student alone"]),
    ("ablation: bidir vs bidir with the hand-over at the end of the budget", "bidir", "bidir-late-handover",
     ["final return", TO_THRESHOLD, "held-out return, teacher alone", "held-out return, student alone"]),
    ("the prior's own effect: bidir vs bidir with an untrained teacher", "bidir", "bidir-no-prior",
     ["held-out return, teacher alone", "held-out return, student alone", "final return"]),
    ("the critique only where the student is surer: bidir with it vs bidir", "bidir-critique-surer", "bidir",
     ["held-out return, teacher alone", "held-out return, student alone", "final return",
      "return, last 50 iterations (or all)"]),
    ("the critique only where the student is surer: its teacher vs glam's", "bidir-critique-surer", "glam",
     ["held-out return, teacher alone"]),
    ("the teacher's rate: bidir at glam's teacher_lr 1e-4 vs bidir", "bidir-teacher-lr-1e-4", "bidir",
     ["held-out return, teacher alone", "held-out return, student alone", "final return",
      "return, last 50 iterations (or all)"]),
    ("the teacher's rate: bidir's teacher at glam's teacher_lr vs the frozen teacher (t2s)", "bidir-teacher-lr-1e-4",
     "t2s", ["held-out return, teacher alone"]),
    ("the teacher's rate: bidir's teacher at glam's teacher_lr vs glam's", "bidir-teacher-lr-1e-4", "glam",
     ["held-out return, teacher alone"]),
    ("a floor on the teacher's share of acting: bidir with it vs bidir", "bidir-share-floor", "bidir",
     ["held-out return, teacher alone", "held-out return, student alone", "final return",
      "return, last 50 iterations (or all)"]),
    ("a floor on the teacher's share of acting: its teacher vs glam's", "bidir-share-floor", "glam",
     ["held-out return, teacher alone"]),
    ("a floor at glam's teacher_lr: bidir at 1e-4 with it vs without it", "bidir-teacher-lr-1e-4-share-floor",
     "bidir-teacher-lr-1e-4", ["held-out return, teacher alone", "held-out return, student alone", "final return",
                               "return, last 50 iterations (or all)"]),
    ("a floor at glam's teacher_lr: its teacher vs glam's", "bidir-teacher-lr-1e-4-share-floor", "glam",
     ["held-out return, teacher alone"]),
    ("t2s vs the RL-only student", "t2s", "student", ["held-out return, student alone", "final return"]),
]

LEVEL_COMPARISONS = [  # (claim, A, B, mode): on a mix, the held-out figure of mode on each level
    ("teacher -> student: bidir's student vs the RL-only student", "bidir", "student", "student_alone"),
    ("student -> teacher: bidir's teacher vs the frozen teacher (t2s)", "bidir", "t2s", "teacher_alone"),
    ("student -> teacher: bidir's teacher vs glam's", "bidir", "glam", "teacher_alone"),
    ("the teacher's rate: bidir's teacher at glam's teacher_lr vs glam's", "bidir-teacher-lr-1e-4", "glam",
     "teacher_alone"),
    ("a floor on the teacher's share of acting: its teacher vs glam's", "bidir-share-floor", "glam", "teacher_alone"),
    ("a floor at glam's teacher_lr: its teacher vs glam's", "bidir-teacher-lr-1e-4-share-floor", "glam",
     "teacher_alone"),
]


def teacher_frames_to(threshold: float):
    """The figure: frames until the teacher alone's held-out return during training
    (`eval_teacher_alone_return`, every `eval_every` iterations) first reaches `threshold` (NaN: never)."""
    def figure(run):
        curve = run.get("agents", {}).get("eval_teacher_alone_return")
        reached = np.flatnonzero(curve >= threshold) if curve is not None else []
        return float(run["frames"][reached[0]]) if len(reached) else float("nan")
    return figure


def _fmt(mean, ci, n, digits):
    if mean != mean:
        return f"n/a (n={n})"
    return f"{mean:.{digits}f} ± {ci:.{digits}f} (n={n})" if n > 1 else f"{mean:.{digits}f} (n=1)"


def claims_table(runs: dict) -> str:
    """The comparisons as a Markdown table."""
    lines = ["| claim | figure | A | B | A - B (paired by seed) |", "|---|---|---|---|---|"]
    figures_by_name, comparisons = dict(FIGURES), list(COMPARISONS)
    if "glam" in runs:  # how soon each teacher plays as well as PPO alone made the LLM play in the end
        threshold = float(np.nanmean([held_out("teacher_alone")(r) for r in runs["glam"]]))
        name = f"frames for the teacher alone to reach glam's final teacher-alone return ({threshold:.3f})"
        figures_by_name[name] = teacher_frames_to(threshold)
        comparisons.append(("student -> teacher: how soon bidir's teacher plays as glam's ends", "bidir", "glam", [name]))
    levels = dict.fromkeys(level for group in runs.values() for r in group for result in r["eval"].values()
                           for level in result.get("levels", {}))
    for claim, a, b, mode in LEVEL_COMPARISONS if levels else []:  # a mix: which of its tasks each agent learned
        names = [f"held-out return on {level}, {mode.replace('_', ' ')}" for level in levels]
        figures_by_name |= {name: held_out_on(level, mode) for name, level in zip(names, levels)}
        comparisons.append((f"{claim}, on each level of the mix", a, b, names))
    level_threshold = f"{return_threshold(runs):g}"
    for claim, a, b, figures in comparisons:
        if a not in runs or b not in runs:
            continue
        for key in figures:
            figure, name = figures_by_name[key], key.format(threshold=level_threshold)
            digits = 0 if name.startswith("frames") else 3
            cells = []
            for group in (a, b):
                values = [figure(r) for r in runs[group]]
                reached = [v for v in values if v == v]
                cells.append(_fmt(*mean_ci(reached), len(reached), digits)
                             + (f", reached {len(reached)}/{len(values)}" if name.startswith("frames") else ""))
            mean, ci, n = paired_difference(runs[a], runs[b], figure)
            lines.append(f"| {claim} | {name} | {a}: {cells[0]} | {b}: {cells[1]} | {_fmt(mean, ci, n, digits)} |")
    return "\n".join(lines)


def main(argv=None):
    """CLI: print (and optionally write) the claims table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or glob patterns (quote them)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    options = parser.parse_args(argv)
    if options.out:
        existing = options.out.absolute().parent  # the directory the table goes to, or one it will be made in
        while not existing.exists():
            existing = existing.parent
        if options.out.is_dir() or not existing.is_dir():
            parser.error(f"--out {options.out}: {options.out if options.out.is_dir() else existing} is "
                         f"{'a directory' if options.out.is_dir() else 'a file'}; name a file to write, "
                         "e.g. experiments/<study>/claims.md")
    try:
        table = claims_table(load_runs(options.runs))
    except ValueError as error:  # no runs, a run file that cannot be read, or runs of two thresholds
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(table)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
