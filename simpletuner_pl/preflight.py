"""Everything that can fail on bad input, before the first weight is loaded, in the order a user can fix it.

`check_config` needs the config only (values, combinations, the family's rules, `trainer.*` names); `validate`
adds the small files the config names (prompt libraries, the held-out folder); `preflight` then indexes the
datasets, finds the held-out images, checks every model source (hub id or folder) and picks the checkpoint to
resume from. Each failure is a `UserError` whose message says what to change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from simpletuner_pl.callbacks.model_sources import check_clip_source, check_decoder_source, preview_decoder
from simpletuner_pl.callbacks.prompts import ValidationPlan, validation_plan
from simpletuner_pl.config import validate as validate_values
from simpletuner_pl.config.logging import check_loggers
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.config.strategy import check_strategy_environment
from simpletuner_pl.config.trainer import check_trainer_args
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.catalog import Catalog, discover_all
from simpletuner_pl.data.held_out import HeldOut, HeldOutImage, discover_held_out, held_out_source
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.hub import check_push
from simpletuner_pl.io import remove_orphans
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.registry import check_config as check_family
from simpletuner_pl.resume import Checkpoint, choose
from simpletuner_pl.sources import check_source

log = logging.getLogger(__name__)


@dataclass
class Settings:
    spec: FamilySpec
    trainer_args: Dict[str, Any]
    validation: Optional[ValidationPlan]  # None: validation off
    held_out: Optional[HeldOut]  # None: no eval loss


@dataclass
class Preflight(Settings):
    catalog: Optional[Catalog] = None
    held_out_images: Optional[List[HeldOutImage]] = None
    resume_from: Optional[Checkpoint] = None


def check_config(cfg: RunConfig) -> FamilySpec:
    validate_values(cfg)
    return check_family(cfg)


def validate(cfg: RunConfig) -> Settings:
    """Config checks plus the small files the config names; no image is opened, no model source touched."""
    spec = check_config(cfg)
    trainer_args = check_trainer_args(cfg.trainer)
    check_loggers(cfg.logger)  # each chosen tracker installed, W&B online logged in
    check_strategy_environment(cfg.strategy, trainer_args)
    if cfg.adapter.init == "loftq":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("adapter.init=loftq needs a CUDA GPU (PEFT's LoftQ quantises with bitsandbytes on "
                              "CUDA); use adapter.init=default|gaussian|pissa|olora on this machine")
    plan = validation_plan(cfg.validation, cfg.seed) if cfg.validation.enabled else None
    check_init_lora(cfg.adapter)
    reference = cfg.validation.reference_image
    if plan is not None and reference and not Path(reference).expanduser().is_file():
        raise ConfigError(f"validation.reference_image={reference} is not an image file")
    if plan is None:
        warn_unused_validation_keys(cfg.validation)
    held_out = held_out_source(cfg.data, cfg.eval.eval_loss) if cfg.eval.eval_loss.enabled else None
    if held_out is not None:
        check_held_out_apart(cfg, held_out)
    return Settings(spec, trainer_args, plan, held_out)


def check_init_lora(adapter) -> None:
    """`adapter.init_lora` exists before anything loads (its keys are checked against the model once it has)."""
    if not adapter.init_lora:
        return
    path = Path(adapter.init_lora).expanduser()
    name = "pytorch_lokr_weights.safetensors" if adapter.type == "lokr" else "pytorch_lora_weights.safetensors"
    if not (path.is_file() or (path / name).is_file()):
        raise ConfigError(f"adapter.init_lora={adapter.init_lora}: no such file (a .safetensors file, or a folder "
                          f"holding {name})")


def warn_unused_validation_keys(validation: ValidationConfig) -> None:
    defaults = ValidationConfig()
    unused = [f.name for f in dataclasses.fields(validation)
              if f.name != "enabled" and getattr(validation, f.name) != getattr(defaults, f.name)]
    if unused:
        log.warning("validation is off, so %s render nothing: add validation=on (or validation.enabled=true) "
                    "to get validation images", ", ".join(f"validation.{name}" for name in unused))


def check_held_out_apart(cfg: RunConfig, held_out: HeldOut) -> None:
    for name, ds in cfg.data.training().items():
        train_dir = Path(ds.instance_data_dir).expanduser().resolve()
        root = held_out.root
        if root == train_dir or train_dir in root.parents or root in train_dir.parents:
            raise ConfigError(f"the eval-loss images ({root}) overlap training dataset {name} ({train_dir}): "
                              "held-out images must never be trained on; use a separate folder")


def check_model_sources(cfg: RunConfig, spec: FamilySpec) -> None:
    for source in spec.sources(cfg.model):  # none for the base of a built-in tiny model
        check_source(source, cfg.model.revision)
    if cfg.eval.clip_score.enabled:
        check_clip_source(cfg.eval.clip_score.model)
    if cfg.validation.enabled and cfg.validation.preview:
        check_decoder_source(preview_decoder(cfg))


def clean_up_interrupted_writes(cfg: RunConfig) -> None:
    """Temporaries of writes a kill interrupted: in this run's folder after a minute, in the (shared) caches after
    an hour, so a concurrent writer's file is never taken. Rank 0 only."""
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0":
        return
    removed = remove_orphans(cfg.output_dir, 60)
    caches = {cfg.data.text_cache_dir(),
              *(cfg.data.vae_cache_dir(name) for name in [*cfg.data.training(), *cfg.data.conditioning()])}
    removed += sum(remove_orphans(folder, 3600) for folder in caches)
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes", removed)


def preflight(cfg: RunConfig) -> Preflight:
    """Every startup check, data errors before model-source errors (they are cheaper to find and to fix)."""
    settings = validate(cfg)
    catalog = discover_all(cfg.data, cfg.train, settings.trainer_args)
    images = None
    if settings.held_out is not None:
        images = discover_held_out(settings.held_out, cfg.data.cache_root(), cfg.eval.eval_loss.num_images)
    check_model_sources(cfg, settings.spec)
    check_push(cfg.hub)  # hub.push: repo id, network, a write token (asks the Hub who we are)
    resume_from = choose(cfg)  # the checkpoint to continue from, refused when the setup changed
    clean_up_interrupted_writes(cfg)
    return Preflight(**vars(settings), catalog=catalog, held_out_images=images, resume_from=resume_from)
