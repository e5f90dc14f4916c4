"""Family-independent LightningModule logic: frozen base, trainable adapter, optimizer, checkpoint contents.

A family module (FluxModule, ...) supplies `denoiser`, `training_loss(batch)` and `save_adapter(directory)`.
Checkpoints hold only trainable tensors (the base is re-loaded from its source), so they are megabytes, not GB.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable

import lightning as L
import torch

from simpletuner_pl.adapters.lora import adapter_state_dict, attach_lora, resolve_targets


class DiffusionModule(L.LightningModule):
    denoiser_name = "transformer"

    def __init__(self, cfg, components: Dict[str, object]):
        super().__init__()
        self.cfg = cfg
        self.strict_loading = False  # checkpoints carry the adapter only
        self.frozen_names = [n for n, c in components.items() if isinstance(c, torch.nn.Module)]
        for name, component in components.items():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False).eval()
            setattr(self, name, component)
        self.attach_adapter()

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    def attach_adapter(self) -> None:
        adapter = self.cfg.adapter
        attach_lora(self.denoiser, adapter, resolve_targets(self.denoiser, adapter.target))
        if self.cfg.train.gradient_checkpointing and hasattr(self.denoiser, "enable_gradient_checkpointing"):
            self.denoiser.enable_gradient_checkpointing()

    def on_fit_start(self) -> None:
        """Caches are built here: the module is on its device by now and the dataloader is not yet created."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "build_caches"):
            datamodule.build_caches(self)

    def train(self, mode: bool = True):
        """Lightning switches everything to train mode at fit start; frozen encoders must stay in eval (dropout)."""
        super().train(mode)
        for name in self.frozen_names:
            if name != self.denoiser_name:
                getattr(self, name).eval()
        return self

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=self.cfg.train.batch_size)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, batch_size=self.cfg.train.batch_size)
        return loss

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        opt = self.cfg.optimizer
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay
        )
        scheduler = get_scheduler(
            opt.lr_scheduler, optimizer, num_warmup_steps=opt.warmup_steps,
            num_training_steps=self.cfg.train.max_steps, power=opt.lr_power,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        return adapter_state_dict(self.denoiser)

    def export_adapter(self, directory: str | os.PathLike) -> Path:
        """Write the adapter into `directory` atomically: a crash mid-write never leaves a half file behind."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.save_adapter(staging)
            directory.mkdir(exist_ok=True)
            for item in staging.iterdir():
                os.replace(item, directory / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def training_loss(self, batch) -> torch.Tensor:  # pragma: no cover - implemented by each family
        raise NotImplementedError

    def save_adapter(self, directory: Path) -> None:  # pragma: no cover - implemented by each family
        raise NotImplementedError
