"""Checkpoints: one directory per completed iteration, `<output_dir>/checkpoints/iter_NNNNNN/`,
holding `trainer.pt` (the loop's state: student, optimizers, RNGs, environments), when the
teacher learns `teacher.pt` (its trainable weights and optimizer, written by its updater), and
`manifest.json`, written last: every other file's size and SHA-256. A checkpoint is complete when
its manifest matches its files; anything else (a kill mid-write, a file deleted, truncated or
altered since) is not a checkpoint, and is named and skipped.

A checkpoint is staged beside its final name and renamed into place, so a kill never leaves a
half-written one where resuming looks. Checkpoints written before manifests existed are accepted
when their files load (and hold the teacher where the run's teacher learns)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger("bidir")

TRAINER_FILE = "trainer.pt"
TEACHER_FILE = "teacher.pt"
MANIFEST_FILE = "manifest.json"


def iteration_of(checkpoint: Path) -> int:
    """The iteration a checkpoint directory (`iter_NNNNNN`) was saved after."""
    return int(Path(checkpoint).name.rsplit("_", 1)[-1])


def candidates(output_dir: Path) -> list[Path]:
    """A run's checkpoint directories, newest first (staged ones, `.tmp`, are none)."""
    root = Path(output_dir) / "checkpoints"
    return sorted(root.glob("iter_*[0-9]"), reverse=True) if root.is_dir() else []


def problem(checkpoint: Path, needs_teacher: bool = False) -> str | None:
    """Why `checkpoint` is not a complete checkpoint (one phrase), or None when it is one.
    `needs_teacher`: the run's teacher learns, so its checkpoints must hold teacher.pt."""
    checkpoint = Path(checkpoint)
    manifest_path = checkpoint / MANIFEST_FILE
    if not manifest_path.exists():
        return _legacy_problem(checkpoint, needs_teacher)
    try:
        files = json.loads(manifest_path.read_text())["files"]
        expected = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST_FILE} is unreadable"
    if needs_teacher and TEACHER_FILE not in expected:
        return f"it holds no {TEACHER_FILE} (the teacher's weights)"
    for name, (size, digest) in expected.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} written"
        if _sha256(path) != digest:
            return f"{name} differs from what was written (SHA-256)"
    return None


def _legacy_problem(checkpoint: Path, needs_teacher: bool) -> str | None:
    """A checkpoint without a manifest (written before them, or cut short): complete when its
    files load; mmap reads an archive's index, not its tensors, so a truncated file still fails."""
    required = [TRAINER_FILE] + ([TEACHER_FILE] if needs_teacher or (checkpoint / TEACHER_FILE).exists() else [])
    for name in required:
        if not (checkpoint / name).is_file():
            return f"{name} is missing (and it has no {MANIFEST_FILE})"
        try:
            torch.load(checkpoint / name, weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file means "not this one"
            return f"{name} does not load ({type(error).__name__})"
    return None


def scan(output_dir: Path, needs_teacher: bool = False) -> tuple[Path | None, list[str]]:
    """(the newest complete checkpoint of a run or None, a line for each newer one skipped)."""
    skipped = []
    for candidate in candidates(output_dir):
        why = problem(candidate, needs_teacher)
        if why is None:
            return candidate, skipped
        skipped.append(f"{candidate.name}: {why}")
    return None, skipped


def find(output_dir: Path, needs_teacher: bool = False) -> Path | None:
    """The newest complete checkpoint of a run (see `problem`); each newer one is named in a
    warning and skipped."""
    latest, skipped = scan(output_dir, needs_teacher)
    for line in skipped:
        log.warning("skipping incomplete checkpoint %s", line)
    return latest


def load(checkpoint: Path) -> dict:
    """The loop's state saved in `checkpoint` (the teacher's is loaded by the teacher itself)."""
    return torch.load(Path(checkpoint) / TRAINER_FILE, weights_only=True)


def save(output_dir: Path, iteration: int, state: dict, teacher=None, keep: int = 3) -> Path:
    """Writes the checkpoint of `iteration` (the loop's `state`, and `teacher`'s when given) and
    its manifest last, renames it into place, prunes all but the newest `keep`, and returns its
    directory."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"iter_{iteration:06d}"
    staging = final.with_name(final.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if teacher is not None:
        teacher.save(staging / TEACHER_FILE)
    torch.save(state, staging / TRAINER_FILE)
    write_manifest(staging, iteration)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in sorted(root.glob("iter_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(checkpoint: Path, iteration: int):
    """Lists every file of `checkpoint` with its size and SHA-256 in its manifest."""
    files = {path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
             for path in sorted(Path(checkpoint).iterdir()) if path.is_file() and path.name != MANIFEST_FILE}
    (Path(checkpoint) / MANIFEST_FILE).write_text(json.dumps({"iteration": iteration, "files": files}, indent=1))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_staged(output_dir: Path):
    """Removes checkpoints cut short by a kill: they are never resumed from."""
    for staged in (Path(output_dir) / "checkpoints").glob("iter_*.tmp"):
        shutil.rmtree(staged, ignore_errors=True)
