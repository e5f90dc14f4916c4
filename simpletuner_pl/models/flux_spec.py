"""Flux.1 as a registered family: its flavours, sources, option rules and the facts others need.

The flavours (`model.flavour`; each has a `conf/model/flux_<flavour>.yaml` stating its settings, no hidden
overrides) differ in what the checkpoint was distilled for:

| flavour   | checkpoint                        | guidance embedding | what training and validation need      |
|-----------|-----------------------------------|--------------------|-----------------------------------------|
| krea, dev | FLUX.1-Krea-dev, FLUX.1-dev       | yes                | nothing special                         |
| schnell   | FLUX.1-schnell                    | no                 | the fast σ schedule; an assistant LoRA  |
| kontext   | FLUX.1-Kontext-dev                | yes                | reference images (FluxKontextPipeline)  |
| fluxbooru | terminusresearch/fluxbooru-v0.3   | yes (3.5)          | de-distilled: real CFG in validation    |
| libreflux | jimmycarter/LibreFlux-SimpleTuner | no                 | T5 attention masking; real CFG          |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from simpletuner_pl.config.registries import ATTENTION_BACKENDS, FLUX_TARGETS
from simpletuner_pl.config.schema import ModelConfig, RunConfig
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.snippet_code import BuiltIn, LoadedApart, adapter_code, pipeline_code
from simpletuner_pl.sources import Source, component_source, pipeline_sources, subfolder

TRANSFORMER_KEY = "model.pretrained_transformer_model_name_or_path"
VAE_KEY = "model.pretrained_vae_model_name_or_path"
ASSISTANT_KEY = "model.assistant_lora_path"
ASSISTANT_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class Flavour:
    guidance_embeds: bool  # the transformer embeds a guidance value (guidance-distilled checkpoints)
    pipeline: str = "FluxPipeline"  # the diffusers pipeline of validation and of the model card's snippet


FLAVOURS: Dict[str, Flavour] = {
    "krea": Flavour(True), "dev": Flavour(True), "schnell": Flavour(False),
    "kontext": Flavour(True, "FluxKontextPipeline"), "fluxbooru": Flavour(True), "libreflux": Flavour(False),
}


def assistant_source(location: str) -> Source:
    """The assistant LoRA: a `.safetensors` file, or a folder/hub repo holding `pytorch_lora_weights.safetensors`."""
    if location.endswith(".safetensors"):
        folder, _, name = location.rpartition("/")
        return Source("assistant LoRA", folder or ".", None, name, ASSISTANT_KEY)
    return Source("assistant LoRA", location, None, ASSISTANT_FILE, ASSISTANT_KEY)


def sources(model: ModelConfig) -> List[Source]:
    found = [] if model.is_builtin_tiny else pipeline_sources(
        "text encoders and tokenizers", model.pretrained_model_name_or_path, [
            ("transformer", model.pretrained_transformer_model_name_or_path, model.pretrained_transformer_subfolder,
             TRANSFORMER_KEY),
            ("VAE", model.pretrained_vae_model_name_or_path, model.pretrained_vae_subfolder, VAE_KEY)])
    return found + ([assistant_source(model.assistant_lora_path)] if model.assistant_lora_path else [])


def transformer_source(model: ModelConfig) -> Tuple[str, Optional[str]]:
    return component_source(model.pretrained_model_name_or_path, model.pretrained_transformer_model_name_or_path,
                            model.pretrained_transformer_subfolder, "transformer")


def check(cfg: RunConfig) -> None:
    model, validation = cfg.model, cfg.validation
    if model.flavour == "schnell" and cfg.train.flow_sigma_sampling != "fast":
        raise ConfigError("model.flavour=schnell is timestep-distilled and needs train.flow_sigma_sampling=fast "
                          "(model=flux_schnell sets it); pass train.flow_sigma_sampling=fast.")
    if model.assistant_lora_path and cfg.adapter.type != "lora":
        raise ConfigError(f"{ASSISTANT_KEY} stacks a frozen LoRA under the trained one, which needs adapter=lora; "
                          f"with adapter={cfg.adapter.type} set {ASSISTANT_KEY}=null")
    if model.flavour == "libreflux" and not model.attention_masked_training:
        raise ConfigError("model.flavour=libreflux was de-distilled with T5 attention masking; keep "
                          "model.attention_masked_training=true (model=flux_libreflux sets it)")
    if model.flavour == "fluxbooru" and model.attention_masked_training:
        raise ConfigError("model.flavour=fluxbooru was trained without T5 attention masking; set "
                          "model.attention_masked_training=false")
    if model.attention_masked_training and not ATTENTION_BACKENDS[model.attention_backend].masks:
        masking = ", ".join(name for name, backend in ATTENTION_BACKENDS.items() if backend.masks)
        raise ConfigError(f"model.attention_masked_training=true needs an attention backend that takes a mask; "
                          f"model.attention_backend={model.attention_backend} does not (valid choices: {masking})")
    check_kontext(cfg)
    check_guidance(cfg)
    real_cfg = validation.enabled and validation.guidance_real > 1
    if real_cfg and validation.no_cfg_until_timestep >= validation.num_inference_steps:
        raise ConfigError(f"validation.no_cfg_until_timestep={validation.no_cfg_until_timestep} is not below "
                          f"validation.num_inference_steps={validation.num_inference_steps}: true CFG "
                          f"(validation.guidance_real={validation.guidance_real:g}) would never run; lower it")
    if validation.enabled and validation.guidance_real <= 1 and model.flavour in ("fluxbooru", "libreflux"):
        raise ConfigError(f"model.flavour={model.flavour} is de-distilled: its images need real CFG; set "
                          "validation.guidance_real > 1 (its config uses 6)")


def check_guidance(cfg: RunConfig) -> None:
    """Checkpoints without a guidance embedding (schnell, libreflux) read no embedded-guidance setting."""
    model, defaults = cfg.model, ModelConfig()
    if guidance_embeds(model):
        return
    inert = [f"model.{key}" for key in ("guidance_value", "guidance_mode", "guidance_min", "guidance_max")
             if getattr(model, key) != getattr(defaults, key)]
    if cfg.validation.enabled and cfg.validation.guidance != ValidationConfig().guidance:
        inert.append("validation.guidance")
    if inert:
        raise ConfigError(f"model.flavour={model.flavour} has no guidance embedding, so {', '.join(inert)} would do "
                          "nothing; remove them (true CFG at validation: validation.guidance_real)")


def check_kontext(cfg: RunConfig) -> None:
    kontext, validation = cfg.model.flavour == "kontext", cfg.validation
    if validation.reference_image and not kontext:
        raise ConfigError("validation.reference_image is the input image of FLUX.1 Kontext's edits; "
                          f"model.flavour={cfg.model.flavour} does not take one (pick model=flux_kontext)")
    references = {n for n, ds in cfg.data.conditioning().items() if ds.conditioning_type == "reference_strict"}
    if references and not kontext:
        raise ConfigError(f"conditioning datasets of reference images ({', '.join(sorted(references))}) feed FLUX.1 "
                          f"Kontext; model.flavour={cfg.model.flavour} does not read them")
    if not kontext:
        return
    unpaired = [name for name, ds in cfg.data.training().items() if ds.conditioning_data not in references]
    if unpaired:
        raise ConfigError(f"model.flavour=kontext trains edits of a reference image: give dataset(s) "
                          f"{', '.join(unpaired)} a data.datasets.<id>.conditioning_data (the id of a dataset with "
                          "dataset_type: conditioning, conditioning_type: reference_strict, holding the reference "
                          "images under the same relative paths)")
    if validation.enabled and not validation.reference_image:
        raise ConfigError("model.flavour=kontext edits an input image at validation: set validation.reference_image "
                          "to an image file")
    loss = cfg.eval.eval_loss
    held_out = next(iter(cfg.data.held_out().values()), None)
    if loss.enabled and (loss.instance_data_dir or held_out is None or held_out.conditioning_data not in references):
        raise ConfigError("model.flavour=kontext scores edits of reference images: its eval loss needs a "
                          "dataset_type: eval dataset with a conditioning_data (the held-out references), not "
                          "eval.eval_loss.instance_data_dir")


def guidance_embeds(model: ModelConfig) -> bool:
    return FLAVOURS[model.flavour].guidance_embeds


def loading_code(model: ModelConfig, adapter_type: str, dtype: str, denoiser_dtype: str, adapter_dir: str,
                 strength: float = 1.0, quantised: Optional[Mapping[str, str]] = None) -> List[str]:
    """The model card's pipeline lines: the flavour's pipeline, the transformer/VAE overrides, the adapter."""
    apart = []
    if adapter_type == "full":
        apart.append(LoadedApart("transformer", "FluxTransformer2DModel", f"{adapter_dir}/transformer", None,
                                 denoiser_dtype))
    elif model.pretrained_transformer_model_name_or_path:
        apart.append(LoadedApart("transformer", "FluxTransformer2DModel", *transformer_source(model), dtype))
    if model.pretrained_vae_model_name_or_path:
        apart.append(LoadedApart("vae", "AutoencoderKL", model.pretrained_vae_model_name_or_path,
                                 subfolder(model.pretrained_vae_subfolder), dtype))
    built_in = BuiltIn("simpletuner_pl.models.tiny_flux",
                       f"build_tiny_flux_components(guidance_embeds={guidance_embeds(model)})") if model.tiny else None
    return pipeline_code(FLAVOURS[model.flavour].pipeline, model, dtype, apart,
                         adapter_code(adapter_type, adapter_dir, "transformer", strength), quantised=quantised,
                         built_in=built_in)


FLUX = FamilySpec(
    name="flux", title="Flux", flavours=tuple(FLAVOURS), denoiser_name="transformer",
    module="simpletuner_pl.models.flux:FluxModule", loader="simpletuner_pl.models.loading_flux:load_components",
    denoiser_class="diffusers:FluxTransformer2DModel", pipeline="diffusers:FluxPipeline", targets=FLUX_TARGETS,
    # Input/output projections and the final norm are tiny and sensitive; SimpleTuner keeps them in high precision.
    keep_high_precision=("x_embedder", "context_embedder", "norm_out", "proj_out"),
    preview_decoder="madebyollin/taef1",
    # no `kohya`: sd-scripts' Flux layout fuses q/k/v, which diffusers reads only at full-size widths
    export_formats={"universal": "peft+alpha", "diffusers": "peft", "comfyui": "peft+alpha"},
    options=(TRANSFORMER_KEY, "model.guidance_value", "model.guidance_mode", "model.guidance_min",
             "model.guidance_max", "model.t5_max_length", "model.t5_padding", "model.attention_masked_training",
             ASSISTANT_KEY, "validation.guidance_real", "validation.no_cfg_until_timestep",
             "validation.reference_image"),
    sources=sources, denoiser_source=transformer_source, check=check,
    flavour_pipelines={name: f"diffusers:{f.pipeline}" for name, f in FLAVOURS.items()},
    routed_blocks=("transformer_blocks", "single_transformer_blocks"),
    block_names=("single_transformer_blocks", "double_blocks", "single_blocks"),
    planner="simpletuner_pl.models.flux_planner",
)
