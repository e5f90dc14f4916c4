"""The callbacks of a run, chosen from its config and what preflight found."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from simpletuner_pl.callbacks.checkpointing import AdapterExport, FinalCheckpoint
from simpletuner_pl.callbacks.evaluation import evaluation_callbacks
from simpletuner_pl.callbacks.offload import offload_callbacks
from simpletuner_pl.callbacks.progress import StepProgressBar
from simpletuner_pl.callbacks.prompts import ValidationPlan
from simpletuner_pl.callbacks.timing import StepTimer
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.data.caching import BuildCaches
from simpletuner_pl.data.held_out import HeldOutImage


def build_callbacks(cfg: RunConfig, output_dir: Path, plan: Optional[ValidationPlan] = None,
                    held_out: Optional[List[HeldOutImage]] = None) -> List[L.Callback]:
    train = cfg.train
    checkpoint_dir = output_dir / "checkpoints"
    return [
        BuildCaches(),
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
    ] + evaluation_callbacks(cfg, output_dir, plan, held_out) + offload_callbacks(cfg.offload)
