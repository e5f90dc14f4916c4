"""Dataset configuration: `data.datasets.<id>.*`, field names and defaults as in SimpleTuner's multidatabackend.json.

Closed value sets are declared with `choices` metadata and checked by `simpletuner_pl.config._check_choices`;
`DataConfig.validate` adds the cross-field checks (units of sizes, required companions) with messages that say
what to change. Folders and files are checked later, by `simpletuner_pl.data.catalog.discover_all`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

CAPTION_STRATEGIES = ("filename", "textfile", "instanceprompt", "parquet")
RESOLUTION_TYPES = ("pixel_area", "pixel", "area")
MAX_MEGAPIXELS = 16.0  # an `area` value above this is surely pixels; a pixel value at or below it surely megapixels


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": tuple(choices)})


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
    type: str = _choice("local", "local")
    dataset_type: str = _choice("image", "image", "eval")  # eval: held out for the eval loss, never trained on
    instance_data_dir: Optional[str] = None
    huggingface_dataset: Optional[str] = None  # hub dataset this folder downloads from: named when it is missing
    caption_strategy: str = _choice("filename", *CAPTION_STRATEGIES)
    instance_prompt: Optional[str] = None
    parquet: ParquetConfig = field(default_factory=ParquetConfig)
    caption_dropout_probability: float = 0.0
    crop: bool = False
    crop_aspect: str = _choice("square", "square", "preserve", "closest", "random")
    crop_aspect_buckets: Optional[List[Any]] = None  # aspects (W/H) or {aspect_bucket|aspect, weight} mappings
    crop_style: str = _choice("random", "random", "center", "centre", "corner")
    resolution: float = 1024
    resolution_type: str = _choice("pixel_area", *RESOLUTION_TYPES)
    minimum_image_size: Optional[float] = None
    maximum_image_size: Optional[float] = None
    target_downsample_size: Optional[float] = None
    minimum_aspect_ratio: Optional[float] = None
    maximum_aspect_ratio: Optional[float] = None
    repeats: int = 0
    probability: float = 1.0
    is_regularisation_data: bool = False
    disabled: bool = False
    cache_dir_vae: Optional[str] = None  # default: <data.cache_dir>/vae/<id>
    vae_cache_disable: bool = False  # encode on the fly every step, never write latents
    vae_cache_ondemand: bool = False  # skip the startup pass; encode and write latents the first time they are used


@dataclass
class TextEmbedsConfig:
    cache_dir: Optional[str] = None  # default: <data.cache_dir>/text
    write_batch_size: int = 128  # captions per text-encoder call and per write


@dataclass
class DataConfig:
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    text_embeds: TextEmbedsConfig = field(default_factory=TextEmbedsConfig)
    cache_dir: Optional[str] = None  # default: $XDG_CACHE_HOME/simpletuner_pl (metadata, and unset cache dirs)
    vae_batch_size: int = 4
    num_workers: int = 2

    def enabled(self) -> Dict[str, DatasetConfig]:
        return {name: ds for name, ds in self.datasets.items() if not ds.disabled}

    def training(self) -> Dict[str, DatasetConfig]:
        """The enabled datasets that are trained on (`dataset_type: eval` ones are held out)."""
        return {name: ds for name, ds in self.enabled().items() if ds.dataset_type == "image"}

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

    def validate(self, batch_size: int) -> None:
        from simpletuner_pl.config import _check_choices
        from simpletuner_pl.errors import ConfigError

        if not self.training():
            raise ConfigError(
                "no enabled training dataset (dataset_type=image): pick one with data=demo|local and, for data=local, "
                "data.datasets.main.instance_data_dir=/path/to/images"
            )
        if self.vae_batch_size < 1 or self.text_embeds.write_batch_size < 1:
            raise ConfigError("data.vae_batch_size and data.text_embeds.write_batch_size must be >= 1")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if not any(ds.probability > 0 for ds in self.training().values()):
            raise ConfigError("every enabled dataset has probability 0: give at least one "
                              "data.datasets.<id>.probability > 0")
        for name, ds in self.enabled().items():
            _check_choices(ds, DatasetConfig, f"data.datasets.{name}")
            _validate_dataset(f"data.datasets.{name}", ds, ConfigError)


def _validate_dataset(key: str, ds: DatasetConfig, error: type) -> None:
    if not ds.instance_data_dir:
        raise error(f"{key}.instance_data_dir is not set: point it at a folder of images")
    if ds.caption_strategy == "instanceprompt" and not ds.instance_prompt:
        raise error(f"{key}.caption_strategy=instanceprompt needs {key}.instance_prompt")
    if ds.caption_strategy == "parquet" and not ds.parquet.path:
        raise error(f"{key}.caption_strategy=parquet needs {key}.parquet.path (a .parquet file with a "
                    f"{ds.parquet.filename_column!r} and a {ds.parquet.caption_column!r} column)")
    if ds.crop and ds.crop_aspect in ("closest", "random") and not ds.crop_aspect_buckets:
        raise error(f"{key}.crop_aspect={ds.crop_aspect} needs {key}.crop_aspect_buckets, e.g. [0.75, 1.0, 1.33]")
    if ds.repeats < 0:
        raise error(f"{key}.repeats must be >= 0 (0 = every image once per epoch; each repeat is one more pass)")
    if ds.probability < 0:
        raise error(f"{key}.probability must be >= 0")
    if not 0.0 <= ds.caption_dropout_probability <= 1.0:
        raise error(f"{key}.caption_dropout_probability must be in [0, 1]")
    if ds.vae_cache_disable and ds.vae_cache_ondemand:
        raise error(f"{key}: vae_cache_disable and vae_cache_ondemand exclude each other; set one")
    _validate_units(key, ds, error)


def _validate_units(key: str, ds: DatasetConfig, error: type) -> None:
    """Sizes are in the dataset's unit: megapixels for `area`, pixels otherwise. A value in the other unit is the
    classic cause of "no images detected", so it is rejected here with the fix."""
    sizes = {"resolution": ds.resolution, "minimum_image_size": ds.minimum_image_size,
             "maximum_image_size": ds.maximum_image_size, "target_downsample_size": ds.target_downsample_size}
    for field_name, value in sizes.items():
        if value is None:
            continue
        if value <= 0:
            raise error(f"{key}.{field_name}={value:g} must be > 0")
        if ds.resolution_type == "area" and value > MAX_MEGAPIXELS:
            raise error(
                f"{key}.{field_name}={value:g} with resolution_type=area means {value:g} megapixels; for pixel sizes "
                f"set {key}.resolution_type=pixel_area (edge of a square of equal area) or pixel (shorter side), "
                f"or give megapixels (1024x1024 = {1024 * 1024 / 1e6:g})"
            )
        if ds.resolution_type != "area" and value <= MAX_MEGAPIXELS:
            raise error(
                f"{key}.{field_name}={value:g} with resolution_type={ds.resolution_type} means {value:g} pixels; "
                f"for megapixels set {key}.resolution_type=area, or give pixels (e.g. 1024)"
            )
    if ds.resolution_type != "area" and ds.resolution < 64:
        raise error(f"{key}.resolution={ds.resolution:g}: the smallest bucket side is 64 px")
