"""Checkpoints: one directory per completed iteration, `<output_dir>/checkpoints/iter_NNNNNN/`,
holding `trainer.pt` (the loop's state: student, optimizers, RNGs, environments) and, when the
teacher learns, `teacher.pt` (its trainable weights and optimizer, written by its updater).
A checkpoint is staged beside its final name and renamed into place, so a kill never leaves a
half-written one where resuming looks."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger("bidir")

TRAINER_FILE = "trainer.pt"
TEACHER_FILE = "teacher.pt"


def find(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run that loads; broken ones (a kill mid-write) are skipped."""
    root = Path(output_dir) / "checkpoints"
    for candidate in sorted(root.glob("iter_*[0-9]"), reverse=True) if root.exists() else []:
        try:  # mmap reads the archive's index, not the tensors: a truncated file still fails here
            torch.load(candidate / TRAINER_FILE, weights_only=True, mmap=True)
            if (candidate / TEACHER_FILE).exists():
                torch.load(candidate / TEACHER_FILE, weights_only=True, mmap=True)
            return candidate
        except Exception as error:  # noqa: BLE001 - any unreadable file means "not this one"
            log.warning("skipping unreadable checkpoint %s (%s)", candidate, error)
    return None


def load(checkpoint: Path) -> dict:
    """The loop's state saved in `checkpoint` (the teacher's is loaded by the teacher itself)."""
    return torch.load(Path(checkpoint) / TRAINER_FILE, weights_only=True)


def save(output_dir: Path, iteration: int, state: dict, teacher=None, keep: int = 3) -> Path:
    """Writes the checkpoint of `iteration` (the loop's `state`, and `teacher`'s when given),
    renames it into place, prunes all but the newest `keep`, and returns its directory."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"iter_{iteration:06d}"
    staging = final.with_name(final.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if teacher is not None:
        teacher.save(staging / TEACHER_FILE)
    torch.save(state, staging / TRAINER_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in sorted(root.glob("iter_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def drop_staged(output_dir: Path):
    """Removes checkpoints cut short by a kill: they are never resumed from."""
    for staged in (Path(output_dir) / "checkpoints").glob("iter_*.tmp"):
        shutil.rmtree(staged, ignore_errors=True)
