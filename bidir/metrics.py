"""What a run records per iteration: `metrics.csv` (one row per iteration) and W&B, under the same
names, and the wall time of each phase of an iteration."""
from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from bidir.run_files import keep_aside

FIRST_COLUMNS = ("iteration", "frames", "success_rate", "return_mean", "episode_length_mean", "episodes",
                 "wall_time_s")
"""The columns every run has, first; the others are what the updates of the run's method return."""


class Phases:
    """Wall time per phase of an iteration: `with phases("env"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._name = None

    def __call__(self, name):
        self._name = name
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._start


class MetricsLog:
    """metrics.csv and the W&B run. Columns are those of the first row written (FIRST_COLUMNS,
    then the rest in the order the row has them); a resumed run keeps its file's columns and
    the rows up to its checkpoint (the file as it was is kept aside when it had more)."""

    def __init__(self, config, iteration: int, wandb_id: str | None):
        self.path = Path(config.rl_script_args.output_dir) / "metrics.csv"
        self.columns, rows = None, []
        if self.path.exists() and iteration > 0:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = reader.fieldnames
                rows = list(reader)
            # rows 1..iteration (checked by run_files.check_run_dir); any past the checkpoint (a kill
            # before it was written) are recomputed, and the file that had them is kept aside
            if len(rows) > iteration:
                keep_aside(self.path)
            rows = rows[:iteration]
        with self.path.open("w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        self.wandb_id = wandb_id or uuid.uuid4().hex[:12]  # kept in checkpoints: a resumed run continues it
        self.wandb = None
        if config.wandb.mode != "disabled":
            import wandb

            args = config.rl_script_args
            self.wandb = wandb.init(
                project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
                name=Path(args.output_dir).name, tags=[args.method, f"seed{args.seed}"], mode=config.wandb.mode,
                id=self.wandb_id, resume="allow", dir=str(args.output_dir),
                config=OmegaConf.to_container(config, resolve=True),
                settings=wandb.Settings(silent=True, console="off"))  # no progress bars in its log

    def write(self, row: dict):
        """Appends one iteration's row and sends it to W&B under the same keys. A key the file has
        no column for is an error, not a silent loss."""
        new = self.columns is None
        if new:
            self.columns = [*FIRST_COLUMNS, *(key for key in row if key not in FIRST_COLUMNS)]
        unknown = [key for key in row if key not in self.columns]
        if unknown:
            raise ValueError(f"metrics {unknown} have no column in {self.path} (columns: {self.columns})")
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.wandb:
            self.wandb.log({k: v for k, v in row.items() if v == v}, step=row["frames"])

    def summarize(self, headline: dict):
        """The W&B run's summary holds the run's headline figures (`report.finish_run`'s: the final
        return, the frames to the threshold, the final held-out evaluation under `eval`, the teacher
        before training included), and not the last of the periodic 10-episode evaluations, which W&B
        would otherwise keep beside the final one under a name that reads as the same figure."""
        if self.wandb:
            for key in [key for key in self.wandb.summary.keys() if key.startswith("eval_")]:
                del self.wandb.summary[key]
            self.wandb.summary.update(headline)

    def close(self):
        """Finishes the W&B run."""
        if self.wandb:
            self.wandb.finish()
