"""Decode one image into its bucket: EXIF-upright RGB, resized and cropped in a single LANCZOS pass.

JPEGs are decoded at a reduced DCT scale (`Image.draft`) when the bucket is much smaller than the photo, which
is most of the decoding cost saved for large photos; the crop box is mapped into that smaller image, so the
result matches the full-size path up to resampling.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from simpletuner_pl.data.buckets import Geometry

SWAPS_SIDES = {5, 6, 7, 8}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: transparency composited over white, 16-bit greyscale scaled, CMYK/greyscale/palette
    converted by PIL."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray((values * (255.0 / peak)).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_pixels(path: str, geometry: Geometry) -> torch.Tensor:
    """uint8 [3, H, W] of the bucket-sized crop of `path` described by `geometry`."""
    bucket_w, bucket_h = geometry.bucket
    resized_w, resized_h = geometry.resized
    top, left = geometry.crop_top_left
    with Image.open(path) as image:
        orientation = image.getexif().get(0x0112, 1) if image.format == "JPEG" else 1
        wanted = (resized_h, resized_w) if orientation in SWAPS_SIDES else (resized_w, resized_h)
        image.draft(image.mode, wanted)  # JPEG only: decode at the smallest DCT scale still >= wanted
        image = to_rgb(ImageOps.exif_transpose(image))
    sx, sy = image.width / resized_w, image.height / resized_h
    box = (left * sx, top * sy, (left + bucket_w) * sx, (top + bucket_h) * sy)
    image = image.resize((bucket_w, bucket_h), Image.Resampling.LANCZOS, box=box)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] → float in [-1, 1], as the VAE expects."""
    return pixels.float().div_(127.5).sub_(1.0)
