"""Recompute every committed study's tables from its committed per-run data.

    python experiments/recompute.py            # rewrite each study's results.md, results.json, claims.md,
                                               # agents.md (where runs evaluated each agent), levels.md
                                               # (where runs were evaluated on a mix), comparison.png
    python experiments/recompute.py --check    # rewrite nothing; exit 1 naming each table that differs

A study is a folder `experiments/<study>/` holding its per-run data, of one of two kinds:
- training runs, `runs/<group>/seed<N>/` (each run's metrics.csv, eval.json, eval_start.json where
  the teacher learns, and config.yaml, as the run wrote them): its tables are what `bidir-compare`
  and `experiments/claims.py` make of those runs (agents.md: `bidir-compare`'s table of each
  agent's held-out curve);
- evaluation episodes, `episodes/*.json` (`prompting.py`), or `<level>/episodes/*.json` for
  several levels: its table is what `prompting.py` makes of them, and `agreement.md` what
  `prompting_agreement.py` makes of `agreement.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bidir.compare import agents_markdown, levels_markdown, markdown, plot, summarize
from bidir.run_data import load_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import claims_table  # noqa: E402
from prompting import tables as prompting_tables  # noqa: E402
from prompting_agreement import agreement_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent  # experiments/: one folder per study


def studies(root: Path = RESULTS) -> list[Path]:
    """The study folders that hold per-run data."""
    patterns = ("*/runs", "*/episodes", "*/*/episodes")  # episodes of several levels: <study>/<level>/episodes
    return sorted(path.parent for pattern in patterns for path in root.glob(pattern) if path.is_dir())


def tables(study: Path) -> dict[str, str]:
    """The study's tables recomputed from its per-run data: file name -> text."""
    if (study / "episodes").is_dir():
        texts = prompting_tables(study)
        if (study / "agreement.json").exists():
            texts["agreement.md"] = agreement_table(json.loads((study / "agreement.json").read_text()))
        return texts
    runs = load_runs([str(study / "runs" / "*" / "seed*")])
    table = summarize(runs)
    texts = {"results.md": markdown(table) + "\n", "results.json": json.dumps(table, indent=2),
             "claims.md": claims_table(runs) + "\n"}
    extra = {"agents.md": agents_markdown(runs), "levels.md": levels_markdown(runs)}
    return texts | {name: text + "\n" for name, text in extra.items() if text}


def main(argv=None) -> int:
    """CLI: rewrite the tables, or with --check report those that differ (exit 1)."""
    parser = argparse.ArgumentParser(prog="recompute.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed tables, write nothing")
    parser.add_argument("--root", type=Path, default=RESULTS, help="the folder of the studies")
    options = parser.parse_args(argv)
    found = studies(options.root)
    if not found:
        parser.exit(2, f"recompute.py: error: no study with per-run data (runs/) under {options.root}\n")
    differing = []
    for study in found:
        try:
            texts = tables(study)
        except ValueError as error:  # no runs in runs/, or a run file that cannot be read: one line, nothing written
            parser.exit(2, f"recompute.py: error: {study}: {error}\n")
        for name, text in texts.items():
            path = study / name
            if options.check:
                if not path.exists() or path.read_text() != text:
                    differing.append(str(path))
            else:
                path.write_text(text)
        if not options.check and (study / "runs").is_dir():
            plot(load_runs([str(study / "runs" / "*" / "seed*")]), study / "comparison.png", title=study.name)
        print(f"{study.relative_to(options.root)}: {'checked' if options.check else 'written'}")
    for path in differing:
        print(f"recompute.py: {path} differs from what its runs give (rerun without --check to rewrite it)",
              file=sys.stderr)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
