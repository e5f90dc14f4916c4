"""The callbacks of a run, chosen from its config."""

from __future__ import annotations

from pathlib import Path
from typing import List


def build_callbacks(cfg, output_dir: Path) -> List:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from simpletuner_pl.callbacks.checkpointing import AdapterExport, FinalCheckpoint
    from simpletuner_pl.callbacks.evaluation import evaluation_callbacks
    from simpletuner_pl.callbacks.progress import StepProgressBar
    from simpletuner_pl.callbacks.timing import StepTimer
    from simpletuner_pl.memory.placement import memory_callbacks

    train = cfg.train
    checkpoint_dir = output_dir / "checkpoints"
    return [
        ModelCheckpoint(
            dirpath=checkpoint_dir, filename="step={step}", auto_insert_metric_name=False,
            every_n_train_steps=train.checkpoint_every_n_steps, save_last=True,
            save_top_k=train.checkpoints_total_limit if train.checkpoints_total_limit is not None else -1,
            monitor="step", mode="max",
        ),
        FinalCheckpoint(checkpoint_dir),
        AdapterExport(output_dir, train.adapter_every_n_steps or train.checkpoint_every_n_steps),
        StepProgressBar(refresh_rate=max(1, min(train.log_every_n_steps, 10))),
        StepTimer(output_dir),
    ] + evaluation_callbacks(cfg, output_dir) + memory_callbacks(cfg)
