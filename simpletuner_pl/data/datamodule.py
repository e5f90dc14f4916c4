"""`AspectBucketDataModule`: the datasets of `discover_all` as bucketed, cached, resumable training batches.

Lifecycle under Lightning: `setup` prunes buckets for the real number of ranks and writes
`output_dir/data/buckets.json`; `build_caches` (called by the module's `on_fit_start`, on its device) fills the
latent and text caches for this rank's shard, drops images that fail to decode, then moves the encoders off the
accelerator; `train_dataloader` serves batches. `state_dict` holds the position of the last batch trained on,
so a checkpoint resume continues the epoch where it stopped. Without `build_caches` (a module that has no
encoders to lend), batches carry `pixel_values` and `captions` for the module to encode itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from simpletuner_pl.data.cache import TensorCache, latent_key, text_key
from simpletuner_pl.data.catalog import DatasetIndex, check_buckets, effective_batch
from simpletuner_pl.data.dataset import BatchDataset, DatasetSpec, TextSource
from simpletuner_pl.data.encode import encode_latents, encode_texts, offload
from simpletuner_pl.data.report import bucket_report, write_json
from simpletuner_pl.data.sampler import BucketBatchSampler

log = logging.getLogger(__name__)


def _identity(item):
    return item


class ResumableLoader(DataLoader):
    """A DataLoader Lightning recognises as resumable: its state is the datamodule's (the batch position)."""

    def __init__(self, *args, datamodule: "AspectBucketDataModule", **kwargs):
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def state_dict(self) -> dict:
        return self.datamodule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.datamodule.load_state_dict(state)
        self.sampler.set_start(*self.datamodule.start)


