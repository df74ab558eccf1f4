"""experiments/: one folder per study, each with a README that states its status, all listed in
the index (experiments/README.md), and every grid loadable by plan.py from its folder."""
import re
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import plan  # noqa: E402

STATUSES = {"current", "pilot", "sweep", "unfinished", "planned", "withdrawn"}
STUDIES = sorted(p for p in EXPERIMENTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def index_rows() -> dict[str, str]:
    """study -> status, from the index table's rows `| [`study`](study/README.md) | status | ...`."""
    rows = re.findall(r"^\| \[`([\w.-]+)`\]\(\1/README\.md\) \| (\w+) \|", (EXPERIMENTS / "README.md").read_text(), re.M)
    return dict(rows)


def test_the_index_lists_every_study_folder_and_nothing_else():
    assert sorted(index_rows()) == [p.name for p in STUDIES]


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_each_study_states_the_status_the_index_gives(study):
    readme = (study / "README.md").read_text()
    status = re.search(r"\*\*Status: (\w+)\*\*", readme)
    assert status, f"{study.name}/README.md has no **Status: ...** line"
    assert status.group(1) in STATUSES
    assert index_rows()[study.name] == status.group(1)


@pytest.mark.parametrize("grid", sorted(EXPERIMENTS.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_grid_is_a_valid_plan(grid):
    loaded = plan.load_grid(grid)
    assert plan.grid_runs(loaded, next(iter(loaded["budgets"])))


def test_a_study_folder_stands_for_its_grid():
    assert plan.load_grid(EXPERIMENTS / "levels-mix") == plan.load_grid(EXPERIMENTS / "levels-mix" / "grid.yaml")
