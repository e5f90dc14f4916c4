"""What the memory planner needs to know about Flux: its components on the meta device, and a training step's
transformer inputs at a resolution. Parameter counts are exact (a local folder's configs, else the published
FLUX.1 ones); nothing is allocated."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from torch import nn

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.flux_spec import guidance_embeds

FLUX1 = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
             joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")
FLUX_VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                use_quant_conv=False, use_post_quant_conv=False)


def meta_components(model: ModelConfig) -> Dict[str, nn.Module]:
    """Transformer, text encoders and VAE on the meta device, from the model's folder when it is local."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if model.is_builtin_tiny:
        from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

        parts = build_tiny_flux_components(guidance_embeds=guidance_embeds(model))
        return {n: parts[n].to("meta") for n in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    path = model.pretrained_model_name_or_path
    folder = Path(path).expanduser() if path else None
    with torch.device("meta"):
        if folder is not None and (folder / "model_index.json").is_file():
            return dict(transformer=FluxTransformer2DModel.from_config(
                            FluxTransformer2DModel.load_config(folder / "transformer")),
                        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                        text_encoder_2=T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2")),
                        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")))
        return dict(transformer=FluxTransformer2DModel(**{**FLUX1, "guidance_embeds": guidance_embeds(model)}),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)), vae=AutoencoderKL(**FLUX_VAE))


def profile_inputs(transformer: nn.Module, side: int, batch: int, model: ModelConfig, dtype: torch.dtype) -> dict:
    """Meta tensors of one training forward at `side` px: packed image tokens (Kontext: as many reference tokens
    again), the T5 sequence of `model.t5_max_length`, pooled CLIP, ids."""
    config, text_tokens = transformer.config, model.t5_max_length
    tokens = (side // 16) ** 2 * (2 if model.flavour == "kontext" else 1)
    meta = dict(device="meta", dtype=dtype)
    inputs = dict(hidden_states=torch.empty(batch, tokens, config.in_channels, **meta),
                  encoder_hidden_states=torch.empty(batch, text_tokens, config.joint_attention_dim, **meta),
                  pooled_projections=torch.empty(batch, config.pooled_projection_dim, **meta),
                  timestep=torch.empty(batch, **meta), txt_ids=torch.empty(text_tokens, 3, **meta),
                  img_ids=torch.empty(tokens, 3, **meta), return_dict=False)
    if config.guidance_embeds:
        inputs["guidance"] = torch.empty(batch, device="meta", dtype=torch.float32)
    return inputs
