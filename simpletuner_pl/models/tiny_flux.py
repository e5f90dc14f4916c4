"""Tiny random-init Flux pipeline, for tests, CI and docs.

Real Flux checkpoints are tens of GB and need the Hugging Face hub. These
components have the same architecture classes and the same plumbing (two text
encoders, a 16-channel VAE with 8x downsampling, 2x2 latent packing, dynamic
shift), but they have about 0.3M parameters in total. They build in well under
a second on CPU and need no network. The tokenizers come from
``simpletuner_pl/assets/tiny_tokenizers`` (`simpletuner_pl.models.tiny`).

diffusers/transformers are imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletuner_pl.models.tiny import clip_config, load_tiny_tokenizers, tiny_vae

if TYPE_CHECKING:
    from diffusers import FluxPipeline

TINY_FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,  # 16 VAE latent channels x 2x2 packing
    out_channels=None,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,  # == T5 d_model
    pooled_projection_dim=32,  # == CLIP projection_dim
    guidance_embeds=True,  # like Flux-dev
    axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim
)
"""``FluxTransformer2DModel`` kwargs for the tiny model; override them per call."""


def build_tiny_flux_components(seed: int = 0, **transformer_overrides: Any) -> dict[str, Any]:
    """Build random-init ``FluxPipeline`` constructor kwargs.

    Weights depend only on ``seed`` (and the overrides). The global torch RNG is
    forked, so callers' random streams are unchanged.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = load_tiny_tokenizers()
    clip_cfg = clip_config(len(tokenizer), hidden_size=32)
    t5_cfg = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(clip_cfg)
        text_encoder_2 = T5EncoderModel(t5_cfg)
        transformer = FluxTransformer2DModel(**{**TINY_FLUX_TRANSFORMER, **transformer_overrides})
        vae = tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                       scaling_factor=0.3611)  # Flux's VAE: 16 channels, shifted and scaled latents
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    # In eval mode, as `from_pretrained` returns models (T5's dropout must not make inference random).
    return dict(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )


def build_tiny_flux_pipeline(seed: int = 0, **transformer_overrides: Any) -> FluxPipeline:
    """Return a ready ``FluxPipeline`` (CPU, float32) made of tiny random-init components."""
    from diffusers import FluxPipeline

    return FluxPipeline(**build_tiny_flux_components(seed, **transformer_overrides))


def save_tiny_flux_pipeline(directory: str | Path, seed: int = 0, **transformer_overrides: Any) -> Path:
    """Save a tiny pipeline as a diffusers folder, loadable by ``FluxPipeline.from_pretrained``.

    This stands in for a real ``black-forest-labs/FLUX.1-dev`` download wherever a model path is needed.
    """
    directory = Path(directory)
    build_tiny_flux_pipeline(seed, **transformer_overrides).save_pretrained(directory, safe_serialization=True)
    return directory
