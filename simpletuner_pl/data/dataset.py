"""Assemble one training batch (in a DataLoader worker) from a `BatchRequest`.

The batch is built whole rather than per sample because its shape decisions are per batch: all samples share a
bucket, and either every latent is in the cache (→ `latents`) or the batch carries `pixel_values` (cache disabled,
or entries still to be filled on demand, which the datamodule encodes and writes on the accelerator); text
embeddings likewise (`text_cache_ondemand`).
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
    references: Optional[TensorCache] = None  # the reference latents of its conditioning dataset (Kontext)


@dataclass(frozen=True)
class TextSource:
    cache: TensorCache
    keys: Dict[str, str]  # caption → cache key
    max_length: int
    ondemand: bool = False  # text_cache_ondemand: entries not written yet are filled by the datamodule


class BatchDataset(torch.utils.data.Dataset):
    def __init__(self, samples: List[Sample], specs: List[DatasetSpec], latent_keys: List[Optional[str]],
                 text: Optional[TextSource], seed: int, reference_keys: Optional[List[Optional[str]]] = None):
        self.samples, self.specs, self.latent_keys, self.text, self.seed = samples, specs, latent_keys, text, seed
        self.reference_keys = reference_keys or [None] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def _captions(self, samples: List[Sample], spec: DatasetSpec, request: BatchRequest) -> List[str]:
        rng = np.random.default_rng([self.seed, request.epoch, request.position, 2])
        chosen = [s.captions[int(rng.integers(len(s.captions)))] for s in samples]
        return ["" if rng.random() < spec.caption_dropout else c for c in chosen]

    @staticmethod
    def _cached(keys: List[Optional[str]], cache: Optional[TensorCache]) -> Optional[List[torch.Tensor]]:
        if cache is None or None in keys:
            return None
        try:
            return [cache.load(key)["latents"] for key in keys]
        except Exception:  # missing or unreadable entry: encode again (on demand) and overwrite it
            return None

    def _decode(self, indices: List[int], parts: List[str]) -> tuple:
        """Decode the files named by the `parts` attributes of the batch's samples ("path": the images, "reference",
        "mask"); a sample with any of them undecodable is replaced by another of the same batch (same bucket).
        Returns (indices, {part: {index: uint8 pixels}})."""
        decoded: Dict[str, Dict[int, torch.Tensor]] = {part: {} for part in parts}
        good = []
        for i in dict.fromkeys(indices):
            sample = self.samples[i]
            try:
                for part in parts:
                    decoded[part][i] = load_pixels(getattr(sample, part), sample.geometry)
                good.append(i)
            except Exception as err:
                log.warning("skipping %s in this batch: cannot decode (%s)", sample.path, err)
        if not good:
            raise DataError(f"no image of a batch could be decoded: {[self.samples[i].path for i in indices]}")
        return [i if i in good else good[n % len(good)] for n, i in enumerate(indices)], decoded

    def _text(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        """Cached text embeddings; an entry that cannot be read (emptied, truncated by a full disk) leaves the
        batch with its captions only, which the module encodes itself. On demand, a missing entry is expected: the
        batch is marked for the datamodule to encode and write its captions (`_text_pending`)."""
        try:
            return pad_text([self.text.cache.load(self.text.keys[c]) for c in captions], self.text.max_length)
        except Exception as err:  # any damage: fall back, never stop the run
            if self.text.ondemand:
                return {"_text_pending": True}
            log.warning("text cache entry unreadable (%s: %s); encoding this batch's captions instead",
                        type(err).__name__, err)
            return {}

    def __getitem__(self, request: BatchRequest) -> dict:
        spec = self.specs[request.dataset]
        indices = list(request.indices)
        batch: Dict[str, object] = {"dataset_id": spec.id, "is_regularisation": spec.is_regularisation,
                                    "_position": (request.epoch, request.position)}
        first = self.samples[indices[0]]
        with_reference, with_mask = first.reference is not None, first.mask is not None
        cached = dict(zip(indices, self._cached([self.latent_keys[i] for i in indices], spec.latents) or []))
        cached_references = dict(zip(indices, self._cached([self.reference_keys[i] for i in indices],
                                                           spec.references) or [])) if with_reference else {}
        needed = {"path": not cached, "reference": with_reference and not cached_references, "mask": with_mask}
        parts = [part for part, wanted in needed.items() if wanted]
        decoded = {}
        if parts:
            indices, decoded = self._decode(indices, parts)
        if cached:
            batch["latents"] = torch.stack([cached[i] for i in indices])
        else:
            batch["pixel_values"] = normalise(torch.stack([decoded["path"][i] for i in indices]))
            if spec.latents is not None:  # missing entries: the datamodule encodes them and fills the cache
                batch["_latent_cache"] = str(spec.latents.root)
                batch["_latent_keys"] = [self.latent_keys[i] for i in indices]
        if cached_references:
            batch["reference_latents"] = torch.stack([cached_references[i] for i in indices])
        elif with_reference:
            batch["reference_pixel_values"] = normalise(torch.stack([decoded["reference"][i] for i in indices]))
        if with_mask:  # channel 0 in [0, 1]: white trains, black is ignored
            batch["loss_mask"] = torch.stack([decoded["mask"][i][:1] for i in indices]).float() / 255
        samples = [self.samples[i] for i in indices]
        batch["captions"] = self._captions(samples, spec, request)
        if self.text is not None:
            batch.update(self._text(batch["captions"]))
        for name in ("original_size", "crop_top_left", "target_size"):
            batch[name] = torch.tensor([getattr(s.geometry, name) for s in samples], dtype=torch.long)
        return batch
