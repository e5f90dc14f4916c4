"""`AspectBucketDataModule`: the discovered datasets as bucketed, cached, resumable training batches.

Lifecycle under Lightning: `setup` re-plans the buckets only if the real number of ranks differs from the one
discovery planned for, and writes `output_dir/data/buckets.json`; `build_caches` (the `BuildCaches` callback, at
fit start, on the module's device) fills this rank's share of the latent and text caches, drops images that fail to
decode, then parks the encoders off the accelerator; `train_dataloader` serves batches. `state_dict` holds the
position of the last batch trained on, so a resume continues the epoch where it stopped. Without caches (no
encoders lent yet), batches carry `pixel_values` and `captions` for the module to encode itself. On-demand entries
(`vae_cache_ondemand`, `text_cache_ondemand`) are encoded and written in `on_after_batch_transfer`, on the device.
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

from simpletuner_pl.config.data import DataConfig
from simpletuner_pl.config.schema import TrainConfig
from simpletuner_pl.data.batch import Batch, no_collate
from simpletuner_pl.data.cache import TensorCache, latent_key
from simpletuner_pl.data.caching import Encoders, fill_latents, fill_texts, gather_failures, texts_on_demand
from simpletuner_pl.data.catalog import Catalog
from simpletuner_pl.data.dataset import BatchDataset, DatasetSpec, TextSource
from simpletuner_pl.data.encode import Job, offload
from simpletuner_pl.data.plan import EffectiveBatch
from simpletuner_pl.data.report import bucket_report
from simpletuner_pl.data.sampler import BucketBatchSampler, WeightedDataset
from simpletuner_pl.io import write_json

log = logging.getLogger(__name__)


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

    def __iter__(self):
        """Every epoch starts from the batch after the last one trained on: Lightning stops an epoch after
        `len(loader)` batches without exhausting the sampler, so the sampler cannot count its epochs itself."""
        self.sampler.set_start(*self.datamodule.start)
        return super().__iter__()


class AspectBucketDataModule(L.LightningDataModule):
    def __init__(self, data: DataConfig, train: TrainConfig, seed: int, catalog: Catalog,
                 output_dir: str | os.PathLike):
        super().__init__()
        self.data, self.train_cfg, self.seed, self.catalog = data, train, seed, catalog
        self.output_dir = Path(output_dir)
        self.plan = catalog.plan
        self.encoders: Optional[Encoders] = None
        self.vae_identity: Optional[str] = None
        self.text: Optional[TextSource] = None
        self.start = (0, 0)  # (epoch, position) of the next batch to train on
        self.lay_out()

    def rank_and_world(self) -> tuple:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def lay_out(self) -> None:
        """Samples, this rank's sampler and the latent cache keys, from the current plan."""
        rank, world = self.rank_and_world()
        self.samples, weighted = [], []
        for name, index in self.catalog.items():
            offset = len(self.samples)
            self.samples += index.samples
            kept = self.plan.datasets[name].kept.values()
            weighted.append(WeightedDataset([[offset + i for i in members] for members in kept],
                                            index.config.repeats, index.config.probability))
        self.sampler = BucketBatchSampler(weighted, self.train_cfg.batch_size, self.seed, rank, world)
        cached = [self.vae_identity is not None and not self.data.datasets[s.dataset_id].vae_cache_disable
                  for s in self.samples]
        self.latent_keys = [latent_key(s.identity, s.geometry, self.vae_identity) if keep else None
                            for s, keep in zip(self.samples, cached)]
        # Reference latents are the posterior mode (as FluxKontextPipeline encodes its input image): their own key.
        self.reference_keys = [latent_key(s.reference_identity, s.geometry, f"{self.vae_identity}|mode")
                               if keep and s.reference else None for s, keep in zip(self.samples, cached)]

    def replan(self) -> None:
        self.plan = self.catalog.replan(EffectiveBatch.of(self.train_cfg, self.rank_and_world()[1]))
        self.lay_out()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.rank_and_world()[1] != self.plan.batch.world:
            self.replan()
        else:
            self.lay_out()  # this rank's shard
        self.write_report()

    # ---- caches ---------------------------------------------------------------------------------------------
    def my_samples(self, dataset: int) -> np.ndarray:
        return np.unique(np.concatenate(self.sampler.shards[dataset]))

    def latent_jobs(self) -> Dict[str, List[Job]]:
        """Per dataset whose latents are cached up front: (key, path, geometry) of this rank's samples."""
        jobs = {}
        for d, (name, index) in enumerate(self.catalog.items()):
            if not (index.config.vae_cache_disable or index.config.vae_cache_ondemand):
                jobs[name] = [(self.latent_keys[i], self.samples[i].path, self.samples[i].geometry)
                              for i in self.my_samples(d)]
        return jobs

    def reference_jobs(self) -> Dict[str, List[Job]]:
        """Per conditioning dataset: (key, reference path, its target's geometry) of this rank's samples, always
        cached up front (unless the target dataset's `vae_cache_disable`)."""
        jobs: Dict[str, List[Job]] = {}
        for d, index in enumerate(self.catalog.datasets.values()):
            conditioning = index.config.conditioning_data
            references = conditioning is not None and self.data.datasets[conditioning].conditioning_type != "mask"
            if references and not index.config.vae_cache_disable:
                jobs.setdefault(conditioning, []).extend(
                    (self.reference_keys[i], self.samples[i].reference, self.samples[i].geometry)
                    for i in self.my_samples(d))
        return jobs

    def my_captions(self) -> List[str]:
        captions = [c for d in range(len(self.sampler.shards)) for i in self.my_samples(d)
                    for c in self.samples[i].captions]
        if any(index.config.caption_dropout_probability > 0 for _, index in self.catalog.items()):
            captions.append("")
        return captions

    def build_caches(self, encoders: Encoders) -> None:
        """Fill this rank's share of the caches, drop undecodable images everywhere, free the accelerator."""
        identity = encoders.cache_identity()
        self.encoders, self.vae_identity = encoders, identity["vae"]
        self.lay_out()  # latent keys now carry the VAE's identity
        while failures := gather_failures({**fill_latents(self.data, self.latent_jobs(), encoders),
                                           **fill_latents(self.data, self.reference_jobs(), encoders, mode=True)}):
            self.drop(failures)
            self.replan()
        self.text = fill_texts(self.data, self.my_captions(), encoders, identity["text"])
        if self.rank_and_world()[1] > 1:
            self.trainer.strategy.barrier()
        keep_vae = any(i.config.vae_cache_disable or i.config.vae_cache_ondemand for _, i in self.catalog.items())
        keep_text = self.text.ondemand  # on-demand batches still encode captions
        offload(encoders, ([] if keep_text else list(encoders.text_encoder_names)) + ([] if keep_vae else ["vae"]))
        self.write_report()

    def drop(self, failures: Dict[str, str]) -> None:
        for name, index in self.catalog.items():
            failed = {s.path: failures.get(s.path) or f"reference {s.reference}: {failures[s.reference]}"
                      for s in index.samples if s.path in failures or s.reference in failures}
            for path, reason in failed.items():
                log.warning("dataset %s: skipping %s: %s", name, path, reason)
                index.skipped.append({"path": path, "reason": reason})
            index.samples = [s for s in index.samples if s.path not in failed]

    def write_report(self) -> None:
        if self.rank_and_world()[0] == 0:
            report = bucket_report(self.catalog, self.plan, self.sampler.steps_per_dataset())
            write_json(self.output_dir / "data" / "buckets.json", report)

    # ---- batches --------------------------------------------------------------------------------------------
    def dataset_spec(self, name: str, ds) -> DatasetSpec:
        def cache(folder: Optional[str]) -> Optional[TensorCache]:
            if folder is None or self.vae_identity is None or ds.vae_cache_disable:
                return None
            return TensorCache(self.data.vae_cache_dir(folder))

        return DatasetSpec(name, ds.is_regularisation_data, ds.caption_dropout_probability, cache(name),
                           cache(ds.conditioning_data))

    def train_dataloader(self) -> DataLoader:
        specs = [self.dataset_spec(name, index.config) for name, index in self.catalog.items()]
        self.sampler.set_start(*self.start)
        dataset = BatchDataset(self.samples, specs, self.latent_keys, self.text, self.seed, self.reference_keys)
        workers = self.data.num_workers
        return ResumableLoader(dataset, batch_size=None, sampler=self.sampler, num_workers=workers,
                               collate_fn=no_collate, pin_memory=torch.cuda.is_available(),
                               persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                               datamodule=self)

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        epoch, position = batch.pop("_position")
        self.start = (epoch, position + 1)
        return batch

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Encode batches whose latents or text embeddings are not cached yet (on-demand filling) and write them."""
        keys, root = batch.pop("_latent_keys", None), batch.pop("_latent_cache", None)
        if keys is not None and self.encoders is not None:
            pixels = batch.pop("pixel_values")
            batch["latents"] = self.encoders.encode_images(pixels).to(pixels.device)
            cache = TensorCache(Path(root))
            for key, latent in zip(keys, batch["latents"]):
                cache.save(key, {"latents": latent.clone()})
        if batch.pop("_text_pending", False) and self.encoders is not None and self.text is not None:
            device = batch["latents"].device if "latents" in batch else batch["pixel_values"].device
            text = texts_on_demand(self.encoders, self.text, batch["captions"])
            batch.update({name: tensor.to(device) for name, tensor in text.items()})
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.start[0], "position": self.start[1]}

    def load_state_dict(self, state: dict) -> None:
        self.start = (int(state["epoch"]), int(state["position"]))
