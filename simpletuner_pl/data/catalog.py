"""`discover_all(cfg)`: every enabled dataset turned into trainable samples grouped by bucket, or a DataError.

Runs before any model is loaded (no torch import needed), so every data problem — missing folder, no images,
everything filtered out, buckets too small for the batch — is reported first, with the setting that fixes it.
Bad files never stop a run: they are listed with their reason (and later written to `data/buckets.json`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from simpletuner_pl.data.buckets import Geometry, filter_reason, plan_geometry
from simpletuner_pl.data.captions import Captions, caption_source
from simpletuner_pl.data.discovery import IMAGE_EXTENSIONS, Listing, discover
from simpletuner_pl.errors import DataError

log = logging.getLogger(__name__)
Bucket = Tuple[int, int]


@dataclass(frozen=True)
class Sample:
    dataset_id: str
    path: str  # absolute
    identity: str  # path|mtime_ns|size: what a cached latent of this file is keyed on
    captions: Captions
    geometry: Geometry


@dataclass
class DatasetIndex:
    id: str
    config: object  # DatasetConfig
    root: Path
    samples: List[Sample]
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def buckets(self) -> Dict[Bucket, List[int]]:
        """Bucket (W, H) → indices into `samples`, buckets in a stable order."""
        groups: Dict[Bucket, List[int]] = {}
        for i, sample in enumerate(self.samples):
            groups.setdefault(sample.geometry.bucket, []).append(i)
        return dict(sorted(groups.items()))


def repeats_needed(count: int, effective_batch: int) -> int:
    return max(0, math.ceil(effective_batch / count) - 1)


def prune(index: DatasetIndex, effective_batch: int) -> Tuple[Dict[Bucket, List[int]], Dict[Bucket, int]]:
    """(kept buckets, dropped bucket → repeats that would keep it): a bucket needs count × (repeats + 1) images
    for one batch on every rank in every accumulation step."""
    kept, dropped = {}, {}
    passes = index.config.repeats + 1
    for bucket, members in index.buckets().items():
        if len(members) * passes >= effective_batch:
            kept[bucket] = members
        else:
            dropped[bucket] = repeats_needed(len(members), effective_batch)
    return kept, dropped


def effective_batch(train, world: int) -> Tuple[int, str]:
    """(images one step consumes across ranks and accumulation, the same spelled out for messages)."""
    size = train.batch_size * world * train.gradient_accumulation_steps
    return size, (f"train.batch_size × ranks × gradient_accumulation_steps = {train.batch_size} × {world} × "
                  f"{train.gradient_accumulation_steps} = {size}")


def describe_pruned(name: str, index: DatasetIndex, dropped: Dict[Bucket, int], batch: str) -> str:
    sizes = {b: len(m) for b, m in index.buckets().items()}
    listed = ", ".join(f"{w}x{h} ({sizes[(w, h)]} image{'s' * (sizes[(w, h)] != 1)})" for w, h in dropped)
    return (f"bucket(s) {listed} have fewer images × (repeats + 1) than {batch}; set "
            f"data.datasets.{name}.repeats={max(dropped.values())} to keep them (or lower train.batch_size)")


def check_buckets(name: str, index: DatasetIndex, effective: int, batch: str) -> Dict[Bucket, List[int]]:
    """The buckets that can make batches; DataError (with the repeats that fix it) when none can."""
    if not index.samples:
        raise DataError(f"no images detected in dataset {name}: none of its images is usable "
                        f"(every one is listed with its reason in <output_dir>/data/buckets.json)")
    kept, dropped = prune(index, effective)
    if not kept:
        raise DataError(f"no images detected in dataset {name} ({len(index.samples)} usable): "
                        + describe_pruned(name, index, dropped, batch))
    if dropped:
        log.warning("dataset %s: %s — they are not trained on", name, describe_pruned(name, index, dropped, batch))
    return kept


def expected_world_size(trainer_cfg) -> int:
    """Data-parallel ranks the Trainer will run, estimated from `trainer.devices`/`num_nodes` before it exists."""
    get = trainer_cfg.get if isinstance(trainer_cfg, dict) else lambda key, default: getattr(trainer_cfg, key, default)
    devices, nodes = get("devices", "auto"), int(get("num_nodes", 1) or 1)
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.lstrip("-").isdigit()):
        count = int(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = -1
    if count < 0:  # "auto" / -1: every visible accelerator
        import torch

        on_cpu = get("accelerator", "auto") == "cpu" or not torch.cuda.is_available()
        count = 1 if on_cpu else torch.cuda.device_count()
    return max(1, count) * max(1, nodes)


def index_dataset(name: str, ds, listing: Listing) -> DatasetIndex:
    captions_of = caption_source(ds, listing.root, listing.sidecars)
    samples, skipped = [], []
    for info in listing.images:
        path = str(listing.root / info.rel)
        reason = info.error or filter_reason(info.width, info.height, ds)
        captions = () if reason else captions_of(info.rel)
        if not reason and not captions:
            reason = {"textfile": "no caption (no .txt sidecar, or an empty one)",
                      "parquet": "no caption (no parquet row for this file)"}.get(
                ds.caption_strategy, "no caption (the file name gives an empty caption)")
        if reason:
            skipped.append({"path": path, "reason": reason})
            continue
        identity = f"{path}|{info.mtime_ns}|{info.size}"
        geometry = plan_geometry(info.width, info.height, ds, identity)  # not the run seed: latents stay cached
        samples.append(Sample(name, path, identity, captions, geometry))
    return DatasetIndex(name, ds, listing.root, samples, skipped)


def _check_folder(name: str, ds) -> Path:
    root = Path(ds.instance_data_dir).expanduser()
    if not root.is_dir():
        fetch = (f"; fetch it with `huggingface-cli download --repo-type=dataset {ds.huggingface_dataset} "
                 f"--local-dir={root}`" if ds.huggingface_dataset else "")
        raise DataError(f"data.datasets.{name}.instance_data_dir={root} does not exist or is not a folder{fetch}")
    return root


def _report_skipped(name: str, index: DatasetIndex, total: int) -> None:
    if not index.skipped:
        return
    for entry in index.skipped[:20]:
        log.warning("dataset %s: skipping %s: %s", name, entry["path"], entry["reason"])
    more = len(index.skipped) - 20
    log.warning("dataset %s: %d of %d image files skipped%s (all listed in <output_dir>/data/buckets.json)",
                name, len(index.skipped), total, f", {more} not shown above" if more > 0 else "")
    if not index.samples:
        reasons = Counter(e["reason"].split(" (")[0].split(":")[0] for e in index.skipped)
        summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        ds = index.config
        hints = {"too small": f"lower data.datasets.{name}.minimum_image_size (now {ds.minimum_image_size or 0:g}, in "
                              f"{ds.resolution_type} units)",
                 "aspect out of range": f"widen data.datasets.{name}.minimum_aspect_ratio/maximum_aspect_ratio",
                 "no caption": f"check data.datasets.{name}.caption_strategy={ds.caption_strategy} and the captions"}
        fixes = "; ".join(hints[r] for r in reasons if r in hints)
        raise DataError(f"no images detected in dataset {name}: all {total} image files under {index.root} were "
                        f"filtered out ({summary}); e.g. {index.skipped[0]['path']}: {index.skipped[0]['reason']}"
                        + (f". To keep them: {fixes}" if fixes else ""))


def discover_all(cfg) -> Dict[str, DatasetIndex]:
    """Index every enabled training dataset; raise DataError when one cannot give a single batch."""
    data, train = cfg.data, cfg.train
    listings: Dict[Tuple[Path, bool], Listing] = {}
    effective, batch = effective_batch(train, expected_world_size(cfg.trainer))
    catalog = {}
    for name, ds in data.training().items():
        key = (_check_folder(name, ds).resolve(), ds.caption_strategy == "textfile")
        if key not in listings:
            listings[key] = discover(key[0], data.cache_root(), read_sidecars=key[1])
        listing = listings[key]
        if not listing.images:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {key[0]} "
                            f"(data.datasets.{name}.instance_data_dir)")
        index = index_dataset(name, ds, listing)
        _report_skipped(name, index, len(listing.images))
        check_buckets(name, index, effective, batch)
        catalog[name] = index
    return catalog
