"""What a `DiffusionModule` trains and writes: its adapter (PEFT LoRA/DoRA, LyCORIS LoKr, or the whole denoiser),
switched off for base-model predictions, scaled for a prompt's strength, optionally started from a file, exported.

A mixin of `DiffusionModule` (needs `denoiser`, `spec`, `adapter_cfg`): each method dispatches on
`adapter.type`, so the families never do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import ContextManager, Dict

import torch

from simpletuner_pl.adapters.export import save_full, write_lora
from simpletuner_pl.adapters.init_lora import load_initial_lokr, load_initial_lora
from simpletuner_pl.adapters.layouts import dora_scales
from simpletuner_pl.adapters.lokr import LOKR_FILE, LokrSettings, attach_lokr, lokr_disabled, save_lokr
from simpletuner_pl.adapters.lora import adapter_metadata, adapter_state_dict, attach_lora, resolve_targets
from simpletuner_pl.adapters.switch import adapter_disabled
from simpletuner_pl.config.adapter import LycorisConfig
from simpletuner_pl.io import atomic_dir


def lokr_settings(config: LycorisConfig) -> LokrSettings:
    return LokrSettings(multiplier=config.multiplier, linear_dim=config.linear_dim, linear_alpha=config.linear_alpha,
                        factor=config.factor, full_matrix=config.full_matrix, bypass_mode=config.bypass_mode,
                        target_module=tuple(config.target_module), target_name=tuple(config.target_name),
                        module_factors=dict(config.module_factors))


class AdaptedMixin:
    """`self.lokr`: the LyCORIS network with adapter=lokr (a registered submodule: the optimizer, `.to()` and
    checkpoints see it), else None."""

    def attach_adapter(self):
        """Make the denoiser trainable: whole (fp32 master weights), through a PEFT LoRA/DoRA, or a LyCORIS LoKr;
        from `adapter.init_lora` when set. Returns the LoRA init state of base-rewriting inits (PiSSA/OLoRA)."""
        adapter = self.adapter_cfg
        self.lokr = None
        if adapter.type == "full":
            # fp32 master weights whatever the load dtype: bf16 weights would round away lr·update-sized steps.
            self.denoiser.to(torch.float32).requires_grad_(True)
            return None
        if adapter.type == "lokr":
            self.lokr = attach_lokr(self.denoiser, lokr_settings(adapter.lycoris))
            if adapter.init_lora:
                load_initial_lokr(self.lokr, adapter.init_lora)
            return None
        targets = resolve_targets(self.denoiser, adapter.target, self.spec.targets)
        init_state = attach_lora(self.denoiser, adapter, targets)
        if adapter.init_lora:
            load_initial_lora(self.denoiser, self.spec.pipeline_cls(), adapter.init_lora, self.spec.denoiser_name)
        return init_state

    def base_model(self) -> ContextManager:
        """Within the block the denoiser predicts as the base model: the trained adapter is off (regularisation
        targets)."""
        if self.lokr is not None:
            return lokr_disabled(self.lokr)
        return adapter_disabled(self.denoiser)

    def inference_adapters(self) -> ContextManager:
        """The adapters inference uses, as inference runs them (validation and eval rounds): all of them, a LoKr's
        factors frozen — on the CPU a trainable weight takes another matmul kernel than a frozen one (1 ulp apart),
        and the model card's snippet runs them frozen."""
        return _frozen(self.lokr) if self.lokr is not None else contextlib.nullcontext()

    def adapter_strength(self, strength: float) -> ContextManager:
        """A prompt-library entry's adapter strength, where it is not a pipeline argument: LoKr's multiplier (LoRA
        strengths are the pipeline's LoRA scale, `lora_scale_kwargs`)."""
        if self.lokr is None or strength == 1.0:
            return contextlib.nullcontext()
        return _multiplied(self.lokr, strength)

    def lora_scale_kwargs(self, key: str, strength: float) -> Dict[str, object]:
        """The pipeline argument (`joint_attention_kwargs`, `cross_attention_kwargs`) scaling a PEFT LoRA."""
        return {key: {"scale": strength}} if strength != 1.0 and self.lokr is None else {}

    # ---- export ------------------------------------------------------------------------------------------------
    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        return adapter_state_dict(self.denoiser, self.lora_init_state)

    def write_adapter(self, directory: Path) -> None:
        """The trained weights: a diffusers folder of the denoiser for `adapter=full`, a LyCORIS file for LoKr,
        else the LoRA file(s) in the layout `adapter.export_format` names (`simpletuner_pl.adapters.export`)."""
        name = self.spec.denoiser_name
        if self.adapter_cfg.type == "full":
            save_full(self.denoiser, directory / name)
            return
        if self.lokr is not None:
            save_lokr(self.lokr, directory / LOKR_FILE, lokr_settings(self.adapter_cfg.lycoris))
            return
        state, metadata = self.adapter_state_dict(), adapter_metadata(self.denoiser, self.lora_init_state)
        write_lora(directory, self.adapter_cfg.export_format, self.spec.export_formats, self.spec.pipeline_cls(),
                   name, state, metadata, lambda lora: dora_scales(self.denoiser, lora))

    def export_adapter(self, directory: str | os.PathLike) -> Path:
        """Write the adapter into `directory` atomically: a crash mid-write never leaves a half file behind."""
        with atomic_dir(directory) as staging:
            self.write_adapter(staging)
        return Path(directory)


@contextlib.contextmanager
def _multiplied(network, strength: float):
    previous = network.multiplier
    network.set_multiplier(previous * strength)
    try:
        yield
    finally:
        network.set_multiplier(previous)


@contextlib.contextmanager
def _frozen(network):
    flags = [(param, param.requires_grad) for param in network.parameters()]
    network.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
