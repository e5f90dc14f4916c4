"""`run(cfg)`: the whole training job, from a composed config to a trained adapter on disk.

Order matters for the user: every check that can fail on bad input (config values, dataset folders, model
source) runs before the first weight is loaded, and heavy libraries are imported only after those checks.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from simpletuner_pl.config import validate
from simpletuner_pl.errors import ConfigError

log = logging.getLogger(__name__)

PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "no": "32-true"}


def resolve_resume(resume: Optional[str], checkpoint_dir: Path) -> Optional[str]:
    if resume is None:
        return None
    if resume == "latest":
        last = checkpoint_dir / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise ConfigError(f"train.resume={resume}: no such checkpoint file")
    return resume


def checkpoint_step(ckpt_path: Optional[str]) -> Optional[int]:
    if ckpt_path is None:
        return None
    import torch

    # mmap: a full fine-tune checkpoint holds the whole denoiser; only one integer is needed here.
    return torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"]


def build_trainer(cfg, output_dir: Path, resume_step: Optional[int] = None):
    import lightning as L

    from simpletuner_pl.callbacks import build_callbacks
    from simpletuner_pl.callbacks.checkpointing import AtomicCheckpointIO
    from simpletuner_pl.callbacks.metrics_log import MetricsCSVLogger
    from simpletuner_pl.optimizers import clip_value

    train = cfg.train
    kwargs = dict(
        max_steps=train.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=train.gradient_accumulation_steps,
        gradient_clip_val=clip_value(cfg),  # None for optimizers that bound their own updates
        gradient_clip_algorithm="norm",
        precision=PRECISION[train.mixed_precision],
        logger=MetricsCSVLogger(output_dir, resume_step),
        callbacks=build_callbacks(cfg, output_dir),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=output_dir,
        log_every_n_steps=train.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    overrides = {k: v for k, v in dataclasses.asdict(cfg.trainer).items() if v is not None}
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def run(cfg):
    """Train as configured; returns the fitted `lightning.Trainer` (its module holds the trained adapter)."""
    from simpletuner_pl.data.catalog import discover_all
    from simpletuner_pl.models.loading import check_model_sources

    from omegaconf import DictConfig

    composed_cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    cfg = OmegaConf.to_object(composed_cfg)  # typed dataclasses from here on (methods, no interpolation)
    validate(cfg)
    output_dir = Path(cfg.output_dir)
    catalog = discover_all(cfg)  # every data error surfaces here, before any model source is touched
    check_model_sources(cfg.model)
    ckpt_path = resolve_resume(cfg.train.resume, output_dir / "checkpoints")

    import lightning as L

    from simpletuner_pl.data.datamodule import AspectBucketDataModule
    from simpletuner_pl.models import build_module
    from simpletuner_pl.plan import check_budget

    output_dir.mkdir(parents=True, exist_ok=True)
    composed = output_dir / ".hydra" / "config.yaml"
    if not composed.exists():  # `python -m simpletuner_pl` has Hydra write it; notebooks and scripts get it here
        composed.parent.mkdir(exist_ok=True)
        OmegaConf.save(composed_cfg, composed, resolve=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = build_trainer(cfg, output_dir, checkpoint_step(ckpt_path))
    check_budget(cfg)  # warns when the memory plan exceeds the device (simpletuner_pl.plan)
    module = build_module(cfg)
    datamodule = AspectBucketDataModule(cfg, catalog, output_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
