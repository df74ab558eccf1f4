"""experiments/recompute.py: every committed study table is what its committed per-run data give,
and a change to that data is caught."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import recompute  # noqa: E402


@pytest.mark.slow  # 17 s: every study's tables
def test_committed_tables_are_recomputed_from_committed_runs(capsys):
    assert recompute.studies(), "no committed study has per-run data"
    assert recompute.main(["--check"]) == 0, capsys.readouterr().err


def test_a_changed_run_is_caught(tmp_path, capsys):
    study = next(s for s in recompute.studies() if (s / "runs").is_dir())
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    metrics = sorted(copy.glob("runs/*/seed*/metrics.csv"))[0]
    lines = metrics.read_text().splitlines()
    header, last = lines[0].split(","), lines[-1].split(",")
    column = header.index("return_mean")
    last[column] = str(float(last[column]) / 2 if last[column] else 0.5)
    metrics.write_text("\n".join(lines[:-1] + [",".join(last)]) + "\n")
    assert recompute.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"{copy / 'results.md'} differs" in capsys.readouterr().err


def test_no_study_is_an_error(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        recompute.main(["--check", "--root", str(tmp_path)])
    assert exit_.value.code == 2


def test_a_study_without_runs_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "study" / "runs").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        recompute.main(["--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"recompute.py: error: {tmp_path / 'study'}: no run directories (with "
                                       f"config.yaml and metrics.csv) in {tmp_path / 'study' / 'runs' / '*' / 'seed*'}\n")
    assert [p.name for p in (tmp_path / "study").iterdir()] == ["runs"]


def test_a_changed_episode_is_caught(tmp_path, capsys):
    study = next(s for s in recompute.studies() if (s / "episodes" / "uniform_seed1001.json").exists())
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    path = copy / "episodes" / "uniform_seed1001.json"
    record = json.loads(path.read_text())
    record["episodes"][0]["return"] = 1.0 - record["episodes"][0]["return"]
    path.write_text(json.dumps(record))
    assert recompute.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"{copy / 'table.md'} differs" in capsys.readouterr().err


def test_each_level_of_a_study_of_levels_is_recomputed(tmp_path):
    for level in ("BabyAI-GoToLocal-v0", "BabyAI-GoToLocal-v0+BabyAI-PickupLoc-v0"):
        (tmp_path / "references" / level / "episodes").mkdir(parents=True)
    (tmp_path / "references" / "notes").mkdir()
    assert recompute.studies(tmp_path) == [tmp_path / "references" / "BabyAI-GoToLocal-v0",
                                           tmp_path / "references" / "BabyAI-GoToLocal-v0+BabyAI-PickupLoc-v0"]


def test_episodes_of_two_levels_in_one_table_are_refused(tmp_path):
    study = next(s for s in recompute.studies() if (s / "episodes" / "uniform_seed1001.json").exists())
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    path = copy / "episodes" / "uniform_seed1001.json"
    record = json.loads(path.read_text())
    level = record["env_id"]
    record["env_id"] = "BabyAI-ActionObjDoor-v0"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=re.escape(f"mixes episodes of BabyAI-ActionObjDoor-v0, {level}: one level per --out")):
        recompute.tables(copy)
