"""Crash-safe checkpoints and adapter exports.

Lightning serialises a checkpoint in memory and then streams it to its final path, so a crash or Ctrl-C during
the write would truncate `last.ckpt`. `AtomicCheckpointIO` writes beside the target and renames (with fsync), so
the previous good file survives until the new one is complete. `AdapterExport` writes diffusers-format adapters
(`adapter/step_N/` and, at the end, `adapter/`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from simpletuner_pl.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path, durable=True) as tmp:
            torch.save(checkpoint, tmp)


class AdapterExport(L.Callback):
    def __init__(self, output_dir: str | os.PathLike, every_n_steps: int):
        self.adapter_dir = Path(output_dir) / "adapter"
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (self.every_n_steps and step and step % self.every_n_steps == 0 and trainer.is_global_zero
                and not (self.adapter_dir / f"step_{step}").exists()):
            pl_module.export_adapter(self.adapter_dir / f"step_{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.export_adapter(self.adapter_dir)


class FinalCheckpoint(L.Callback):
    """Make `checkpoints/last.ckpt` hold the final step even when max_steps is not a checkpoint multiple."""

    def __init__(self, checkpoint_dir: str | os.PathLike):
        self.last = Path(checkpoint_dir) / "last.ckpt"

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        trainer.save_checkpoint(self.last)  # adapter-only checkpoints: a repeat save costs milliseconds
