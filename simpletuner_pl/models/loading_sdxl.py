"""StableDiffusionXLPipeline's components from a folder or hub id, with UNet and VAE overrides.

The training scheduler is read as DDPM: the pipeline folder usually stores an Euler (inference) scheduler config,
and `DDPMScheduler.from_pretrained` reads its betas and timestep count, which is all the noise schedule needs.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.loading import denoiser_or_load, from_base, load_vae
from simpletuner_pl.models.sdxl_spec import unet_source
from simpletuner_pl.models.tiny import cast_modules


def load_components(model: ModelConfig, dtype: torch.dtype,
                    denoiser: Optional[torch.nn.Module] = None) -> Dict[str, object]:
    """UNet, VAE, both CLIPs, tokenizers and the DDPM scheduler at `dtype`; a `denoiser` already loaded
    (quantised while streaming) is used instead of reading the UNet."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if model.is_builtin_tiny:
        from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components

        components = build_tiny_sdxl_components()
        components["scheduler"] = DDPMScheduler.from_config(components["scheduler"].config)
        return cast_modules(components, dtype)

    return dict(
        unet=denoiser_or_load(denoiser, UNet2DConditionModel, unet_source, model, dtype),
        vae=load_vae(model, dtype),
        text_encoder=from_base(CLIPTextModel, "text_encoder", model, dtype),
        text_encoder_2=from_base(CLIPTextModelWithProjection, "text_encoder_2", model, dtype),
        tokenizer=from_base(CLIPTokenizer, "tokenizer", model),
        tokenizer_2=from_base(CLIPTokenizer, "tokenizer_2", model),
        scheduler=from_base(DDPMScheduler, "scheduler", model),
    )
