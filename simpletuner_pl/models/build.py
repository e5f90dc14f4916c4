"""The one model-build recipe, read top to bottom: every step is named and reads only its own config section.

    load + quantise   (streamed block by block when the denoiser is quantised and comes from a folder)
    → attention backend, VAE tiling
    → the family's module: frozen base + adapter (LoRA/DoRA or full)
    → trainable dtype → TREAD token routing → gradient checkpointing (interval) → torch.compile of the blocks
    → group offload
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Dict, Optional

import torch

from simpletuner_pl.config.registries import DTYPES
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.memory.attention import set_attention_backend
from simpletuner_pl.memory.checkpointing import enable_gradient_checkpointing
from simpletuner_pl.memory.compile import compile_blocks
from simpletuner_pl.memory.offload import group_offload
from simpletuner_pl.memory.tread import TokenRouter, resolve_routes
from simpletuner_pl.models.base import DiffusionModule
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.registry import family
from simpletuner_pl.optimizers import cast_trainable
from simpletuner_pl.quantization import Denoiser, load_quantized

log = logging.getLogger(__name__)


def denoiser_of(spec: FamilySpec, cfg: RunConfig) -> Denoiser:
    model = cfg.model
    location, sub = (None, None) if model.is_builtin_tiny else spec.denoiser_source(model)
    return Denoiser(spec.denoiser_name, spec.denoiser_cls, location, sub, model.revision, spec.keep_high_precision)


def build_module(cfg: RunConfig, device: Optional[torch.device] = None) -> DiffusionModule:
    """The configured family's LightningModule, ready to train on `device` (the training device)."""
    spec, device = family(cfg.model.family), device or torch.device("cpu")
    dtype = getattr(torch, DTYPES[cfg.quant.base_model_default_dtype])
    load = partial(spec.load_components(), cfg.model, dtype)
    components, quantised = load_quantized(load, denoiser_of(spec, cfg), cfg.quant, dtype, device)
    return assemble_module(cfg, spec, components, quantised, device)


def assemble_module(cfg: RunConfig, spec: FamilySpec, components: Dict[str, object],
                    quantised: Optional[Dict[str, str]] = None,
                    device: Optional[torch.device] = None) -> DiffusionModule:
    """Loaded (and quantised) components → the trainable module, every memory/speed option applied."""
    device = device or torch.device("cpu")
    set_attention_backend(components[spec.denoiser_name], cfg.model.attention_backend)
    if cfg.offload.vae_enable_tiling:
        components["vae"].enable_tiling()
    module = spec.module_class()(components, cfg.model, cfg.adapter, cfg.train, cfg.optimizer, quantised)
    denoiser, train = module.denoiser, cfg.train
    cast_trainable(module.trainable_parameters(), cfg.optimizer)
    if cfg.tread.routes:
        depth = sum(len(getattr(denoiser, name)) for name in spec.routed_blocks)
        module.router = TokenRouter(denoiser, spec.routed_blocks, resolve_routes(cfg.tread.routes, depth))
        log.info("TREAD: %s", ", ".join(f"{r.ratio:g} of the image tokens skip blocks {r.start}..{r.end}"
                                        for r in module.router.routes))
    if train.gradient_checkpointing:
        blocks = enable_gradient_checkpointing(denoiser, train.gradient_checkpointing_interval)
        log.info("gradient checkpointing: %d blocks", len(blocks))
    if train.compile:
        compile_blocks(denoiser)
    if cfg.offload.grouped:
        group_offload(denoiser, cfg.offload, device)
    return module
