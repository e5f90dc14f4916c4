"""`metrics.csv` that survives a resume.

Lightning's CSVLogger deletes an existing metrics.csv when a run starts in the same folder, so resuming after a
crash would erase the history. Here a resumed run keeps every row logged before the checkpoint's step and
replaces only the rows after it (those steps are trained again).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from simpletuner_pl.io import atomic_path


class _ResumableWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: Optional[int]):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:
            path.unlink()  # a fresh run in an old folder starts a fresh log, as Lightning does
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step") and int(row["step"]) < self.resume_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header


class MetricsCSVLogger(CSVLogger):
    def __init__(self, save_dir: str | Path, resume_step: Optional[int] = None):
        super().__init__(save_dir, name="", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            Path(self.root_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self.resume_step)
        return self._experiment
