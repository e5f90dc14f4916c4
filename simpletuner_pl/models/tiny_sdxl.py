"""Tiny random-init SDXL pipeline, for tests, CI and CPU experiments.

Same classes and plumbing as `stabilityai/stable-diffusion-xl-base-1.0` (CLIP-L + CLIP-G with projection, penultimate
hidden states, text_time added conditioning, a 4-channel VAE with 8x downsampling, the Euler scheduler config SDXL
ships), at about 1.3M parameters, with the shared tiny CLIP encoders and tokenizer (`simpletuner_pl.models.tiny`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletuner_pl.models.tiny import clip_config, load_tiny_tokenizers, tiny_vae

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline

TIME_EMBED_DIM = 8
TEXT_DIM = 32  # hidden size of each tiny CLIP; the UNet's cross-attention sees both, concatenated

TINY_SDXL_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    transformer_layers_per_block=(1, 1),
    projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,  # 6 time ids + CLIP-G pooled projection
    cross_attention_dim=2 * TEXT_DIM,
    norm_num_groups=8,
)
"""`UNet2DConditionModel` kwargs of the tiny model; override them per call."""


def build_tiny_sdxl_components(seed: int = 0, **unet_overrides: Any) -> dict[str, Any]:
    """`StableDiffusionXLPipeline` constructor kwargs; weights depend only on `seed` (the global RNG is untouched)."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, _ = load_tiny_tokenizers()
    clip_cfg = clip_config(len(tokenizer), hidden_size=TEXT_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(clip_cfg)
        text_encoder_2 = CLIPTextModelWithProjection(clip_cfg)
        unet = UNet2DConditionModel(**{**TINY_SDXL_UNET, **unet_overrides})
        vae = tiny_vae(4, scaling_factor=0.13025)  # SDXL's VAE: 4 channels, its scale
    scheduler = EulerDiscreteScheduler(  # SDXL base's shipped inference scheduler; training reads it as DDPM
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", prediction_type="epsilon",
    )
    # In eval mode, as `from_pretrained` returns models (CLIP's dropout must not make inference random).
    return dict(vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
                tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(), scheduler=scheduler)


def build_tiny_sdxl_pipeline(seed: int = 0, **unet_overrides: Any) -> StableDiffusionXLPipeline:
    """A ready `StableDiffusionXLPipeline` (CPU, float32) of tiny random-init components."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed, **unet_overrides),
                                     force_zeros_for_empty_prompt=True)


def save_tiny_sdxl_pipeline(directory: str | Path, seed: int = 0, **unet_overrides: Any) -> Path:
    """Save the tiny pipeline as a diffusers folder: a stand-in for a `stable-diffusion-xl-base-1.0` download."""
    directory = Path(directory)
    build_tiny_sdxl_pipeline(seed, **unet_overrides).save_pretrained(directory, safe_serialization=True)
    return directory
