"""Step timing without host syncs: wall-clock between batch ends, summarised in `timings.json` at the end.

On an accelerator the host runs ahead of the device between syncs, so single-step times jitter, but their
median over a run is the throughput. The first batch's start time (Unix) lets a benchmark measure
launch-to-first-step from outside the process.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import lightning as L

from simpletuner_pl.io import write_json


class StepTimer(L.Callback):
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "timings.json"
        self.first_batch_start: float | None = None
        self.last_end: float | None = None
        self.step_seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch_start is None:
            self.first_batch_start = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.step_seconds.append(now - self.last_end)
            if trainer.global_step % trainer.log_every_n_steps == 0:
                pl_module.log("time/step_s", self.step_seconds[-1], on_step=True)
        self.last_end = now

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.step_seconds:
            return
        write_json(self.path, {
            "first_batch_start_unix": self.first_batch_start,
            "batches_timed": len(self.step_seconds),
            "median_step_s": statistics.median(self.step_seconds),
            "mean_step_s": statistics.fmean(self.step_seconds),
        })
