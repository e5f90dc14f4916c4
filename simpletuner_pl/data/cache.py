"""Content-keyed safetensors caches for VAE latents and text embeddings.

An entry's file name is the SHA-256 of everything its tensor depends on, so a changed setting (resolution, crop,
VAE, text encoder, T5 length) finds no entry and re-encodes instead of reusing a stale one, and two images with
the same stem (`a.jpg`, `a.png`) never share one. Writes go to a temporary file in the same folder and are renamed
into place, so a crash never leaves a half-written entry. Entries are spread over 256 sub-folders.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, Set

import torch
from safetensors.torch import load_file, save_file

from simpletuner_pl.data.buckets import Geometry
from simpletuner_pl.io import atomic_path

SUFFIX = ".safetensors"
MIN_ENTRY_BYTES = 8  # a safetensors file starts with an 8-byte header length: anything shorter is an emptied entry


def latent_key(identity: str, geometry: Geometry, vae_identity: str) -> str:
    """Key of a latent: file identity (path, mtime, size) + crop/bucket geometry + VAE identity."""
    parts = (identity, geometry.bucket, geometry.resized, geometry.crop_top_left, vae_identity)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def text_key(caption: str, text_identity: str, max_length: int) -> str:
    """Key of a caption's embeddings: caption + text-encoder identity + T5 maximum length."""
    return hashlib.sha256(repr((caption, text_identity, max_length)).encode()).hexdigest()


class TensorCache:
    """A folder of `<key[:2]>/<key>.safetensors` files."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def keys(self) -> Set[str]:
        """Every complete entry, from one listing per sub-folder; emptied files (a full disk, a killed copy) are not
        entries, so they are encoded again."""
        found: Set[str] = set()
        if not self.root.is_dir():
            return found
        with os.scandir(self.root) as shards:
            for shard in shards:
                if shard.is_dir() and len(shard.name) == 2:
                    with os.scandir(shard.path) as entries:
                        found.update(e.name[: -len(SUFFIX)] for e in entries
                                     if e.name.endswith(SUFFIX) and not e.name.startswith(".")
                                     and e.stat().st_size > MIN_ENTRY_BYTES)
        return found

    def missing(self, keys: Iterable[str]) -> Set[str]:
        return set(keys) - self.keys()

    def save(self, key: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str] | None = None) -> None:
        with atomic_path(self.path(key)) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)

    def load(self, key: str) -> Dict[str, torch.Tensor]:
        return load_file(self.path(key))


def pad_text(entries: list, max_length: int) -> Dict[str, torch.Tensor]:
    """Stack cached sequences into [B, max_length, D] (a trimmed one gets zeros after its tokens, which is what it
    held) with the attention mask of each one's real `length`, and the pooled vectors into [B, D]."""
    first = entries[0]["prompt_embeds"]
    embeds = first.new_zeros((len(entries), max_length, first.shape[-1]))
    mask = torch.zeros((len(entries), max_length), dtype=torch.long)
    for i, entry in enumerate(entries):
        sequence = entry["prompt_embeds"][:max_length]
        embeds[i, : len(sequence)] = sequence
        mask[i, : min(max_length, int(entry["length"]))] = 1
    pooled = torch.stack([entry["pooled_prompt_embeds"] for entry in entries])
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "attention_mask": mask}
