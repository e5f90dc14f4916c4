"""multidatabackend.json → `data.datasets.<id>.*` and `data.text_embeds.*`.

Our dataset fields are SimpleTuner's, so most carry over by name; what differs is which backends exist (local
folders only; one text-embed cache), a few spellings, and that SimpleTuner's global dataset options
(`resolution`, `caption_strategy`, ... in config.json) apply to every image dataset that does not set its own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List

from simpletuner_pl.config.data import DatasetConfig, ParquetConfig
from simpletuner_pl.tools.conversion import (
    DEFAULT,
    NO_EQUIVALENT,
    NOT_SUPPORTED,
    UNKNOWN,
    VALUE_NOT_SUPPORTED,
    Conversion,
)
from simpletuner_pl.tools.option_table import DATASET_DEFAULTS

FIELDS = {f.name for f in dataclasses.fields(DatasetConfig)} - {"parquet"}
ALIASES = {"disable": "disabled", "is_regularization_data": "is_regularisation_data"}
VALUE_ALIASES = {("caption_strategy", "instance_prompt"): "instanceprompt"}
# fields with no counterpart, and the value that means "what happens here anyway"
INERT = {"metadata_backend": "discovery", "skip_file_discovery": "", "hash_filenames": True, "compress_cache": True,
         "scan_for_errors": False, "preserve_data_backend_cache": False, "vae_cache_clear_each_epoch": False,
         "default": None, "text_embeds": None, "image_embeds": None}
TEXT_EMBED_FIELDS = {"cache_dir": "data.text_embeds.cache_dir", "write_batch_size": "data.text_embeds.write_batch_size"}
TEXT_EMBED_UNSUPPORTED = ("text_encoder_batch_size", "text_cache_ondemand", "text_cache_disable", "compress_cache")


def dataset_key(backend_id: Any, index: int) -> str:
    """A Hydra-safe key for a SimpleTuner dataset id (letters, digits, `_` and `-`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(backend_id)) if backend_id not in (None, "") else f"dataset_{index}"


def convert_datasets(conv: Conversion, backends: List[Dict[str, Any]], options: Dict[str, Any], label: str,
                     options_label: str) -> None:
    keys = {str(b.get("id")): dataset_key(b.get("id"), i) for i, b in enumerate(backends)}
    text_cache_taken = False
    for index, backend in enumerate(backends):
        key = dataset_key(backend.get("id"), index)
        src = f"{label}[{backend.get('id', index)}]"
        if str(backend.get("id", key)) != key:
            conv.note(f"dataset id {backend.get('id')!r} became data.datasets.{key} (a config key)")
        kind = backend.get("dataset_type", "image")
        if backend.get("disabled") or backend.get("disable"):
            conv.leave(src, "disabled", NO_EQUIVALENT, "a disabled dataset is not carried over")
        elif backend.get("type", "local") != "local":
            conv.leave(f"{src}: type", backend.get("type"), VALUE_NOT_SUPPORTED, "local folders only")
        elif kind == "text_embeds":
            text_cache_taken = _text_embeds(conv, backend, src, first=not text_cache_taken)
        elif kind == "image_embeds":
            conv.leave(src, kind, NO_EQUIVALENT, "latents are cached per dataset (cache_dir_vae)")
        elif kind in ("image", "eval", "conditioning"):
            inherited = {name: options[name] for name in DATASET_DEFAULTS
                         if name in options and name not in backend and kind != "conditioning"}
            for name, value in inherited.items():
                dataset_field(conv, key, name, value, f"{options_label}: {name}", keys)
            for name, value in backend.items():
                if name not in ("id", "type"):
                    dataset_field(conv, key, name, value, f"{src}: {name}", keys)
        else:
            conv.leave(f"{src}: dataset_type", kind, VALUE_NOT_SUPPORTED, "image, eval, conditioning or text_embeds")


def dataset_field(conv: Conversion, key: str, name: str, value: Any, src: str, keys: Dict[str, str]) -> None:
    name = ALIASES.get(name, name)
    value = VALUE_ALIASES.get((name, value), value) if isinstance(value, str) else value
    prefix = f"data.datasets.{key}"
    if name == "conditioning_data":
        ids = value if isinstance(value, list) else [value]
        if len(ids) != 1:
            conv.leave(src, value, VALUE_NOT_SUPPORTED, "one conditioning dataset per image dataset")
        else:
            conv.set(f"{prefix}.conditioning_data", keys.get(str(ids[0]), str(ids[0])), src)
    elif name == "parquet" and isinstance(value, dict):
        parquet_fields = {f.name for f in dataclasses.fields(ParquetConfig)}
        for sub, item in value.items():
            if sub in parquet_fields:
                conv.set(f"{prefix}.parquet.{sub}", item, f"{src}.{sub}")
            else:
                conv.leave(f"{src}.{sub}", item, NO_EQUIVALENT, "image sizes are read from the files")
    elif name in INERT:
        same = INERT[name] is not None and value == INERT[name]
        conv.leave(src, value, DEFAULT if same else NO_EQUIVALENT, _inert_detail(name) if not same else "")
    elif name in FIELDS:
        conv.set(f"{prefix}.{name}", value, src)
    else:
        conv.leave(src, value, UNKNOWN, "not a dataset field this importer knows")


def _text_embeds(conv: Conversion, backend: Dict[str, Any], src: str, first: bool) -> bool:
    if not first:
        conv.leave(src, "text_embeds", VALUE_NOT_SUPPORTED, "one text-embed cache per run; the first is used")
        return True
    for name, value in backend.items():
        if name in TEXT_EMBED_FIELDS:
            conv.set(TEXT_EMBED_FIELDS[name], value, f"{src}: {name}")
        elif name in TEXT_EMBED_UNSUPPORTED:
            conv.leave(f"{src}: {name}", value, NOT_SUPPORTED, "captions are encoded write_batch_size at a time")
        elif name not in ("id", "type", "dataset_type", "default", "disabled"):
            conv.leave(f"{src}: {name}", value, UNKNOWN, "not a text-embed field this importer knows")
    return True


def _inert_detail(name: str) -> str:
    return {"metadata_backend": "image sizes are read from the files (discovery)",
            "text_embeds": "one text-embed cache per run (data.text_embeds)",
            "image_embeds": "latents are cached per dataset (cache_dir_vae)",
            "default": "one text-embed cache per run"}.get(name, "")
