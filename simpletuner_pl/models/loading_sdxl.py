"""Where SDXL's weights come from: a pipeline folder or hub repo, with UNet and VAE overrides.

The default VAE override is `madebyollin/sdxl-vae-fp16-fix` (SimpleTuner's and the quickstart's choice): SDXL's own
VAE overflows in fp16. `check_model_sources` (loading.py) validates these sources before any weight is read.
"""

from __future__ import annotations

from typing import List

import torch

from simpletuner_pl.models.loading import Source, cast_modules, component_source, subfolder

BASE_KEY = "model.pretrained_model_name_or_path"
VAE_KEY = "model.pretrained_vae_model_name_or_path (null = the base model's own vae/)"
UNET_KEY = "model.pretrained_unet_model_name_or_path (null = the base model's unet/)"


def sdxl_sources(model_cfg) -> List[Source]:
    base = model_cfg.pretrained_model_name_or_path
    sources = [Source("text encoders, tokenizers and scheduler", base, None, "model_index.json", BASE_KEY)]
    if model_cfg.pretrained_unet_model_name_or_path:
        sources.append(Source("UNet", model_cfg.pretrained_unet_model_name_or_path,
                              subfolder(model_cfg.pretrained_unet_subfolder), "config.json", UNET_KEY))
    if model_cfg.pretrained_vae_model_name_or_path:
        sources.append(Source("VAE", model_cfg.pretrained_vae_model_name_or_path,
                              subfolder(model_cfg.pretrained_vae_subfolder), "config.json", VAE_KEY))
    return sources


def load_sdxl_components(model_cfg, dtype: torch.dtype) -> dict:
    """StableDiffusionXLPipeline's components at `dtype`, with the training scheduler read as DDPM.

    The pipeline folder usually stores an Euler (inference) scheduler config; `DDPMScheduler.from_pretrained` reads
    its betas and timestep count, which is all the training noise schedule needs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if model_cfg.flavour == "tiny" and not model_cfg.pretrained_model_name_or_path:
        from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components

        components = build_tiny_sdxl_components()
        components["scheduler"] = DDPMScheduler.from_config(components["scheduler"].config)
        return cast_modules(components, ("unet", "vae", "text_encoder", "text_encoder_2"), dtype)

    base, rev = model_cfg.pretrained_model_name_or_path, model_cfg.revision
    unet_path, unet_sub = component_source(base, model_cfg.pretrained_unet_model_name_or_path,
                                           model_cfg.pretrained_unet_subfolder, "unet")
    vae_path, vae_sub = component_source(base, model_cfg.pretrained_vae_model_name_or_path,
                                         model_cfg.pretrained_vae_subfolder, "vae")
    return dict(
        unet=UNet2DConditionModel.from_pretrained(unet_path, subfolder=unet_sub, revision=rev, dtype=dtype),
        vae=AutoencoderKL.from_pretrained(vae_path, subfolder=vae_sub, revision=rev, dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=rev, dtype=dtype),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", revision=rev,
                                                                   dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=rev),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", revision=rev),
        scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler", revision=rev),
    )
