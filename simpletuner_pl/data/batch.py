"""The training batch: what the data pipeline hands the model families, declared once.

A batch is one bucket of one dataset. It carries either cached `latents` or `pixel_values` (caches disabled, or
entries still to be filled on demand), and either cached text embeddings or only `captions` (the module then
encodes them itself). Keys starting with `_` are the pipeline's own bookkeeping and are removed before the batch
reaches the module (`AspectBucketDataModule.on_before/after_batch_transfer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple, TypedDict

if TYPE_CHECKING:
    import torch


class Batch(TypedDict, total=False):
    dataset_id: str
    is_regularisation: bool
    captions: List[str]
    latents: torch.Tensor  # [B, C, h, w], scaled (and shifted) VAE latents
    pixel_values: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    reference_latents: torch.Tensor  # [B, C, h, w] FLUX.1 Kontext: the reference images' latents (posterior mode)
    reference_pixel_values: torch.Tensor  # [B, 3, H, W] the same, not cached: encoded by the module
    prompt_embeds: torch.Tensor  # [B, L, D]
    pooled_prompt_embeds: torch.Tensor  # [B, D']
    attention_mask: torch.Tensor  # [B, L], 1 = a real token (T5 pad tokens are 0)
    original_size: torch.Tensor  # [B, 2] (h, w), upright, before resizing
    crop_top_left: torch.Tensor  # [B, 2] (top, left) in the resized image
    target_size: torch.Tensor  # [B, 2] (h, w) of the bucket
    drop_conditioning: torch.Tensor  # [B] bool, optional: conditioning dropped (else: empty caption)
    _position: Tuple[int, int]  # (epoch, step in epoch): the sampler position, for resume
    _latent_keys: List[str]  # on-demand latents: where to write them once encoded
    _latent_cache: str


TEXT_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "attention_mask")
TIME_ID_KEYS = ("original_size", "crop_top_left", "target_size")


def no_collate(item):
    """DataLoader `collate_fn` for datasets that build whole batches themselves."""
    return item
