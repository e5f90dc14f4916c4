"""Caption strategies: where each image's caption(s) come from.

Every strategy returns a tuple of candidate captions per image (a sidecar with several lines gives several; one is
picked per step) or an empty tuple, which makes the image skipped with reason "no caption".
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Callable, Dict, Tuple

from simpletuner_pl.errors import DataError

Captions = Tuple[str, ...]


def caption_from_filename(rel: str) -> str:
    """`a_photo-of (2).jpg` → `a photo-of`: underscores to spaces, copy counters and extra spaces dropped."""
    text = re.sub(r"\s*\(\d+\)$", "", PurePosixPath(rel).stem).replace("_", " ")
    return re.sub(r"\s+", " ", text).strip()


def split_lines(text: str) -> Captions:
    """A sidecar's non-empty lines, each a caption variant."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def sidecar_of(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(".txt"))


def load_parquet_captions(ds, root) -> Dict[str, str]:
    """Identifier (file name, or stem without `identifier_includes_extension`) → caption, from the parquet table."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("caption_strategy=parquet reads the table with pyarrow: `pip install pyarrow`") from None
    cfg = ds.parquet
    path = root / cfg.path if not str(cfg.path).startswith("/") else cfg.path
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the captions parquet {path}: {err}") from None
    columns = [cfg.filename_column, cfg.caption_column] + ([cfg.fallback_caption_column]
                                                           if cfg.fallback_caption_column else [])
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"captions parquet {path} has no column(s) {missing}; it has {table.column_names}. "
                        "Set parquet.filename_column / parquet.caption_column / parquet.fallback_caption_column")
    names = table.column(cfg.filename_column).to_pylist()
    captions = table.column(cfg.caption_column).to_pylist()
    fallback = (table.column(cfg.fallback_caption_column).to_pylist() if cfg.fallback_caption_column
                else [None] * len(names))
    return {str(n): (c or f or "") for n, c, f in zip(names, captions, fallback) if n is not None}


def caption_source(ds, root, sidecars: Dict[str, str]) -> Callable[[str], Captions]:
    """A function from an image's relative path to its caption candidates, for dataset config `ds`."""
    strategy = ds.caption_strategy
    if strategy == "instanceprompt":
        return lambda rel: (ds.instance_prompt,)
    if strategy == "filename":
        return lambda rel: tuple(filter(None, (caption_from_filename(rel),)))
    if strategy == "textfile":
        return lambda rel: split_lines(sidecars.get(sidecar_of(rel), ""))
    if strategy == "parquet":
        table = load_parquet_captions(ds, root)
        key = ((lambda rel: PurePosixPath(rel).name) if ds.parquet.identifier_includes_extension
               else (lambda rel: PurePosixPath(rel).stem))
        return lambda rel: split_lines(table.get(rel, table.get(key(rel), "")))
    raise DataError(f"unknown caption_strategy {strategy!r}: use filename, textfile, instanceprompt or parquet")
