"""Fill the latent and text-embedding caches with the module's own encoders, in batches.

Latents: images of one bucket are decoded and cropped in DataLoader workers (so decoding overlaps the VAE), encoded
`vae_batch_size` at a time, and written by a small thread pool (so the next batch encodes while files are written).
An image that fails to decode is reported back instead of stopping the run. Text: captions are encoded
`write_batch_size` at a time (on demand: a batch's new ones, `caching.texts_on_demand`); `text_entries` is the stored
form: a sequence trimmed to its real tokens only where that is lossless (every position after them exactly zero:
Flux's `t5_padding=zero`), else whole (`unmodified`: T5's own outputs at the pad tokens, which the transformer sees
at inference), with its real token count.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from simpletuner_pl.data.batch import no_collate
from simpletuner_pl.data.buckets import Geometry
from simpletuner_pl.data.cache import TensorCache
from simpletuner_pl.data.images import load_pixels, normalise
from simpletuner_pl.progress import Progress

log = logging.getLogger(__name__)
Job = Tuple[str, str, Geometry]  # (cache key, image path, geometry)


@dataclass
class TextStats:
    """What one cache fill stored: for the log line that says what `t5_max_length` costs."""

    captions: int = 0
    longest: int = 0  # real tokens of the longest caption
    filled: int = 0  # captions whose tokens fill the whole sequence (truncated, or exactly that long)
    bytes: int = 0

    def add(self, length: int, max_length: int, size: int) -> None:
        self.captions, self.bytes = self.captions + 1, self.bytes + size
        self.longest, self.filled = max(self.longest, length), self.filled + (length >= max_length)


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


def encode_latents(module, jobs: Sequence[Job], cache: TensorCache, batch_size: int, num_workers: int,
                   mode: bool = False, what: str = "VAE cache") -> Dict[str, str]:
    """Encode and write every job (`mode`: the posterior mode, as pipelines encode reference images); returns
    {path: reason} for images that could not be decoded. Progress (count, rate) goes to the screen and the log."""
    groups: Dict[Tuple[int, int], List[Job]] = {}
    for job in jobs:
        groups.setdefault(job[2].bucket, []).append(job)
    chunks = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    loader = DataLoader(_Chunks(chunks), batch_size=None, num_workers=num_workers, collate_fn=no_collate,
                        prefetch_factor=4 if num_workers else None)
    failures: Dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=4) as writer, \
            Progress(what, len(jobs), "latents", log, where=str(cache.root)) as progress:
        pending = []
        for keys, pixels, failed in loader:
            failures.update(failed)
            progress.advance(len(failed))
            if pixels is None:
                continue
            latents = module.encode_images(normalise(pixels), mode=mode).to("cpu")
            pending += [writer.submit(cache.save, key, {"latents": latent.clone()})
                        for key, latent in zip(keys, latents)]
            progress.advance(len(keys))
        for future in pending:
            future.result()
    return failures


def stored_sequence(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """The sequence [L, D] as cached: cut to its `length` real tokens when the rest is exactly zero (lossless)."""
    return embeds[:length] if not torch.count_nonzero(embeds[length:]) else embeds


def text_entries(encoded: Dict[str, torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
    """One cache entry per caption of an `encode_prompts` result, on the CPU: its sequence (`stored_sequence`), its
    pooled vector and its real token count (`length`, the attention mask's sum). The up-front and the on-demand
    cache both store exactly this."""
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    embeds, pooled = encoded["prompt_embeds"].to("cpu"), encoded["pooled_prompt_embeds"].to("cpu")
    entries = []
    for i, raw in enumerate(lengths):
        length = max(1, int(raw))
        entries.append({"prompt_embeds": stored_sequence(embeds[i], length).clone(),
                        "pooled_prompt_embeds": pooled[i].clone(), "length": torch.tensor(length)})
    return entries


def encode_texts(module, captions: Sequence[Tuple[str, str]], cache: TensorCache, batch_size: int) -> TextStats:
    """Encode (key, caption) pairs into the cache (`text_entries`), `batch_size` captions per encoder call."""
    stats = TextStats()
    with ThreadPoolExecutor(max_workers=4) as writer, \
            Progress("text cache", len(captions), "captions", log, where=str(cache.root)) as progress:
        pending = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            encoded = module.encode_prompts([caption for _, caption in chunk])
            max_length = encoded["prompt_embeds"].shape[1]
            for (key, _), tensors in zip(chunk, text_entries(encoded)):
                stats.add(int(tensors["length"]), max_length,
                          sum(t.numel() * t.element_size() for t in tensors.values()))
                pending.append(writer.submit(cache.save, key, tensors))
            progress.advance(len(chunk))
        for future in pending:
            future.result()
    return stats


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
