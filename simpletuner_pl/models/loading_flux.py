"""FluxPipeline's components from a folder or hub id, with SimpleTuner's per-component overrides."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.flux_spec import guidance_embeds, transformer_source
from simpletuner_pl.models.loading import denoiser_or_load, from_base, load_vae
from simpletuner_pl.models.tiny import cast_modules


def load_components(model: ModelConfig, dtype: torch.dtype,
                    denoiser: Optional[torch.nn.Module] = None) -> Dict[str, object]:
    """Transformer, VAE, CLIP-L, T5, tokenizers and scheduler at `dtype`; a `denoiser` already loaded (quantised
    while streaming) is used instead of reading the transformer."""
    if model.is_builtin_tiny:  # the flavour's architecture: schnell-like ones embed no guidance
        from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

        return cast_modules(build_tiny_flux_components(guidance_embeds=guidance_embeds(model)), dtype)

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    return dict(
        transformer=denoiser_or_load(denoiser, FluxTransformer2DModel, transformer_source, model, dtype),
        vae=load_vae(model, dtype),
        text_encoder=from_base(CLIPTextModel, "text_encoder", model, dtype),
        tokenizer=from_base(AutoTokenizer, "tokenizer", model),
        text_encoder_2=from_base(T5EncoderModel, "text_encoder_2", model, dtype),
        tokenizer_2=from_base(AutoTokenizer, "tokenizer_2", model),
        scheduler=from_base(FlowMatchEulerDiscreteScheduler, "scheduler", model),
    )
