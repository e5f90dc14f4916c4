"""Stable Diffusion XL as a registered family: sources, option rules and the facts others need.

The default VAE override is `madebyollin/sdxl-vae-fp16-fix` (SimpleTuner's and the quickstart's choice, set by
`conf/model/sdxl.yaml`): SDXL's own VAE overflows in fp16.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from simpletuner_pl.config.registries import PRECISIONS, SDXL_TARGETS
from simpletuner_pl.config.schema import ModelConfig, RunConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.sources import Source, component_source, pipeline_sources

UNET_KEY = "model.pretrained_unet_model_name_or_path"
VAE_KEY = "model.pretrained_vae_model_name_or_path"


def sources(model: ModelConfig) -> List[Source]:
    return pipeline_sources("text encoders, tokenizers and scheduler", model.pretrained_model_name_or_path, [
        ("UNet", model.pretrained_unet_model_name_or_path, model.pretrained_unet_subfolder,
         f"{UNET_KEY} (null = the base model's unet/)"),
        ("VAE", model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder,
         f"{VAE_KEY} (null = the base model's own vae/)")])


def unet_source(model: ModelConfig) -> Tuple[str, Optional[str]]:
    return component_source(model.pretrained_model_name_or_path, model.pretrained_unet_model_name_or_path,
                            model.pretrained_unet_subfolder, "unet")


def check(cfg: RunConfig) -> None:
    train, adapter, precision = cfg.train, cfg.adapter, cfg.quant.base_model_precision
    if train.diff2flow and train.snr_gamma is not None:
        raise ConfigError("train.diff2flow=true trains on flow velocity, which min-SNR weights do not apply to; "
                          "set train.snr_gamma=null or train.diff2flow=false")
    if adapter.export_format == "kohya" and adapter.use_dora:
        raise ConfigError("adapter.export_format=kohya cannot carry DoRA magnitudes (diffusers drops Kohya "
                          "dora_scale tensors); use adapter.export_format=diffusers or adapter.use_dora=false")
    if not PRECISIONS[precision].convolutions:
        raise ConfigError(f"quant.base_model_precision={precision} does not work with the SDXL UNet (its conv "
                          "layers); use int8-quanto or nf4-bnb")


SDXL = FamilySpec(
    name="sdxl", title="SDXL", flavours=("base-1.0", "tiny"), denoiser_name="unet",
    module="simpletuner_pl.models.sdxl:SDXLModule", loader="simpletuner_pl.models.loading_sdxl:load_components",
    denoiser_class="diffusers:UNet2DConditionModel", pipeline="diffusers:StableDiffusionXLPipeline",
    targets=SDXL_TARGETS, keep_high_precision=(), preview_decoder="madebyollin/taesdxl",
    export_formats=("diffusers", "kohya"),
    options=("model.prediction_type", UNET_KEY, "train.snr_gamma", "train.noise_offset", "train.diff2flow"),
    sources=sources, denoiser_source=unet_source, check=check,
)
