"""The Flux transformer's inputs for a batch, laid out exactly as diffusers' pipelines lay them out.

- Packed 2x2 latent patches and their position ids (`FluxPipeline` helpers).
- Kontext reference latents packed the same way and appended after the noisy tokens, their ids' first channel set
  to 1, the prediction for them sliced off (`FluxKontextPipeline`: one global timestep for every token).
- With attention-masked training, a key mask over [text; image (; reference)] that hides the T5 pad tokens from
  every query, in the double- and the single-stream blocks (diffusers' processors take it as `attention_mask`).
- Per-sample guidance: the constant `model.guidance_value`, or `U(guidance_min, guidance_max)` while training with
  `model.guidance_mode=random-range`.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.inference import key_mask


def packed(latents: torch.Tensor, dtype: torch.dtype, reference: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, h/2·w/2, 4C], ids [h/2·w/2, 3]) of latents [B, C, h, w]; reference ids have channel 0 = 1."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    tokens = FluxPipeline._pack_latents(latents, b, c, h, w).to(dtype)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, dtype)
    if reference:
        ids[..., 0] = 1
    return tokens, ids


def guidance(model: ModelConfig, batch: int, device: torch.device, training: bool) -> torch.Tensor:
    if training and model.guidance_mode == "random-range":
        return torch.rand(batch, device=device) * (model.guidance_max - model.guidance_min) + model.guidance_min
    return torch.full((batch,), model.guidance_value, device=device, dtype=torch.float32)


def force_keep(mask: torch.Tensor, with_reference: bool) -> torch.Tensor:
    """TREAD's tokens to keep for a loss mask [B, 1, h, w]: the 2x2 patches whose area-mean is above 0.5 (the
    regions the loss counts), [B, h/2·w/2]; Kontext's reference tokens follow, never forced."""
    grid = torch.nn.functional.interpolate(mask.float(), size=(mask.shape[2] // 2, mask.shape[3] // 2), mode="area")
    keep = grid[:, 0].flatten(1) > 0.5
    return torch.cat([keep, torch.zeros_like(keep)], dim=1) if with_reference else keep


def transformer_inputs(noisy: torch.Tensor, text: Dict[str, torch.Tensor], dtype: torch.dtype, model: ModelConfig,
                       guidance_embeds: bool, training: bool,
                       reference: Optional[torch.Tensor] = None) -> Tuple[Dict[str, object], int]:
    """The keyword arguments of `FluxTransformer2DModel.forward` and the number of tokens to keep from its output."""
    tokens, ids = packed(noisy, dtype)
    keep = tokens.shape[1]
    if reference is not None:
        reference_tokens, reference_ids = packed(reference, dtype, reference=True)
        tokens, ids = torch.cat([tokens, reference_tokens], dim=1), torch.cat([ids, reference_ids], dim=0)
    embeds = text["prompt_embeds"]
    kwargs: Dict[str, object] = dict(
        hidden_states=tokens, pooled_projections=text["pooled_prompt_embeds"].to(dtype),
        encoder_hidden_states=embeds.to(dtype), img_ids=ids,
        txt_ids=torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=dtype), return_dict=False,
        guidance=guidance(model, noisy.shape[0], noisy.device, training) if guidance_embeds else None,
    )
    if model.attention_masked_training:
        kwargs["joint_attention_kwargs"] = {"attention_mask": key_mask(text["attention_mask"], tokens.shape[1])}
    return kwargs, keep
