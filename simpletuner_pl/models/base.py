"""Family-independent LightningModule logic: frozen base, trainable adapter, optimizer, checkpoint contents.

A family module (FluxModule, SDXLModule) supplies `denoiser_name`, `encode_prompts(captions)`,
`training_loss(batch)` and `save_adapter(directory)` (its pipeline's LoRA format). Checkpoints hold only trainable
tensors (the base is re-loaded from its source): megabytes for a LoRA, the whole denoiser for `adapter=full`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List

import lightning as L
import torch

from simpletuner_pl.adapters.export import KOHYA_FILE, save_full, save_kohya
from simpletuner_pl.adapters.lora import adapter_metadata, adapter_state_dict, attach_lora, resolve_targets


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
        self._text_cache: Dict[str, Dict[str, torch.Tensor]] = {}
        self.attach_adapter()
        # Lightning keeps each submodule's mode through fit, so the denoiser must be put in train mode here
        # (adapter dropout, bitsandbytes' training path); the frozen encoders stay in eval.
        self.denoiser.train()

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    def attach_adapter(self) -> None:
        adapter = self.cfg.adapter
        if adapter.type == "full":
            # fp32 master weights whatever the load dtype: bf16 weights would round away lr·update-sized steps.
            self.denoiser.to(torch.float32).requires_grad_(True)
        else:
            attach_lora(self.denoiser, adapter, resolve_targets(self.denoiser, adapter.target, self.cfg.model.family))
        from simpletuner_pl.memory.options import configure_training

        configure_training(self.denoiser, self.cfg)  # trainable dtype, checkpointing interval, compile, group offload

    def _apply(self, fn, recurse: bool = True):
        """Lightning's `.to(device)` skips components that place themselves (group offload, model CPU offload):
        moving them whole onto the GPU is exactly the peak those options avoid."""
        placed = {n: m for n, m in self._modules.items() if getattr(m, "_places_itself", False)}
        self._modules.update(dict.fromkeys(placed))
        try:
            return super()._apply(fn, recurse)
        finally:
            self._modules.update(placed)

    def on_fit_start(self) -> None:
        """Caches are built here: the module is on its device by now and the dataloader is not yet created."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "build_caches"):
            datamodule.build_caches(self)

    def train(self, mode: bool = True):
        """`module.train()` (e.g. after a validation round) must not turn on dropout in the frozen encoders."""
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

        from simpletuner_pl.optimizers import build_optimizer

        opt = self.cfg.optimizer
        optimizer = build_optimizer(self.trainable_parameters(), opt)
        scheduler = get_scheduler(
            opt.lr_scheduler, optimizer, num_warmup_steps=opt.warmup_steps,
            num_training_steps=self.cfg.train.max_steps, power=opt.lr_power,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch, batch_idx) -> None:
        from simpletuner_pl.optimizers import set_mode

        set_mode(self.optimizers(), train=True)  # schedule-free optimizers: forward on the training sequence

    def optimizer_step(self, *args, **kwargs) -> None:
        from simpletuner_pl.optimizers import set_mode

        super().optimizer_step(*args, **kwargs)
        set_mode(self.optimizers(), train=False)  # between steps the weights are the averaged (exported) ones

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    # ---- encoding (shared by the families and by the data caches) ------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → one posterior sample, shifted (if the VAE has a shift) and scaled."""
        vae = self.vae
        latents = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.sample()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def cache_identity(self) -> Dict[str, str]:
        """Strings that change whenever the VAE or the text encoders would encode differently (class, config,
        dtype, quantisation, a fingerprint of the weights); the data caches key their entries on them."""
        quant = self.cfg.quant
        text = f"{_describe(self, 'text_encoder', 'text_encoder_2')}|{quant.text_encoder_1_precision}|" \
               f"{quant.text_encoder_2_precision}|{len(self.tokenizer)}|{len(self.tokenizer_2)}"
        return {"vae": _describe(self, "vae"), "text": text}

    def text_conditioning(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        """Encode each distinct caption once per run (captions repeat every epoch)."""
        missing = sorted({c for c in captions if c not in self._text_cache})
        if missing:
            encoded = self.encode_prompts(missing)
            for i, caption in enumerate(missing):
                self._text_cache[caption] = {k: v[i] for k, v in encoded.items()}
        return {k: torch.stack([self._text_cache[c][k] for c in captions]) for k in self._text_cache[captions[0]]}

    # ---- export --------------------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        return adapter_state_dict(self.denoiser)

    def write_adapter(self, directory: Path) -> None:
        """The trained weights in the configured format: a diffusers folder of the denoiser for `adapter=full`,
        else the family's diffusers LoRA file, plus a Kohya/ComfyUI file with `adapter.export_format=kohya`."""
        adapter = self.cfg.adapter
        if adapter.type == "full":
            save_full(self.denoiser, directory / self.denoiser_name)
            return
        self.save_adapter(directory)
        if adapter.export_format == "kohya":
            alpha = adapter_metadata(self.denoiser, adapter)["lora_alpha"]
            save_kohya(self.adapter_state_dict(), alpha, directory / KOHYA_FILE, prefix=self.denoiser_name)

    def export_adapter(self, directory: str | os.PathLike) -> Path:
        """Write the adapter into `directory` atomically: a crash mid-write never leaves a half file behind."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.write_adapter(staging)
            directory.mkdir(exist_ok=True)
            for item in list(staging.iterdir()):
                target = directory / item.name
                if item.is_dir() and target.is_dir():  # a folder (full fine-tune) cannot replace a non-empty one:
                    os.replace(target, staging / f".old.{item.name}")  # swap the old one aside, removed below
                os.replace(item, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def training_loss(self, batch) -> torch.Tensor:  # pragma: no cover - implemented by each family
        raise NotImplementedError

    def save_adapter(self, directory: Path) -> None:  # pragma: no cover - implemented by each family
        raise NotImplementedError


def _describe(module: torch.nn.Module, *names: str) -> str:
    """Class, dtype, config and a weight fingerprint of each named component."""
    import hashlib
    import json

    parts = []
    for name in names:
        component = getattr(module, name)
        config = getattr(component, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        tensors = [t for t in component.state_dict().values() if torch.is_tensor(t) and t.is_floating_point()]
        digest = hashlib.sha256()
        for tensor in tensors[:2] + tensors[-2:]:
            digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        parts.append(f"{type(component).__name__}:{next(component.parameters()).dtype}:"
                     f"{json.dumps(config, sort_keys=True, default=str)}:{digest.hexdigest()}")
    return "|".join(parts)
