"""Fill the latent and text-embedding caches with the module's own encoders, once per run, on its device.

Triggered by the `BuildCaches` callback at `on_fit_start`: by then Lightning has moved the module to its
accelerator and no dataloader exists yet. Each rank encodes only its own shard (the caches are shared folders,
content-keyed, so ranks never write the same entry); images that fail to decode come back as failures, which the
data module drops on every rank before planning again. The module lends its encoders through `Encoders`. With
`text_cache_ondemand` the startup pass is skipped and `texts_on_demand` fills the text cache batch by batch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterable, List, Protocol, Sequence, Tuple

import lightning as L
import torch

from simpletuner_pl.config.data import DataConfig
from simpletuner_pl.data.cache import TensorCache, pad_text, text_key
from simpletuner_pl.data.dataset import TextSource
from simpletuner_pl.data.encode import Job, encode_latents, encode_texts, text_entries

log = logging.getLogger(__name__)


class Encoders(Protocol):
    """What the data pipeline needs from a model family's module."""

    text_encoder_names: Tuple[str, ...]

    def encode_images(self, pixel_values: torch.Tensor, mode: bool = False) -> torch.Tensor: ...

    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]: ...

    def cache_identity(self) -> Dict[str, str]: ...


class BuildCaches(L.Callback):
    """Asks the data module to fill its caches with the module's encoders when fitting starts."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.datamodule.build_caches(pl_module)


def fill_latents(data: DataConfig, jobs: Dict[str, Sequence[Job]], encoders: Encoders,
                 mode: bool = False) -> Dict[str, str]:
    """Encode the jobs missing from each dataset's VAE cache (`mode`: the posterior mode, for reference images);
    returns path → reason for images that failed."""
    failures: Dict[str, str] = {}
    for name, dataset_jobs in jobs.items():
        cache = TensorCache(data.vae_cache_dir(name))
        have = cache.keys()
        todo = [job for job in dataset_jobs if job[0] not in have]
        what = f"dataset {name}: {'reference' if mode else 'VAE'} latents"
        failures.update(encode_latents(encoders, todo, cache, data.vae_batch_size, data.num_workers, mode, what))
    return failures


def fill_texts(data: DataConfig, captions: Iterable[str], encoders: Encoders, text_identity: str) -> TextSource:
    """Encode the captions missing from the text cache (none with `text_cache_ondemand`: batches fill it as they
    draw captions); returns where each caption's embeddings are."""
    # The sequence length the model's own encoder pads to (Flux: model.t5_max_length; SDXL: CLIP's 77).
    max_length = int(encoders.encode_prompts([""])["prompt_embeds"].shape[1])
    keys = {c: text_key(c, text_identity, max_length) for c in sorted(set(captions))}
    cache = TensorCache(data.text_cache_dir())
    if data.text_embeds.text_cache_ondemand:
        log.info("text cache on demand: %d captions are encoded into %s the first time a batch draws them",
                 len(keys), cache.root)
        return TextSource(cache, keys, max_length, ondemand=True)
    have = cache.keys()
    todo = [(k, c) for c, k in keys.items() if k not in have]
    stats = encode_texts(encoders, todo, cache, data.text_embeds.write_batch_size)
    if stats.captions:
        log.info("text cache: %d captions, %.2f MiB each; longest %d of %d tokens%s", stats.captions,
                 stats.bytes / stats.captions / 2**20, stats.longest, max_length,
                 f"; {stats.filled} fill all {max_length} (truncated, or exactly that long)" if stats.filled else "")
    return TextSource(cache, keys, max_length)


def texts_on_demand(encoders: Encoders, text: TextSource, captions: List[str]) -> Dict[str, torch.Tensor]:
    """A batch's text conditioning with `text_cache_ondemand`: its captions' cache entries, the missing ones
    encoded (together, once each) and written first. The batch gets them through `pad_text` from the stored form,
    as a later read of the cache would, so on-demand and up-front caching train on the same tensors."""
    entries: Dict[str, Dict[str, torch.Tensor]] = {}
    for caption in dict.fromkeys(captions):
        with contextlib.suppress(Exception):  # not written yet (or damaged: written again)
            entries[caption] = text.cache.load(text.keys[caption])
    missing = [c for c in dict.fromkeys(captions) if c not in entries]
    if missing:
        for caption, tensors in zip(missing, text_entries(encoders.encode_prompts(missing))):
            text.cache.save(text.keys[caption], tensors)
            entries[caption] = tensors
    return pad_text([entries[c] for c in captions], text.max_length)


def gather_failures(failures: Dict[str, str]) -> Dict[str, str]:
    """Every rank's decode failures, so all ranks drop the same images and keep identical plans."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everyone: List[Dict[str, str]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(everyone, failures)
        return {path: reason for part in everyone for path, reason in part.items()}
    return failures
