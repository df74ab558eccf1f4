"""A run directory damaged file by file (deleted, truncated, corrupted): each damage either
resumes with nothing lost (what is replaced is kept aside, history is never cut) or is refused
with exit code 2 and one exact line, leaving the directory as it was. Through the real entry
point (`bidir.train.main`), in this process (tests/entry.py)."""
import csv
import shutil

import pytest

from bidir.run_files import check_run_dir
from entry import run_main

TINY = ["rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=16", "rl_script_args.eval_episodes=2",
        "rl_script_args.eval_every=0", "wandb.mode=disabled", "rl_script_args.method=bidir"]
CHECKPOINT = "checkpoints/iter_000002/"
FIX = "restore it from a copy, or start afresh in a new rl_script_args.output_dir"


def train_main(out, iterations):
    """bidir.train's entry point on a run of `iterations` in `out`: its exit code, stdout and stderr."""
    return run_main("bidir.train", f"rl_script_args.output_dir={out}", *TINY, f"rl_script_args.iterations={iterations}")


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "fps") and not k.startswith("time_")}
                for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-iteration bidir run: config.yaml, metrics.csv, eval_start.json, eval.json,
    learning_curve.png and checkpoints iter_000001, iter_000002 (trainer.pt, teacher.pt, manifest.json)."""
    out = tmp_path_factory.mktemp("damaged") / "run"
    assert train_main(out, 2).returncode == 0
    return out


def damage(path, how):
    """Deletes, truncates (text: after half its lines and 3 characters of the next; binary: half its
    bytes) or corrupts (a value of the wrong type or garbage bytes) the file at `path`."""
    data = path.read_bytes()
    text = path.suffix in (".yaml", ".csv", ".json")
    lines = data.decode().split("\n") if text else []
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes("\n".join(lines[:len(lines) // 2] + [lines[len(lines) // 2][:3]]).encode() if text
                         else data[:len(data) // 2])
    elif path.name == "config.yaml":
        path.write_text(data.decode().replace("  n_envs: 2\n", "  n_envs: two\n"))
    elif path.name == "metrics.csv":  # a value of the first row
        cells = lines[1].split(",")
        cells[lines[0].split(",").index("return_mean")] = "#@!"
        path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]))
    elif text:
        lines[len(lines) // 2] = "\x00#@!"
        path.write_text("\n".join(lines))
    else:  # bytes in the middle overwritten
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\x00#@!\x00" + data[middle + 5:])


REFUSED = {  # (file, damage): the error line; {out} is the run
    ("config.yaml", "delete"): f"cannot resume {{out}}: its config.yaml is missing (checkpoint iter_000002); {FIX}",
    ("config.yaml", "truncate"): "cannot resume {out}: its config.yaml: rl_script_args.instructions must be a list "
                                 "of strings, got [None]; restore it from a copy, or choose a new "
                                 "rl_script_args.output_dir",
    ("config.yaml", "corrupt"): "cannot resume {out}: its config.yaml: rl_script_args.n_envs must be an integer "
                                "(default: 8), got 'two'; restore it from a copy, or choose a new "
                                "rl_script_args.output_dir",
    ("metrics.csv", "delete"): f"cannot resume {{out}}: its metrics.csv is missing, and checkpoint iter_000002 is "
                               f"at iteration 2: iterations 1-2 would be lost; {FIX}",
    ("metrics.csv", "truncate"): f"cannot resume {{out}}: its metrics.csv holds iteration 1 (line 3 has fewer fields "
                                 f"than the header), but checkpoint iter_000002 is at iteration 2: iteration 2 would "
                                 f"be lost; {FIX}",
    ("metrics.csv", "corrupt"): f"cannot resume {{out}}: its metrics.csv holds no iteration (line 2: return_mean is "
                                f"'#@!', not a number), but checkpoint iter_000002 is at iteration 2: iterations 1-2 "
                                f"would be lost; {FIX}",
    ("eval_start.json", "truncate"): "cannot resume {out}: its eval_start.json is not JSON (Expecting property name "
                                     "enclosed in double quotes: line 6 column 4 (char 106)); restore it from "
                                     "a copy or delete it",
    ("eval_start.json", "corrupt"): "cannot resume {out}: its eval_start.json is not JSON (Expecting property name "
                                    "enclosed in double quotes: line 6 column 1 (char 103)); restore it from "
                                    "a copy or delete it",
}

FILES = ["config.yaml", "metrics.csv", "eval_start.json", "eval.json", "learning_curve.png",
         CHECKPOINT + "trainer.pt", CHECKPOINT + "teacher.pt", CHECKPOINT + "manifest.json"]


@pytest.mark.parametrize("how", ["delete", "truncate", "corrupt"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_resumes_with_nothing_lost_or_is_refused(finished, tmp_path, name, how):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    damage(out / name, how)
    before = snapshot(out)
    captured = train_main(out, 3)
    code = captured.returncode
    if (name, how) in REFUSED:
        assert code == 2 and captured.stderr.strip() == "bidir: error: " + REFUSED[name, how].format(out=out), captured.stderr
        assert snapshot(out) == before
        return
    assert code == 0, captured.stderr
    resumed = rows(out / "metrics.csv")
    assert [r["iteration"] for r in resumed] == ["1", "2", "3"]
    assert resumed[:2] == rows(finished / "metrics.csv")  # the history, recomputed bit-exact where it was redone
    if name.startswith(CHECKPOINT) and not (name.endswith("manifest.json") and how == "delete"):
        file, size = name.rsplit("/", 1)[1], (finished / name).stat().st_size
        why = {"delete": f"{file} is missing", "truncate": f"{file} has {size // 2} bytes, not the {size} written",
               "corrupt": f"{file} differs from what was written (SHA-256)"}[how]
        if file == "manifest.json":
            why = "its manifest.json is unreadable"
        assert f"skipping incomplete checkpoint iter_000002: {why}" in captured.stdout + captured.stderr
        assert (out / "metrics.1.csv").read_bytes() == before["metrics.csv"]  # the rows redone, kept aside
    if name == "eval.json" and how != "delete":
        assert (out / "eval.1.json").read_bytes() == before["eval.json"]
    assert check_run_dir(out, needs_teacher=True).name == "iter_000003"


def test_a_run_whose_checkpoints_are_all_incomplete_is_refused(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    for teacher in (out / "checkpoints").glob("iter_*/teacher.pt"):
        teacher.unlink()
    before = snapshot(out)
    result = train_main(out, 3)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"bidir: error: cannot resume {out}: none of its checkpoints is complete (iter_000002: teacher.pt is missing; "
        f"iter_000001: teacher.pt is missing); restore them from a copy, or start afresh in a new "
        f"rl_script_args.output_dir")
    assert snapshot(out) == before


def test_history_without_checkpoints_is_never_overwritten(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints")
    before = snapshot(out)
    result = train_main(out, 3)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"bidir: error: cannot start in {out}: its metrics.csv holds iterations 1-2 but there is no checkpoint to "
        f"resume them from; restore checkpoints/ from a copy, or choose a new rl_script_args.output_dir")
    assert snapshot(out) == before
