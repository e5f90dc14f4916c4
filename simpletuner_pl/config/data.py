"""`data.*`: datasets keyed by id (`data.datasets.<id>.*`, SimpleTuner's multidatabackend.json fields) and caches.

Closed sets and ranges are declared here; the cross-field checks (units of sizes, required companions) are in
`simpletuner_pl.config.checks`; folders and files are looked at by `simpletuner_pl.data.catalog.discover_all`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from simpletuner_pl.config.fields import at_least, between, choice

CAPTION_STRATEGIES = ("filename", "textfile", "instanceprompt", "parquet")
RESOLUTION_TYPES = ("pixel_area", "pixel", "area")


@dataclass
class ParquetConfig:
    """Captions from a parquet table (caption_strategy=parquet); rows are matched to images by file name."""

    path: Optional[str] = None
    filename_column: str = "filename"
    caption_column: str = "caption"
    fallback_caption_column: Optional[str] = None
    identifier_includes_extension: bool = False


@dataclass
class DatasetConfig:
    type: str = choice("local", "local")
    # eval: held out for the eval loss, never trained on; conditioning: paired with an image dataset (conditioning_data)
    dataset_type: str = choice("image", "image", "eval", "conditioning")
    conditioning_data: Optional[str] = None  # image datasets: id of the conditioning dataset paired by relative path
    # conditioning datasets: reference_strict (Kontext's reference images) or mask (loss masks)
    conditioning_type: Optional[str] = choice(None, None, "reference_strict", "mask")
    instance_data_dir: Optional[str] = None
    huggingface_dataset: Optional[str] = None  # hub dataset this folder downloads from: named when it is missing
    caption_strategy: str = choice("filename", *CAPTION_STRATEGIES)
    instance_prompt: Optional[str] = None
    parquet: ParquetConfig = field(default_factory=ParquetConfig)
    caption_dropout_probability: float = between(0.0, 0.0, 1.0)
    crop: bool = False
    crop_aspect: str = choice("square", "square", "preserve", "closest", "random")
    crop_aspect_buckets: Optional[List[Any]] = None  # aspects (W/H) or {aspect_bucket|aspect, weight} mappings
    crop_style: str = choice("random", "random", "center", "centre", "corner")
    resolution: float = at_least(1024, 0.0, strict=True)
    resolution_type: str = choice("pixel_area", *RESOLUTION_TYPES)
    minimum_image_size: Optional[float] = at_least(None, 0.0, strict=True)
    maximum_image_size: Optional[float] = at_least(None, 0.0, strict=True)
    target_downsample_size: Optional[float] = at_least(None, 0.0, strict=True)
    minimum_aspect_ratio: Optional[float] = at_least(None, 0.0, strict=True)
    maximum_aspect_ratio: Optional[float] = at_least(None, 0.0, strict=True)
    repeats: int = at_least(0, 0, hint="0 = every image once per epoch; each repeat is one more pass")
    probability: float = at_least(1.0, 0.0)
    is_regularisation_data: bool = False
    disabled: bool = False
    cache_dir_vae: Optional[str] = None  # default: <data.cache_dir>/vae/<id>
    vae_cache_disable: bool = False  # encode on the fly every step, never write latents
    vae_cache_ondemand: bool = False  # skip the startup pass; encode and write latents the first time they are used

    def square_edge(self) -> float:
        """Edge in pixels of the largest square image this dataset trains at."""
        if self.resolution_type == "area":
            return math.sqrt(self.resolution * 1e6)
        if self.resolution_type == "pixel":
            return float(self.maximum_image_size or self.resolution)
        return float(self.resolution)


@dataclass
class TextEmbedsConfig:
    cache_dir: Optional[str] = None  # default: <data.cache_dir>/text
    write_batch_size: int = at_least(128, 1)  # captions per text-encoder call and per write
    # SimpleTuner's text_cache_ondemand: no startup pass; a caption is encoded and written the first time a batch
    # draws it (the text encoders stay on the accelerator)
    text_cache_ondemand: bool = False


@dataclass
class DataConfig:
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    text_embeds: TextEmbedsConfig = field(default_factory=TextEmbedsConfig)
    cache_dir: Optional[str] = None  # default: $XDG_CACHE_HOME/simpletuner_pl (metadata, and unset cache dirs)
    vae_batch_size: int = at_least(4, 1)
    num_workers: int = at_least(2, 0)

    def enabled(self) -> Dict[str, DatasetConfig]:
        return {name: ds for name, ds in self.datasets.items() if not ds.disabled}

    def training(self) -> Dict[str, DatasetConfig]:
        """The enabled datasets that are trained on (`dataset_type: eval` ones are held out)."""
        return {name: ds for name, ds in self.enabled().items() if ds.dataset_type == "image"}

    def conditioning(self) -> Dict[str, DatasetConfig]:
        """The enabled `dataset_type: conditioning` datasets (paired with image datasets, never trained on alone)."""
        return {name: ds for name, ds in self.enabled().items() if ds.dataset_type == "conditioning"}

    def held_out(self) -> Dict[str, DatasetConfig]:
        """The enabled `dataset_type: eval` datasets (the eval loss's images)."""
        return {name: ds for name, ds in self.enabled().items() if ds.dataset_type == "eval"}

    def largest_edge(self, default: int = 1024) -> int:
        """Edge in pixels of the largest square training image over the training datasets."""
        edges = [int(ds.square_edge()) for ds in self.training().values()]
        return max(edges) if edges else default

    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "simpletuner_pl"

    def vae_cache_dir(self, name: str) -> Path:
        ds = self.datasets[name]
        return Path(ds.cache_dir_vae).expanduser() if ds.cache_dir_vae else self.cache_root() / "vae" / name

    def text_cache_dir(self) -> Path:
        configured = self.text_embeds.cache_dir
        return Path(configured).expanduser() if configured else self.cache_root() / "text"
