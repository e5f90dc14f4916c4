"""Assemble one training batch (in a DataLoader worker) from a `BatchRequest`.

The batch is built whole rather than per sample because its shape decisions are per batch: all samples share a
bucket, and either every latent is in the cache (→ `latents`) or the batch carries `pixel_values` (cache disabled,
or entries still to be filled on demand, which the datamodule encodes and writes on the accelerator).
Caption choice (one line of a multi-line sidecar) and caption dropout are seeded by the step, so a resumed run
draws what the original run would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from simpletuner_pl.data.cache import TensorCache, pad_text
from simpletuner_pl.data.catalog import Sample
from simpletuner_pl.data.images import load_pixels, normalise
from simpletuner_pl.data.sampler import BatchRequest
from simpletuner_pl.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    is_regularisation: bool
    caption_dropout: float
    latents: Optional[TensorCache]  # None: always pixels (vae_cache_disable, or no encoder attached yet)


@dataclass(frozen=True)
class TextSource:
    cache: TensorCache
    keys: Dict[str, str]  # caption → cache key
    max_length: int


class BatchDataset(torch.utils.data.Dataset):
    def __init__(self, samples: List[Sample], specs: List[DatasetSpec], latent_keys: List[Optional[str]],
                 text: Optional[TextSource], seed: int):
        self.samples, self.specs, self.latent_keys, self.text, self.seed = samples, specs, latent_keys, text, seed

    def __len__(self) -> int:
        return len(self.samples)

    def _captions(self, samples: List[Sample], spec: DatasetSpec, request: BatchRequest) -> List[str]:
        rng = np.random.default_rng([self.seed, request.epoch, request.position, 2])
        chosen = [s.captions[int(rng.integers(len(s.captions)))] for s in samples]
        return ["" if rng.random() < spec.caption_dropout else c for c in chosen]

    def _cached_latents(self, keys: List[Optional[str]], spec: DatasetSpec) -> Optional[torch.Tensor]:
        if spec.latents is None or None in keys:
            return None
        try:
            return torch.stack([spec.latents.load(key)["latents"] for key in keys])
        except Exception:  # missing or unreadable entry: encode again (on demand) and overwrite it
            return None

    def _pixels(self, indices: List[int]) -> tuple:
        """Decode the batch; an image that fails is replaced by another of the same batch (same bucket)."""
        pixels: Dict[int, torch.Tensor] = {}
        for i in indices:
            if i not in pixels:
                try:
                    pixels[i] = load_pixels(self.samples[i].path, self.samples[i].geometry)
                except Exception as err:
                    log.warning("skipping %s in this batch: cannot decode (%s)", self.samples[i].path, err)
        if not pixels:
            raise DataError(f"no image of a batch could be decoded: {[self.samples[i].path for i in indices]}")
        good = list(pixels)
        indices = [i if i in pixels else good[n % len(good)] for n, i in enumerate(indices)]
        return indices, normalise(torch.stack([pixels[i] for i in indices]))

    def _text(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        """Cached text embeddings; an entry that cannot be read (emptied, truncated by a full disk) leaves the
        batch with its captions only, which the module encodes itself."""
        try:
            return pad_text([self.text.cache.load(self.text.keys[c]) for c in captions], self.text.max_length)
        except Exception as err:  # any damage: fall back, never stop the run
            log.warning("text cache entry unreadable (%s: %s); encoding this batch's captions instead",
                        type(err).__name__, err)
            return {}

    def __getitem__(self, request: BatchRequest) -> dict:
        spec = self.specs[request.dataset]
        indices = list(request.indices)
        batch: Dict[str, object] = {"dataset_id": spec.id, "is_regularisation": spec.is_regularisation,
                                    "_position": (request.epoch, request.position)}
        latents = self._cached_latents([self.latent_keys[i] for i in indices], spec)
        if latents is not None:
            batch["latents"] = latents
        else:
            indices, batch["pixel_values"] = self._pixels(indices)
            if spec.latents is not None:  # missing entries: the datamodule encodes them and fills the cache
                batch["_latent_cache"] = str(spec.latents.root)
                batch["_latent_keys"] = [self.latent_keys[i] for i in indices]
        samples = [self.samples[i] for i in indices]
        batch["captions"] = self._captions(samples, spec, request)
        if self.text is not None:
            batch.update(self._text(batch["captions"]))
        for name in ("original_size", "crop_top_left", "target_size"):
            batch[name] = torch.tensor([getattr(s.geometry, name) for s in samples], dtype=torch.long)
        return batch
