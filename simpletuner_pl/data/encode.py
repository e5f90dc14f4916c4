"""Fill the latent and text-embedding caches with the module's own encoders, in batches.

Latents: images of one bucket are decoded and cropped in DataLoader workers (so decoding overlaps the VAE), encoded
`vae_batch_size` at a time, and written by a small thread pool (so the next batch encodes while files are written).
An image that fails to decode is reported back instead of stopping the run. Text: captions are encoded
`write_batch_size` at a time and each T5 sequence is stored trimmed to its real token count.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from simpletuner_pl.data.batch import no_collate
from simpletuner_pl.data.buckets import Geometry
from simpletuner_pl.data.cache import TensorCache
from simpletuner_pl.data.images import load_pixels, normalise

log = logging.getLogger(__name__)
Job = Tuple[str, str, Geometry]  # (cache key, image path, geometry)


class _Chunks(Dataset):
    def __init__(self, chunks: List[List[Job]]):
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        keys, pixels, failures = [], [], []
        for key, path, geometry in self.chunks[i]:
            try:
                pixels.append(load_pixels(path, geometry))
                keys.append(key)
            except Exception as err:  # corrupt data PIL only finds while decoding
                failures.append((path, f"cannot decode ({type(err).__name__}: {err})"))
        return keys, torch.stack(pixels) if pixels else None, failures


def encode_latents(module, jobs: Sequence[Job], cache: TensorCache, batch_size: int,
                   num_workers: int) -> Dict[str, str]:
    """Encode and write every job; returns {path: reason} for images that could not be decoded."""
    groups: Dict[Tuple[int, int], List[Job]] = {}
    for job in jobs:
        groups.setdefault(job[2].bucket, []).append(job)
    chunks = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    loader = DataLoader(_Chunks(chunks), batch_size=None, num_workers=num_workers, collate_fn=no_collate,
                        prefetch_factor=4 if num_workers else None)
    failures: Dict[str, str] = {}
    done, started, last_log = 0, time.perf_counter(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as writer:
        pending = []
        for keys, pixels, failed in loader:
            failures.update(failed)
            if pixels is None:
                continue
            latents = module.encode_images(normalise(pixels)).to("cpu")
            pending += [writer.submit(cache.save, key, {"latents": latent.clone()})
                        for key, latent in zip(keys, latents)]
            done += len(keys)
            if time.perf_counter() - last_log > 10:
                last_log = time.perf_counter()
                log.info("VAE cache %s: %d/%d latents (%.0f/s)", cache.root, done, len(jobs),
                         done / (last_log - started))
        for future in pending:
            future.result()
    return failures


def encode_texts(module, captions: Sequence[Tuple[str, str]], cache: TensorCache, batch_size: int) -> None:
    """Encode (key, caption) pairs; store the T5 sequence unpadded (its real length is its first dimension)."""
    with ThreadPoolExecutor(max_workers=4) as writer:
        pending = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            encoded = module.encode_prompts([caption for _, caption in chunk])
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            embeds, pooled = encoded["prompt_embeds"].to("cpu"), encoded["pooled_prompt_embeds"].to("cpu")
            for i, (key, _) in enumerate(chunk):
                tensors = {"prompt_embeds": embeds[i, : max(1, int(lengths[i]))].clone(),
                           "pooled_prompt_embeds": pooled[i].clone()}
                pending.append(writer.submit(cache.save, key, tensors))
        for future in pending:
            future.result()


def offload(module, names: Sequence[str]) -> None:
    """Move encoders off the accelerator once nothing needs them on it, and give their memory back."""
    moved = False
    for name in names:
        component = getattr(module, name, None)
        param = next(component.parameters(), None) if isinstance(component, torch.nn.Module) else None
        if param is not None and param.device.type != "cpu":
            component.to("cpu")
            moved = True
    if moved and torch.cuda.is_available():
        torch.cuda.empty_cache()
