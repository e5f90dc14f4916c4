"""Checks of conditioning datasets (`dataset_type: conditioning`): the reference images FLUX.1 Kontext edits
(`conditioning_type: reference_strict`) or loss masks (`conditioning_type: mask`).

A conditioning dataset is only a folder: its images pair with an image (or eval) dataset's by relative path and take
that dataset's captions, buckets and crops (`reference_strict`: the reference is cropped exactly like its target). So
any other setting on it would do nothing and is refused, and so is a conditioning dataset nothing pairs with.
"""

from __future__ import annotations

import dataclasses

from simpletuner_pl.config.data import DataConfig, DatasetConfig
from simpletuner_pl.errors import ConfigError

OWN_FIELDS = ("dataset_type", "conditioning_type", "instance_data_dir", "huggingface_dataset", "disabled",
              "cache_dir_vae")


def check_conditioning(data: DataConfig) -> None:
    conditioning = data.conditioning()
    for name, ds in data.enabled().items():
        key = f"data.datasets.{name}"
        if ds.dataset_type == "conditioning":
            check_reference_dataset(key, ds)
        elif ds.conditioning_type is not None:
            raise ConfigError(f"{key}.conditioning_type belongs to conditioning datasets; {name} is "
                              f"dataset_type={ds.dataset_type}")
        if ds.conditioning_data is None:
            continue
        if ds.dataset_type not in ("image", "eval"):
            raise ConfigError(f"{key}.conditioning_data pairs an image (or eval) dataset with its references; "
                              f"{name} is dataset_type={ds.dataset_type}")
        if ds.conditioning_data not in conditioning:
            known = ", ".join(conditioning) or "none"
            raise ConfigError(f"{key}.conditioning_data={ds.conditioning_data}: no enabled dataset of that id with "
                              f"dataset_type=conditioning; conditioning datasets: {known}")
        if ds.dataset_type == "eval" and conditioning[ds.conditioning_data].conditioning_type == "mask":
            raise ConfigError(f"{key}.conditioning_data={ds.conditioning_data} is a mask dataset: the eval loss is "
                              "never masked (it compares whole images across rounds); remove it from the eval dataset")
    paired = {ds.conditioning_data for ds in [*data.training().values(), *data.held_out().values()]}
    for name in conditioning:
        if name not in paired:
            raise ConfigError(f"data.datasets.{name} is a conditioning dataset that no image dataset pairs with: set "
                              f"data.datasets.<image dataset>.conditioning_data={name}, or disable it")


def check_reference_dataset(key: str, ds: DatasetConfig) -> None:
    if ds.conditioning_type is None:
        raise ConfigError(f"{key} is a conditioning dataset: set {key}.conditioning_type=reference_strict "
                          "(Kontext's reference images) or mask (loss masks)")
    defaults = DatasetConfig()
    ignored = [f.name for f in dataclasses.fields(ds)
               if f.name not in OWN_FIELDS and getattr(ds, f.name) != getattr(defaults, f.name)]
    if ignored:
        raise ConfigError(f"{key} is a conditioning dataset: its images take the captions, buckets and crops of "
                          f"the image dataset they pair with, so {', '.join(f'{key}.{n}' for n in ignored)} would "
                          "do nothing; remove them (or set them on the image dataset)")
