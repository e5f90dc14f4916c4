"""The callbacks of a run, chosen from its config and what preflight found."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L

from simpletuner_pl.callbacks.before_after import BeforeAfterGrid
from simpletuner_pl.callbacks.checkpointing import AdapterExport, RunCheckpoint, RunRecord
from simpletuner_pl.callbacks.evaluation import evaluation_callbacks
from simpletuner_pl.callbacks.hub_push import HubPush
from simpletuner_pl.callbacks.offload import offload_callbacks
from simpletuner_pl.callbacks.progress import StepProgressBar
from simpletuner_pl.callbacks.prompts import ValidationPlan
from simpletuner_pl.callbacks.randomness import RandomState
from simpletuner_pl.callbacks.signals import GracefulStop
from simpletuner_pl.callbacks.timing import StepTimer
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.data.caching import BuildCaches
from simpletuner_pl.data.held_out import HeldOutImage


def build_callbacks(cfg: RunConfig, output_dir: Path, plan: Optional[ValidationPlan] = None,
                    held_out: Optional[List[HeldOutImage]] = None) -> List[L.Callback]:
    train = cfg.train
    return [
        BuildCaches(),
        RandomState(cfg.seed),  # after BuildCaches: seeds (or restores) once the caches are filled
        GracefulStop(),
        RunRecord(cfg),
        RunCheckpoint(output_dir / "checkpoints", train),  # Lightning runs checkpoint callbacks last
        AdapterExport(output_dir, train.adapter_every_n_steps or train.checkpoint_every_n_steps),
        StepProgressBar(refresh_rate=max(1, min(train.log_every_n_steps, 10))),
        StepTimer(output_dir),
        *([BeforeAfterGrid(output_dir)] if plan is not None else []),  # step 0 | latest, per prompt
    ] + evaluation_callbacks(cfg, output_dir, plan, held_out) + offload_callbacks(cfg.offload) + (
        [HubPush(cfg.hub, output_dir)] if cfg.hub.push else [])  # on_fit_end: after everything is saved
