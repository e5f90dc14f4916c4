"""The held-out images of the eval loss: a folder never trained on, read the same way at every evaluation.

The source is `eval.eval_loss.instance_data_dir`, or else the data config's datasets with `dataset_type: eval`
(which the training data module leaves out). Images are resized and centre-cropped to one square resolution so a
single σ grid applies to all of them, and the first `num_images` in path order are used, so every evaluation sees
exactly the same pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

from simpletuner_pl.errors import ConfigError, DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class HeldOut:
    root: Path
    caption_strategy: str  # textfile (sidecar .txt, falling back to the file name) | filename
    resolution: int
    setting: str  # the config key that named the folder, for messages


def _training_resolution(cfg) -> int:
    for ds in cfg.data.enabled().values():
        if ds.dataset_type != "eval" and getattr(ds, "resolution_type", "pixel") != "area":
            return int(ds.resolution) // 16 * 16
    return DEFAULT_RESOLUTION


def held_out_source(cfg) -> HeldOut:
    loss = cfg.eval.eval_loss
    resolution = loss.resolution or _training_resolution(cfg)
    if loss.instance_data_dir:
        root, setting, strategy = loss.instance_data_dir, "eval.eval_loss.instance_data_dir", loss.caption_strategy
    else:
        evals = {n: ds for n, ds in cfg.data.enabled().items() if ds.dataset_type == "eval"}
        if not evals:
            raise ConfigError("eval.eval_loss.enabled=true needs held-out images: set "
                              "eval.eval_loss.instance_data_dir=/path/to/held_out (never trained on), or add a "
                              "dataset with dataset_type=eval to the data config")
        name, ds = next(iter(evals.items()))
        root, setting = ds.instance_data_dir, f"data.datasets.{name}.instance_data_dir"
        strategy = "filename" if ds.caption_strategy == "filename" else "textfile"
    return HeldOut(Path(root).expanduser().resolve(), strategy, resolution, setting)


def _caption(path: Path, strategy: str) -> str:
    sidecar = path.with_suffix(".txt")
    if strategy == "textfile" and sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    return re.sub(r"\s+", " ", re.sub(r"\s*\(\d+\)$", "", path.stem).replace("_", " ")).strip()


def discover_held_out(source: HeldOut, limit: int) -> List[Dict[str, object]]:
    """[{path, caption}] for the first `limit` images, or a DataError that names the setting."""
    if not source.root.is_dir():
        raise DataError(f"{source.setting}={source.root} does not exist or is not a folder")
    paths = sorted(p for p in source.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source.root} ({source.setting})")
    return [{"path": p, "caption": _caption(p, source.caption_strategy)} for p in paths[:limit]]


def load_pixels(path: Path, resolution: int):
    """EXIF-upright RGB, resized and centre-cropped to a square, as [1, 3, H, W] in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.fit(ImageOps.exif_transpose(image).convert("RGB"), (resolution, resolution),
                             method=Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return pixels.div(127.5).sub(1.0).unsqueeze(0)


def batches(items: List[Dict[str, object]], resolution: int, device) -> Iterator[Dict[str, object]]:
    """One image per batch, like SimpleTuner (eval images need not share an aspect)."""
    for item in items:
        yield {"pixel_values": load_pixels(item["path"], resolution).to(device), "captions": [item["caption"]]}
