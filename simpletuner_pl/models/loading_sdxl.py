"""StableDiffusionXLPipeline's components from a folder or hub id, with UNet and VAE overrides.

The training scheduler is read as DDPM: the pipeline folder usually stores an Euler (inference) scheduler config,
and `DDPMScheduler.from_pretrained` reads its betas and timestep count, which is all the noise schedule needs.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.sdxl_spec import unet_source
from simpletuner_pl.models.tiny import cast_modules
from simpletuner_pl.sources import component_source


def load_components(model: ModelConfig, dtype: torch.dtype,
                    denoiser: Optional[torch.nn.Module] = None) -> Dict[str, object]:
    """UNet, VAE, both CLIPs, tokenizers and the DDPM scheduler at `dtype`; a `denoiser` already loaded
    (quantised while streaming) is used instead of reading the UNet."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if model.is_builtin_tiny:
        from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components

        components = build_tiny_sdxl_components()
        components["scheduler"] = DDPMScheduler.from_config(components["scheduler"].config)
        return cast_modules(components, dtype)

    base, rev = model.pretrained_model_name_or_path, model.revision
    if denoiser is None:
        location, sub = unet_source(model)
        denoiser = UNet2DConditionModel.from_pretrained(location, subfolder=sub, revision=rev, dtype=dtype)
    vae_path, vae_sub = component_source(base, model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder,
                                         "vae")
    return dict(
        unet=denoiser,
        vae=AutoencoderKL.from_pretrained(vae_path, subfolder=vae_sub, revision=rev, dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=rev, dtype=dtype),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", revision=rev,
                                                                   dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=rev),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", revision=rev),
        scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=rev),
    )