class AspectBucketDataModule(L.LightningDataModule):
    def __init__(self, cfg, catalog: Dict[str, DatasetIndex], output_dir: str | os.PathLike):
        super().__init__()
        self.cfg, self.catalog, self.output_dir = cfg, catalog, Path(output_dir)
        self.configs = {name: index.config for name, index in catalog.items()}
        self.module = None
        self.vae_identity: Optional[str] = None
        self.text: Optional[TextSource] = None
        self.start = (0, 0)  # (epoch, position) of the next batch to train on
        self.refresh()

    def rank_and_world(self) -> tuple:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def refresh(self) -> None:
        """Re-plan buckets, shards and cache keys for the current samples and number of ranks."""
        rank, world = self.rank_and_world()
        effective, spelled = effective_batch(self.cfg.train, world)
        self.samples, buckets = [], []
        for name, index in self.catalog.items():
            kept = check_buckets(name, index, effective, spelled)
            offset = len(self.samples)
            self.samples += index.samples
            buckets.append([[offset + i for i in members] for members in kept.values()])
        configs = list(self.configs.values())
        self.sampler = BucketBatchSampler(buckets, [c.repeats for c in configs], [c.probability for c in configs],
                                          self.cfg.train.batch_size, self.cfg.seed, rank, world)
        self.latent_keys = [None if self.vae_identity is None or self.configs[s.dataset_id].vae_cache_disable
                            else latent_key(s.identity, s.geometry, self.vae_identity) for s in self.samples]

    def setup(self, stage: Optional[str] = None) -> None:
        self.refresh()
        self.write_report()

    # ---- caches ---------------------------------------------------------------------------------------------
    def my_samples(self, dataset: int) -> np.ndarray:
        return np.unique(np.concatenate(self.sampler.shards[dataset]))

    def build_caches(self, module) -> None:
        """Fill this rank's share of the caches, drop undecodable images everywhere, free the accelerator."""
        data, world = self.cfg.data, self.rank_and_world()[1]
        identity = module.cache_identity()
        self.module, self.vae_identity = module, identity["vae"]
        while True:
            self.refresh()
            failures: Dict[str, str] = {}
            for d, (name, ds) in enumerate(self.configs.items()):
                if ds.vae_cache_disable or ds.vae_cache_ondemand:
                    continue
                cache = TensorCache(data.vae_cache_dir(name))
                have = cache.keys()
                jobs = [(self.latent_keys[i], self.samples[i].path, self.samples[i].geometry)
                        for i in self.my_samples(d) if self.latent_keys[i] not in have]
                if jobs:
                    log.info("dataset %s: encoding %d latents into %s", name, len(jobs), cache.root)
                failures.update(encode_latents(module, jobs, cache, data.vae_batch_size, data.num_workers))
            failures = self.gather(failures)
            if not failures:
                break
            self.drop(failures)
        self.cache_texts(module, identity["text"])
        if world > 1:
            self.trainer.strategy.barrier()
        keep_vae = any(ds.vae_cache_disable or ds.vae_cache_ondemand for ds in self.configs.values())
        offload(module, ["text_encoder", "text_encoder_2"] + ([] if keep_vae else ["vae"]))
        self.write_report()

    def cache_texts(self, module, text_identity: str) -> None:
        # The sequence length the model's own encoder pads to (Flux: model.t5_max_length; SDXL: CLIP's 77).
        max_length = int(module.encode_prompts([""])["prompt_embeds"].shape[1])
        captions = {c for d in range(len(self.configs)) for i in self.my_samples(d) for c in self.samples[i].captions}
        if any(ds.caption_dropout_probability > 0 for ds in self.configs.values()):
            captions.add("")
        keys = {c: text_key(c, text_identity, max_length) for c in sorted(captions)}
        cache = TensorCache(self.cfg.data.text_cache_dir())
        have = cache.keys()
        todo = [(k, c) for c, k in keys.items() if k not in have]
        if todo:
            log.info("encoding %d captions into %s", len(todo), cache.root)
        encode_texts(module, todo, cache, self.cfg.data.text_embeds.write_batch_size)
        self.text = TextSource(cache, keys, max_length)

    def gather(self, failures: Dict[str, str]) -> Dict[str, str]:
        """Every rank's decode failures, so all ranks drop the same images and keep identical plans."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            everyone: List[Dict[str, str]] = [{} for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(everyone, failures)
            return {path: reason for part in everyone for path, reason in part.items()}
        return failures

    def drop(self, failures: Dict[str, str]) -> None:
        for name, index in self.catalog.items():
            bad = [s for s in index.samples if s.path in failures]
            for sample in bad:
                log.warning("dataset %s: skipping %s: %s", name, sample.path, failures[sample.path])
                index.skipped.append({"path": sample.path, "reason": failures[sample.path]})
            index.samples = [s for s in index.samples if s.path not in failures]

    def write_report(self) -> None:
        rank, world = self.rank_and_world()
        if rank == 0:
            report = bucket_report(self.catalog, self.sampler.steps_per_dataset(),
                                   effective_batch(self.cfg.train, world)[0])
            write_json(self.output_dir / "data" / "buckets.json", report)

    # ---- batches --------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        data = self.cfg.data
        specs = [DatasetSpec(name, ds.is_regularisation_data, ds.caption_dropout_probability,
                             None if self.vae_identity is None or ds.vae_cache_disable
                             else TensorCache(data.vae_cache_dir(name)))
                 for name, ds in self.configs.items()]
        self.sampler.set_start(*self.start)
        dataset = BatchDataset(self.samples, specs, self.latent_keys, self.text, self.cfg.seed)
        workers = data.num_workers
        return ResumableLoader(dataset, batch_size=None, sampler=self.sampler, num_workers=workers,
                               collate_fn=_identity, pin_memory=torch.cuda.is_available(),
                               persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                               datamodule=self)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        epoch, position = batch.pop("_position")
        self.start = (epoch, position + 1)
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Encode batches whose latents are not cached yet (on-demand filling) and write them."""
        keys, root = batch.pop("_latent_keys", None), batch.pop("_latent_cache", None)
        if keys is not None and self.module is not None:
            pixels = batch.pop("pixel_values")
            batch["latents"] = self.module.encode_images(pixels).to(pixels.device)
            cache = TensorCache(Path(root))
            for key, latent in zip(keys, batch["latents"]):
                cache.save(key, {"latents": latent.clone()})
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.start[0], "position": self.start[1]}

    def load_state_dict(self, state: dict) -> None:
        self.start = (int(state["epoch"]), int(state["position"]))
