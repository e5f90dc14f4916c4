"""Stable Diffusion XL as a registered family: sources, option rules and the facts others need.

The default VAE override is `madebyollin/sdxl-vae-fp16-fix` (SimpleTuner's and the quickstart's choice, set by
`conf/model/sdxl.yaml`): SDXL's own VAE overflows in fp16.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

from simpletuner_pl.config.registries import PRECISIONS, SDXL_TARGETS
from simpletuner_pl.config.schema import ModelConfig, RunConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.snippet_code import BuiltIn, LoadedApart, adapter_code, pipeline_code
from simpletuner_pl.sources import Source, component_source, pipeline_sources, subfolder

UNET_KEY = "model.pretrained_unet_model_name_or_path"
VAE_KEY = "model.pretrained_vae_model_name_or_path"


def sources(model: ModelConfig) -> List[Source]:
    if model.is_builtin_tiny:
        return []
    return pipeline_sources("text encoders, tokenizers and scheduler", model.pretrained_model_name_or_path, [
        ("UNet", model.pretrained_unet_model_name_or_path, model.pretrained_unet_subfolder,
         f"{UNET_KEY} (null = the base model's unet/)"),
        ("VAE", model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder,
         f"{VAE_KEY} (null = the base model's own vae/)")])


def unet_source(model: ModelConfig) -> Tuple[str, Optional[str]]:
    return component_source(model.pretrained_model_name_or_path, model.pretrained_unet_model_name_or_path,
                            model.pretrained_unet_subfolder, "unet")


def check(cfg: RunConfig) -> None:
    train, precision = cfg.train, cfg.quant.base_model_precision
    if train.diff2flow and train.snr_gamma is not None:
        raise ConfigError("train.diff2flow=true trains on flow velocity, which min-SNR weights do not apply to; "
                          "set train.snr_gamma=null or train.diff2flow=false")
    references = sorted(n for n, ds in cfg.data.conditioning().items() if ds.conditioning_type == "reference_strict")
    if references:
        raise ConfigError(f"conditioning datasets of reference images ({', '.join(references)}) feed FLUX.1 Kontext; "
                          "SDXL does not read them (loss masks, conditioning_type: mask, it does)")
    if cfg.model.attention_backend != "sdpa":
        raise ConfigError(f"model.attention_backend={cfg.model.attention_backend} would do nothing for SDXL: the "
                          "UNet's attention processors call torch's scaled_dot_product_attention directly, not "
                          "diffusers' attention dispatcher; use model.attention_backend=sdpa (the default)")
    if not PRECISIONS[precision].convolutions:
        raise ConfigError(f"quant.base_model_precision={precision} does not work with the SDXL UNet (its conv "
                          "layers); use int8-quanto or nf4-bnb")


def validation_scheduler(prediction_type: str) -> str:
    """SimpleTuner validates SDXL with DDIM and trailing timestep spacing; the snippet swaps it in the same way."""
    return (f"pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=\"trailing\", "
            f"prediction_type={prediction_type!r})")


def loading_code(model: ModelConfig, adapter_type: str, dtype: str, denoiser_dtype: str, adapter_dir: str,
                 prediction_type: str, strength: float = 1.0,
                 quantised: Optional[Mapping[str, str]] = None) -> List[str]:
    """The model card's pipeline lines: the UNet/VAE overrides, the DDIM (trailing) scheduler, the adapter."""
    apart = []
    if adapter_type == "full":
        apart.append(LoadedApart("unet", "UNet2DConditionModel", f"{adapter_dir}/unet", None, denoiser_dtype))
    elif model.pretrained_unet_model_name_or_path:
        apart.append(LoadedApart("unet", "UNet2DConditionModel", *unet_source(model), dtype))
    if model.pretrained_vae_model_name_or_path:
        apart.append(LoadedApart("vae", "AutoencoderKL", model.pretrained_vae_model_name_or_path,
                                 subfolder(model.pretrained_vae_subfolder), dtype))
    built_in = BuiltIn("simpletuner_pl.models.tiny_sdxl", "build_tiny_sdxl_components()") if model.tiny else None
    return pipeline_code("StableDiffusionXLPipeline", model, dtype, apart,
                         adapter_code(adapter_type, adapter_dir, "unet", strength),
                         [validation_scheduler(prediction_type)], ["DDIMScheduler"], quantised, built_in)


SDXL = FamilySpec(
    name="sdxl", title="SDXL", flavours=("base-1.0",), denoiser_name="unet",
    module="simpletuner_pl.models.sdxl:SDXLModule", loader="simpletuner_pl.models.loading_sdxl:load_components",
    denoiser_class="diffusers:UNet2DConditionModel", pipeline="diffusers:StableDiffusionXLPipeline",
    targets=SDXL_TARGETS, keep_high_precision=(), preview_decoder="madebyollin/taesdxl",
    export_formats={"universal": "kohya", "diffusers": "peft", "kohya": "kohya", "comfyui": "kohya"},
    options=("model.prediction_type", UNET_KEY, "train.snr_gamma", "train.noise_offset", "train.diff2flow"),
    sources=sources, denoiser_source=unet_source, check=check,
    block_names=("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block"),
)
