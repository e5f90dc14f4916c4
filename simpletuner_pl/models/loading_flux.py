"""FluxPipeline's components from a folder or hub id, with SimpleTuner's per-component overrides."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.flux_spec import transformer_source
from simpletuner_pl.models.tiny import cast_modules
from simpletuner_pl.sources import component_source


def load_components(model: ModelConfig, dtype: torch.dtype,
                    denoiser: Optional[torch.nn.Module] = None) -> Dict[str, object]:
    """Transformer, VAE, CLIP-L, T5, tokenizers and scheduler at `dtype`; a `denoiser` already loaded (quantised
    while streaming) is used instead of reading the transformer."""
    if model.is_builtin_tiny:
        from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

        return cast_modules(build_tiny_flux_components(), dtype)

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    base, rev = model.pretrained_model_name_or_path, model.revision
    if denoiser is None:
        location, sub = transformer_source(model)
        denoiser = FluxTransformer2DModel.from_pretrained(location, subfolder=sub, revision=rev, dtype=dtype)
    vae_path, vae_sub = component_source(base, model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder,
                                         "vae")
    return dict(
        transformer=denoiser,
        vae=AutoencoderKL.from_pretrained(vae_path, subfolder=vae_sub, revision=rev, dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=rev, dtype=dtype),
        tokenizer=AutoTokenizer.from_pretrained(base, subfolder="tokenizer", revision=rev),
        text_encoder_2=T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2", revision=rev, dtype=dtype),
        tokenizer_2=AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2", revision=rev),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", revision=rev),
    )
