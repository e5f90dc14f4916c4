"""Aspect buckets and per-image crop geometry, as pure functions.

A bucket's pixel size depends only on (aspect rounded to 2 decimals, resolution, resolution_type, alignment 64),
never on which image was seen first, so every image in a bucket has the identical latent shape and a cache entry
can be checked against the geometry recomputed from the config (SimpleTuner's "latent shape mismatch" class of bugs
came from a first-come size map stored on disk). Random choices (random crop offset, random crop aspect) are
seeded by the image's identity, so they are stable across runs and cached latents stay valid.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

ALIGNMENT = 64
AREA_SNAP = {0.25: 512, 0.5: 768, 1.0: 1024, 2.0: 1536, 4.0: 2048}  # megapixels → edge, as SimpleTuner


def align(value: float, alignment: int = ALIGNMENT) -> int:
    """Nearest multiple of `alignment` (half rounds up), never below one alignment step."""
    return max(alignment, int(math.floor(value / alignment + 0.5)) * alignment)


def square_edge(resolution: float, resolution_type: str) -> float:
    """Edge in pixels of the square the resolution stands for (shorter side for `pixel`)."""
    if resolution_type == "area":
        for megapixels, edge in AREA_SNAP.items():
            if abs(resolution - megapixels) <= 0.05:
                return float(edge)
        return math.sqrt(resolution * 1e6)
    return float(resolution)


def bucket_size(aspect: float, resolution: float, resolution_type: str,
                alignment: int = ALIGNMENT) -> Tuple[int, int]:
    """(W, H) of the bucket for an aspect W/H: equal area for area types, shorter side for `pixel`."""
    aspect = round(aspect, 2)
    edge = square_edge(resolution, resolution_type)
    if resolution_type == "pixel":
        if aspect >= 1:
            return align(edge * aspect, alignment), align(edge, alignment)
        return align(edge, alignment), align(edge / aspect, alignment)
    edge = align(edge, alignment)
    root = math.sqrt(aspect)
    return align(edge * root, alignment), align(edge / root, alignment)


def image_measure(width: int, height: int, resolution_type: str) -> float:
    """An image's size in the unit of `minimum_image_size`/`maximum_image_size` for this resolution type."""
    if resolution_type == "pixel":
        return float(min(width, height))
    if resolution_type == "area":
        return width * height / 1e6
    return math.sqrt(width * height)


@dataclass(frozen=True)
class Geometry:
    """How one image becomes a training sample: resize to `resized`, then crop `bucket` at `crop_top_left`.

    `original_size`, `crop_top_left` and `target_size` are (h, w)-ordered, as SDXL's time ids expect."""

    bucket: Tuple[int, int]  # (W, H)
    resized: Tuple[int, int]  # (w, h) before the crop, original aspect kept
    crop_top_left: Tuple[int, int]  # (top, left) in the resized image
    original_size: Tuple[int, int]  # (h, w), upright

    @property
    def target_size(self) -> Tuple[int, int]:
        return self.bucket[1], self.bucket[0]


def parse_aspect_buckets(entries: Sequence) -> Tuple[List[float], List[float]]:
    """`crop_aspect_buckets` items are aspects or {aspect_bucket|aspect, weight} mappings → (aspects, weights)."""
    aspects, weights = [], []
    for entry in entries:
        if isinstance(entry, (int, float)):
            aspects.append(float(entry))
            weights.append(1.0)
        else:
            aspects.append(float(entry.get("aspect_bucket", entry.get("aspect"))))
            weights.append(float(entry.get("weight", 1.0)))
    return aspects, weights


def _rng(seed_key: str, purpose: str) -> random.Random:
    return random.Random(hashlib.sha256(f"{seed_key}|{purpose}".encode()).digest())


def target_bucket(width: int, height: int, ds, seed_key: str) -> Tuple[int, int]:
    """The bucket (W, H) an upright `width`x`height` image trains at under dataset config `ds`."""
    aspect = width / height
    if ds.crop and ds.crop_aspect == "square":
        edge = align(square_edge(ds.resolution, ds.resolution_type))
        return edge, edge
    if ds.crop and ds.crop_aspect in ("closest", "random"):
        aspects, weights = parse_aspect_buckets(ds.crop_aspect_buckets)
        if ds.crop_aspect == "closest":
            aspect = min(aspects, key=lambda a: abs(math.log(a / aspect)))
        else:
            aspect = _rng(seed_key, "aspect").choices(aspects, weights=weights)[0]
    return bucket_size(aspect, ds.resolution, ds.resolution_type)


def plan_geometry(width: int, height: int, ds, seed_key: str) -> Geometry:
    """Resize so the image covers its bucket (keeping its aspect), then crop with `crop_style`.

    SimpleTuner's optional pre-crop downsample (maximum_image_size → target_downsample_size) is folded into this
    single resize: resizing first to any size and then to the covering size selects the same pixels."""
    return cover_and_crop(width, height, target_bucket(width, height, ds, seed_key), ds.crop_style, seed_key)


def centre_square(width: int, height: int, side: int) -> Geometry:
    """The centred `side`-px square of an image resized to cover it (the eval loss's fixed geometry)."""
    return cover_and_crop(width, height, (side, side), "center", "")


def cover_and_crop(width: int, height: int, bucket: Tuple[int, int], crop_style: str, seed_key: str) -> Geometry:
    bucket_w, bucket_h = bucket
    scale = max(bucket_w / width, bucket_h / height)
    resized_w = max(bucket_w, round(width * scale))
    resized_h = max(bucket_h, round(height * scale))
    spare_h, spare_w = resized_h - bucket_h, resized_w - bucket_w
    if crop_style in ("center", "centre"):
        top, left = spare_h // 2, spare_w // 2
    elif crop_style == "corner":
        top, left = 0, 0
    else:
        rng = _rng(seed_key, "crop")
        top, left = rng.randint(0, spare_h), rng.randint(0, spare_w)
    return Geometry((bucket_w, bucket_h), (resized_w, resized_h), (top, left), (height, width))


def filter_reason(width: int, height: int, ds) -> Optional[str]:
    """Why an image is left out of the dataset by its size or aspect, or None."""
    unit = {"pixel": "px, shorter side", "pixel_area": "px, edge of equal-area square", "area": "megapixels"}
    measure = image_measure(width, height, ds.resolution_type)
    if ds.minimum_image_size is not None and measure < ds.minimum_image_size:
        return (f"too small: {width}x{height} measures {measure:.4g} ({unit[ds.resolution_type]}), below "
                f"minimum_image_size={ds.minimum_image_size:g}")
    aspect = width / height
    if ds.minimum_aspect_ratio is not None and aspect < ds.minimum_aspect_ratio:
        return f"aspect out of range: {aspect:.3g} < minimum_aspect_ratio={ds.minimum_aspect_ratio:g}"
    if ds.maximum_aspect_ratio is not None and aspect > ds.maximum_aspect_ratio:
        return f"aspect out of range: {aspect:.3g} > maximum_aspect_ratio={ds.maximum_aspect_ratio:g}"
    return None
