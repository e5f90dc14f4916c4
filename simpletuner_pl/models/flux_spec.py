"""Flux.1 (Krea [dev], dev, schnell) as a registered family: sources, option rules and the facts others need."""

from __future__ import annotations

from typing import List, Optional, Tuple

from simpletuner_pl.config.registries import FLUX_TARGETS
from simpletuner_pl.config.schema import ModelConfig, RunConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.sources import Source, component_source, pipeline_sources

TRANSFORMER_KEY = "model.pretrained_transformer_model_name_or_path"
VAE_KEY = "model.pretrained_vae_model_name_or_path"


def sources(model: ModelConfig) -> List[Source]:
    return pipeline_sources("text encoders and tokenizers", model.pretrained_model_name_or_path, [
        ("transformer", model.pretrained_transformer_model_name_or_path, model.pretrained_transformer_subfolder,
         TRANSFORMER_KEY),
        ("VAE", model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder, VAE_KEY)])


def transformer_source(model: ModelConfig) -> Tuple[str, Optional[str]]:
    return component_source(model.pretrained_model_name_or_path, model.pretrained_transformer_model_name_or_path,
                            model.pretrained_transformer_subfolder, "transformer")


def check(cfg: RunConfig) -> None:
    if cfg.model.flavour == "schnell" and cfg.train.flow_sigma_sampling != "fast":
        raise ConfigError("model.flavour=schnell is timestep-distilled and needs train.flow_sigma_sampling=fast "
                          "(model=flux_schnell sets it); pass train.flow_sigma_sampling=fast.")


FLUX = FamilySpec(
    name="flux", title="Flux", flavours=("krea", "dev", "schnell", "tiny"), denoiser_name="transformer",
    module="simpletuner_pl.models.flux:FluxModule", loader="simpletuner_pl.models.loading_flux:load_components",
    denoiser_class="diffusers:FluxTransformer2DModel", pipeline="diffusers:FluxPipeline", targets=FLUX_TARGETS,
    # Input/output projections and the final norm are tiny and sensitive; SimpleTuner keeps them in high precision.
    keep_high_precision=("x_embedder", "context_embedder", "norm_out", "proj_out"),
    preview_decoder="madebyollin/taef1", export_formats=("diffusers",),
    options=(TRANSFORMER_KEY, "model.guidance_value"),
    sources=sources, denoiser_source=transformer_source, check=check,
    planner="simpletuner_pl.models.flux_planner",
)
