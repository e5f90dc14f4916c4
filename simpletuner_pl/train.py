"""`run(cfg)`: the whole training job, from a composed config to a trained adapter on disk, read top to bottom.

Every check that can fail on bad input (config values, files, datasets, model sources) runs first
(`simpletuner_pl.preflight`), and the heavy libraries are imported only after it.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from simpletuner_pl.config import RunConfig, to_typed
from simpletuner_pl.config.registries import MIXED_PRECISION
from simpletuner_pl.errors import ConfigError, Interrupted
from simpletuner_pl.io import write_text
from simpletuner_pl.models.family import FamilySpec, resolve
from simpletuner_pl.preflight import Preflight, preflight
from simpletuner_pl.startup import resume_collector

log = logging.getLogger(__name__)


def import_libraries(spec: FamilySpec) -> None:
    """Lightning, then what the family builds before its first step: its module, its denoiser's and the VAE's
    diffusers classes. Imported in one stretch so that the CLI's paused collector covers them
    (`simpletuner_pl.startup`); it resumes here, before any weights load."""
    from simpletuner_pl.models.loading import VAE_CLASS  # torch: imported here, after the startup checks

    quiet_libraries()  # first: Lightning's console handler goes before anything else logs
    spec.module_class()
    spec.denoiser_cls()
    resolve(VAE_CLASS)
    resume_collector()


def quiet_libraries() -> None:
    """One line per message: where the root logger prints (Hydra's CLI), Lightning's own console handler would
    repeat it. Called after the startup checks, so a bad input never waits for Lightning's import."""
    import warnings

    import lightning.pytorch  # noqa: F401  (it installs its console handler on import)

    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel probe noise on import
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum registration notices
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # frozen encoders, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")  # we log across epochs
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())  # an advert, printed at every start
    for name in NOISE:
        logging.getLogger(name).addFilter(_drop_noise)  # the same object every call: added once


# Notices that say nothing about the run, by logger: diffusers probing for torchao classes that torchao 0.18 moved
# (only torchao-serialised checkpoints need them: never loaded here); diffusers' warning about casting modules it
# would keep in fp32 when there are none ("[]"); diffusers' note that `set_attention_backend` (model.attention_backend)
# is experimental; Lightning's note on every checkpoint that they hold the full training state (on purpose: resume).
NOISE = {
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "diffusers.models.modeling_utils": ("should be kept in float32: []", "Attention backends are an experimental"),
    "lightning.pytorch.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
}


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in NOISE.get(record.name, ()))


def trainer_arguments(cfg: RunConfig, output_dir: Path, checked: Preflight) -> Dict[str, Any]:
    from simpletuner_pl.callbacks.checkpointing import AtomicCheckpointIO
    from simpletuner_pl.callbacks.factory import build_callbacks
    from simpletuner_pl.callbacks.loggers import build_loggers
    from simpletuner_pl.optimizers import clip_value
    from simpletuner_pl.strategies import build_strategy

    train = cfg.train
    own = dict(
        max_steps=train.max_steps, max_epochs=-1, accumulate_grad_batches=train.gradient_accumulation_steps,
        gradient_clip_val=clip_value(train, cfg.optimizer),  # None for optimizers that bound their own updates
        gradient_clip_algorithm="norm", precision=MIXED_PRECISION[train.mixed_precision],
        logger=build_loggers(cfg, output_dir, checked.resume_from.step if checked.resume_from else None),
        callbacks=build_callbacks(cfg, output_dir, checked.validation, checked.held_out_images),
        strategy=build_strategy(cfg.strategy),  # strategy=auto|ddp|fsdp|deepspeed_*; devices and nodes: trainer.*
        plugins=[AtomicCheckpointIO()], default_root_dir=output_dir, log_every_n_steps=train.log_every_n_steps,
        num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False,
    )
    return {**own, **checked.trainer_args}  # any other lightning.Trainer argument (trainer.*), checked by preflight


def build_trainer(kwargs: Dict[str, Any]):
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as err:  # a trainer.* value Lightning refuses
        raise ConfigError(f"trainer.*: lightning.Trainer refused the arguments: {err}") from None


def save_composed(composed: DictConfig, output_dir: Path, resumed_step: Optional[int]) -> None:
    """`.hydra/config.yaml`, written once the startup checks passed (Hydra's own record of each launch, refused ones
    included, is in `.hydra/launches/`). A resume that changed what may change keeps the earlier config beside it
    as `config.before_step_N.yaml`."""
    target = output_dir / ".hydra" / "config.yaml"
    text = OmegaConf.to_yaml(composed, resolve=True)
    if target.is_file() and target.read_text() != text and resumed_step is not None:
        os.replace(target, target.with_name(f"config.before_step_{resumed_step}.yaml"))
    if not target.is_file() or target.read_text() != text:
        write_text(target, text)


def run(cfg):
    """Train as configured; returns the fitted `lightning.Trainer` (its module holds the trained adapter)."""
    composed = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    cfg = to_typed(cfg)  # typed dataclasses from here on (methods, no interpolation)
    checked = preflight(cfg)
    output_dir = Path(cfg.output_dir)
    import_libraries(checked.spec)

    import lightning as L

    from simpletuner_pl.callbacks.summary import summarise
    from simpletuner_pl.data.datamodule import AspectBucketDataModule
    from simpletuner_pl.models.build import build_module
    from simpletuner_pl.optimizers import check_extra
    from simpletuner_pl.planner.report import check_budget

    check_extra(cfg.optimizer)  # needs the optimizer's library; still before any weight loads
    output_dir.mkdir(parents=True, exist_ok=True)
    save_composed(composed, output_dir, checked.resume_from.step if checked.resume_from else None)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = build_trainer(trainer_arguments(cfg, output_dir, checked))
    device = trainer.strategy.root_device
    check_budget(cfg, device)  # warns when the memory plan exceeds the device
    module = build_module(cfg, device)
    datamodule = AspectBucketDataModule(cfg.data, cfg.train, cfg.seed, checked.catalog, output_dir)
    resume_from = checked.resume_from.path if checked.resume_from else None
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, checked.resume_from.step)
    fit(trainer, module, datamodule, resume_from)
    summarise(trainer, output_dir)  # loss.png and the closing lines: where everything is, loss, s/step, loading
    return trainer


def fit(trainer, module, datamodule, ckpt_path: Optional[str]) -> None:
    """`trainer.fit`, loading checkpoints without unpickling code; a signal's stop becomes `Interrupted`."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from simpletuner_pl.callbacks.signals import GracefulStop

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        stop = next(c for c in trainer.callbacks if isinstance(c, GracefulStop))
        signum = stop.received or signal.SIGTERM
        last = trainer.checkpoint_callback.last_model_path or "the last checkpoint"
        raise Interrupted(signal.Signals(signum).name, 128 + int(signum), last) from None
