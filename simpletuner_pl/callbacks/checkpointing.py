"""Crash-safe checkpoints, the run record inside them, and adapter exports.

`RunCheckpoint` is Lightning's ModelCheckpoint with one `last.ckpt` that is always the newest (no `last-v1`), plus a
checkpoint when training ends off the saving schedule or is stopped by a signal at a step boundary.
`AtomicCheckpointIO` writes beside the target and renames (with fsync), so a crash, a kill or a full disk mid-write
leaves the previous good file. `RunRecord` stores the run's config in every checkpoint, so a resume can refuse a
changed setup before any weight loads (`simpletuner_pl.resume`). `AdapterExport` writes diffusers-format adapters
(`adapter/step_N/` and, at the end, `adapter/`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from simpletuner_pl.config.schema import RunConfig, TrainConfig
from simpletuner_pl.io import atomic_path
from simpletuner_pl.resume import RECORD


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path, durable=True) as tmp:
            torch.save(checkpoint, tmp)


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, checkpoint_dir: Path, train: TrainConfig):
        keep = train.checkpoints_total_limit if train.checkpoints_total_limit is not None else -1
        super().__init__(dirpath=checkpoint_dir, filename="step={step}", auto_insert_metric_name=False,
                         every_n_train_steps=train.checkpoint_every_n_steps, save_last=True, save_top_k=keep,
                         monitor="step", mode="max", enable_version_counter=False)

    def save_now(self, trainer: L.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.save_now(trainer)  # max_steps off the schedule, max_time, max_epochs

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # raised at a step boundary: the state is consistent
            self.save_now(trainer)


class RunRecord(L.Callback):
    """The run's config (and the package version) inside every checkpoint, as plain containers."""

    def __init__(self, cfg: RunConfig):
        self.record = {"config": dataclasses.asdict(cfg), "version": metadata.version("simpletuner_pl")}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RECORD] = self.record


class AdapterExport(L.Callback):
    def __init__(self, output_dir: str | os.PathLike, every_n_steps: int):
        self.adapter_dir = Path(output_dir) / "adapter"
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self.export(trainer, pl_module, self.adapter_dir / f"step_{step}", keep_existing=True)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.export(trainer, pl_module, self.adapter_dir)

    @staticmethod
    def export(trainer: L.Trainer, pl_module, directory: Path, keep_existing: bool = False) -> None:
        """Written by rank 0; where the weights are sharded (strategy=fsdp, ZeRO-3) every rank first takes part in
        gathering the trainable ones (`strategies.*.gathered_trainables`)."""
        gather = getattr(trainer.strategy, "gathered_trainables", None)
        with gather(pl_module) if gather else contextlib.nullcontext():
            if trainer.is_global_zero and not (keep_existing and directory.exists()):
                pl_module.export_adapter(directory)
