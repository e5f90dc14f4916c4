"""`offload.model_cpu_offload` and `offload.offload_during_startup`: which component is on the GPU when.

Training runs the denoiser every step but the VAE and text encoders only while caches are built (or for uncached
samples). With `model_cpu_offload` they live on the CPU and accelerate's offload hooks move one at a time to the
GPU when it runs (the next one's hook sends the previous back), so the GPU holds the denoiser plus at most one
encoder. `offload_during_startup` also keeps the denoiser on the CPU until the caches are built, so startup peaks
at the largest encoder (T5-XXL) instead of denoiser + encoders + VAE.
"""

from __future__ import annotations

import logging
from typing import List

import lightning as L

from simpletuner_pl.config.offload import OffloadConfig
from simpletuner_pl.memory.placement import is_self_placing

log = logging.getLogger(__name__)


class ComponentOffload(L.Callback):
    def __init__(self, offload_denoiser_during_startup: bool):
        self.startup = offload_denoiser_during_startup
        self.hooks: List = []

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        """Runs before Lightning moves the module to its device: install the hooks, hold the denoiser back."""
        from accelerate import cpu_offload_with_hook

        device = trainer.strategy.root_device
        previous = None
        for name in (*pl_module.text_encoder_names, "vae"):
            component = getattr(pl_module, name, None)
            if component is None:
                continue
            component.to("cpu")
            _, previous = cpu_offload_with_hook(component, execution_device=device, prev_module_hook=previous)
            self.hooks.append(previous)
        self.startup = self.startup and not is_self_placing(pl_module.denoiser)  # group offload places it already
        if self.startup:
            pl_module.placed_elsewhere.add(pl_module.spec.denoiser_name)
        log.info("model CPU offload: %d components move to %s only while they run%s", len(self.hooks), device,
                 "; the denoiser joins them when training starts" if self.startup else "")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.release()
        if self.startup:
            pl_module.placed_elsewhere.discard(pl_module.spec.denoiser_name)
            pl_module.denoiser.to(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.release()  # an encoder that ran for an uncached sample goes back before the denoiser's forward

    def release(self) -> None:
        for hook in self.hooks:
            hook.offload()


def offload_callbacks(offload: OffloadConfig) -> List[L.Callback]:
    if offload.model_cpu_offload or offload.offload_during_startup:
        return [ComponentOffload(offload.offload_during_startup)]
    return []
