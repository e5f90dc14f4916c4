"""`discover_all(cfg)`: every enabled dataset turned into trainable samples grouped by bucket, or a DataError.

Runs before any model is loaded (no torch import needed), so every data problem — missing folder, no images,
everything filtered out, buckets too small for the batch — is reported first, with the setting that fixes it.
Bad files never stop a run: they are listed with their reason (and later written to `data/buckets.json`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

from simpletuner_pl.config.data import DataConfig, DatasetConfig
from simpletuner_pl.config.schema import TrainConfig
from simpletuner_pl.data.buckets import Geometry, filter_reason, plan_geometry
from simpletuner_pl.data.captions import Captions, caption_source
from simpletuner_pl.data.discovery import IMAGE_EXTENSIONS, Listing, discover, name_problem, printable
from simpletuner_pl.data.plan import Bucket, BucketPlan, Buckets, EffectiveBatch, plan_buckets
from simpletuner_pl.data.references import pair_references
from simpletuner_pl.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    dataset_id: str
    path: str  # absolute
    identity: str  # path|mtime_ns|size: what a cached latent of this file is keyed on
    captions: Captions
    geometry: Geometry
    reference: Optional[str] = None  # FLUX.1 Kontext: the paired reference image (absolute), cropped like this one
    reference_identity: Optional[str] = None  # path|mtime_ns|size of the reference
    mask: Optional[str] = None  # masked loss: the paired mask image (absolute), cropped like this one


@dataclass
class DatasetIndex:
    id: str
    config: DatasetConfig
    root: Path
    samples: List[Sample]
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def buckets(self) -> Buckets:
        """Bucket (W, H) → indices into `samples`, buckets in a stable order."""
        groups: Dict[Bucket, List[int]] = {}
        for i, sample in enumerate(self.samples):
            groups.setdefault(sample.geometry.bucket, []).append(i)
        return dict(sorted(groups.items()))


@dataclass
class Catalog:
    """The indexed training datasets, by id, and their bucket plan for the number of ranks expected."""

    datasets: Dict[str, DatasetIndex]
    plan: Optional[BucketPlan]

    def __getitem__(self, name: str) -> DatasetIndex:
        return self.datasets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.datasets)

    def items(self):
        return self.datasets.items()

    def replan(self, batch: EffectiveBatch) -> BucketPlan:
        """The bucket plan for `batch` (another number of ranks, or samples dropped since)."""
        return plan_buckets({n: (i.buckets(), i.config.repeats) for n, i in self.datasets.items()}, batch)


def expected_world_size(trainer: Mapping[str, object]) -> int:
    """Data-parallel ranks the Trainer will run, from the `trainer.devices`/`num_nodes` arguments before it exists."""
    devices, nodes = trainer.get("devices", "auto"), int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.lstrip("-").isdigit()):
        count = int(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = -1
    if count < 0 and trainer.get("accelerator", "auto") == "cpu":
        count = 1
    elif count < 0:  # "auto" / -1: every visible accelerator
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return max(1, count) * max(1, nodes)


def index_dataset(name: str, ds: DatasetConfig, listing: Listing) -> DatasetIndex:
    captions_of = caption_source(ds, listing.root, listing.sidecars)
    samples, skipped, infos = [], [], {}
    for info in listing.images:
        path = printable(str(listing.root / info.rel))
        reason = info.error or name_problem(info.rel) or filter_reason(info.width, info.height, ds)
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
        infos[path] = info
    return DatasetIndex(name, ds, listing.root, samples, skipped), infos


def _check_folder(name: str, ds: DatasetConfig) -> Path:
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
                 "no caption": f"check data.datasets.{name}.caption_strategy={ds.caption_strategy} and the captions",
                 "no reference image": f"put each image's reference under the same relative path in "
                                       f"data.datasets.{ds.conditioning_data}.instance_data_dir"}
        fixes = "; ".join(fix for prefix, fix in hints.items() if any(r.startswith(prefix) for r in reasons))
        raise DataError(f"no images detected in dataset {name}: all {total} image files under {index.root} were "
                        f"filtered out ({summary}); e.g. {index.skipped[0]['path']}: {index.skipped[0]['reason']}"
                        + (f". To keep them: {fixes}" if fixes else ""))


def pair(index: DatasetIndex, infos: Dict[str, object], data: DataConfig, conditioning: str) -> None:
    """Every sample of `index` with its paired image from dataset `conditioning`: a reference (a sample without a
    usable one is skipped with the reason) or a loss mask (every image needs one: DataError naming each that has
    none)."""
    setting = f"data.datasets.{conditioning}.instance_data_dir"
    kind = "mask" if data.datasets[conditioning].conditioning_type == "mask" else "reference"
    root = _check_folder(conditioning, data.datasets[conditioning]).resolve()
    kept, skipped = pair_references(index.samples, infos, discover(root, data.cache_root(), False), setting, kind)
    if kind == "mask" and skipped:
        listed = "\n  ".join(f"{e['path']}: {e['reason']}" for e in skipped)
        raise DataError(f"dataset {index.id}: {len(skipped)} image(s) without a usable mask in {setting} (every image "
                        f"needs one; an all-white mask trains the whole image):\n  {listed}")
    index.samples, index.skipped = kept, index.skipped + skipped


def discover_all(data: DataConfig, train: TrainConfig, trainer: Mapping[str, object]) -> Catalog:
    """Index every enabled training dataset and plan its buckets; DataError when one cannot give a single batch."""
    listings: Dict[Tuple[Path, bool], Listing] = {}
    datasets = {}
    for name, ds in data.training().items():
        key = (_check_folder(name, ds).resolve(), ds.caption_strategy == "textfile")
        if key not in listings:
            listings[key] = discover(key[0], data.cache_root(), read_sidecars=key[1])
        listing = listings[key]
        if not listing.images:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {key[0]} "
                            f"(data.datasets.{name}.instance_data_dir)")
        datasets[name], infos = index_dataset(name, ds, listing)
        if ds.conditioning_data is not None:
            pair(datasets[name], infos, data, ds.conditioning_data)
        _report_skipped(name, datasets[name], len(listing.images))
    catalog = Catalog(datasets, None)
    catalog.plan = catalog.replan(EffectiveBatch.of(train, expected_world_size(trainer)))
    return catalog
