"""What every validation/evaluation round shares: when it runs, and that it leaves training exactly as it was.

A round runs at step 0 (the untrained adapter: the base-model benchmark), every `every_n_steps` optimizer steps and
once more at the end of training, on global rank 0 only; the other ranks wait at a barrier. Inside a round the
module is in eval mode under `no_grad` and the trainer's precision context, and every random generator (Python,
NumPy, torch CPU and accelerator) is restored afterwards, so enabling a round never changes the training sequence.
Encoders parked on the CPU after caching are brought to the training device for the round and parked again, and
only the adapters inference uses are active (`module.inference_adapters()`: schnell's assistant LoRA is off).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import lightning as L
import numpy as np
import torch

from simpletuner_pl.memory.placement import is_self_placing


@contextmanager
def isolated(trainer: L.Trainer, module: L.LightningModule) -> Iterator[None]:
    device = module.device
    accelerators = [device] if device.type not in ("cpu", "meta") else []
    device_type = device.type if accelerators else "cuda"
    py_state, np_state, was_training = random.getstate(), np.random.get_state(), module.training
    with torch.random.fork_rng(devices=accelerators, device_type=device_type), torch.no_grad():
        module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                yield
        finally:
            module.train(was_training)
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def components_on(module: L.LightningModule, device: torch.device) -> Iterator[None]:
    """Components parked elsewhere (the data pipeline moves the VAE and text encoders to the CPU once the caches are
    built) come to `device` for the round and go back afterwards; a pipeline needs them where the denoiser runs."""
    moved = []
    for component in module.children():
        param = next(component.parameters(), None)
        if param is not None and param.device != device and not is_self_placing(component):
            moved.append((component, param.device))
            component.to(device)
    try:
        yield
    finally:
        for component, original in moved:
            component.to(original)
        if moved and device.type == "cuda":
            torch.cuda.empty_cache()


def log_metrics(trainer: L.Trainer, metrics: Dict[str, float], step: int) -> None:
    """Straight to the loggers: rounds also run in `on_train_end`, where `LightningModule.log` is not allowed."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()


class PeriodicRound(L.Callback):
    """Calls `run_round(trainer, module, step)` at step 0, every `every_n_steps` and at the end, once per step."""

    def __init__(self, every_n_steps: int, on_startup: bool = True):
        self.every_n_steps = every_n_steps
        self.on_startup = on_startup
        self.last_step: Optional[int] = None

    def run_round(self, trainer: L.Trainer, module: L.LightningModule, step: int) -> None:
        raise NotImplementedError

    def _maybe_run(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.last_step:  # gradient accumulation: several batches end on one optimizer step
            return
        self.last_step = step
        if trainer.is_global_zero:
            with isolated(trainer, module), components_on(module, module.device), module.inference_adapters():
                self.run_round(trainer, module, step)
        trainer.strategy.barrier(type(self).__name__)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0 and self.on_startup:  # not again when resuming
            self._maybe_run(trainer, module)
        else:
            self.last_step = trainer.global_step  # a resumed run already has this step's round

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # The last step's round runs here too, before checkpoints are written, so they hold its state.
        if step and (step % self.every_n_steps == 0 or step == trainer.max_steps):
            self._maybe_run(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._maybe_run(trainer, module)  # runs stopped otherwise (max_time, max_epochs): their last step
