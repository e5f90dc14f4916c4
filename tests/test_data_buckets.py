"""Bucket geometry, crops and the dataset config checks (pure functions, real pixels for the crops)."""

import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from simpletuner_pl.config import DataConfig, DatasetConfig
from simpletuner_pl.config.checks import check_data
from simpletuner_pl.config.fields import check_fields
from simpletuner_pl.data.buckets import bucket_size, filter_reason, plan_geometry
from simpletuner_pl.data.images import load_pixels
from simpletuner_pl.errors import ConfigError


@pytest.mark.parametrize("aspect, resolution, rtype, expected", [
    (1.0, 1024, "pixel_area", (1024, 1024)),
    (1.46, 1024, "pixel_area", (1216, 832)),  # SimpleTuner's documented 1024 buckets
    (0.68, 1024, "pixel_area", (832, 1216)),
    (1.5, 512, "pixel_area", (640, 448)),
    (4.0, 64, "pixel_area", (128, 64)),  # never below one 64 px step
    (1.5, 512, "pixel", (768, 512)),  # shorter side = resolution
    (0.75, 512, "pixel", (512, 704)),
    (1.0, 1.0, "area", (1024, 1024)),  # 1.0 MP snaps to 1024²
    (1.0, 0.25, "area", (512, 512)),
    (1.0, 0.4, "area", (640, 640)),  # no snap: sqrt(0.4e6) = 632 → 640
    (1.0, 0.29, "area", (512, 512)),  # within 0.05 of 0.25 MP: snaps to 512²
    (1.46, 1.0, "area", (1216, 832)),
    (1.4649, 1024, "pixel_area", (1216, 832)),  # aspects round to 2 decimals first
])
def test_bucket_size_table(aspect, resolution, rtype, expected):
    assert bucket_size(aspect, resolution, rtype) == expected


@pytest.mark.parametrize("resolution", [512, 1024])
def test_area_buckets_are_aligned_and_keep_the_area(resolution):
    for aspect in np.round(np.exp(np.linspace(math.log(1 / 3), math.log(3), 200)), 2):
        w, h = bucket_size(float(aspect), resolution, "pixel_area")
        assert w % 64 == 0 and h % 64 == 0
        assert abs(w * h / resolution ** 2 - 1) < 0.13, (aspect, w, h)
        assert abs(math.log((w / h) / aspect)) < 0.2, (aspect, w, h)


def test_bucket_is_a_function_of_the_rounded_aspect_only():
    sizes = {bucket_size(a, 1024, "pixel_area") for a in (1.4951, 1.5, 1.5049)}
    assert sizes == {bucket_size(1.5, 1024, "pixel_area")}


def ds(**kw) -> DatasetConfig:
    return replace(DatasetConfig(instance_data_dir="/x"), **kw)


def test_crop_square_geometry_and_styles():
    square = dict(crop=True, crop_aspect="square", resolution=512)
    centre = plan_geometry(1000, 500, ds(crop_style="center", **square), "k")
    assert centre.bucket == (512, 512) and centre.resized == (1024, 512)
    assert centre.crop_top_left == (0, 256) and centre.original_size == (500, 1000)
    assert centre.target_size == (512, 512)
    assert plan_geometry(1000, 500, ds(crop_style="corner", **square), "k").crop_top_left == (0, 0)
    randoms = [plan_geometry(1000, 500, ds(crop_style="random", **square), f"img{i}") for i in range(30)]
    lefts = {g.crop_top_left[1] for g in randoms}
    assert all(g.crop_top_left[0] == 0 and 0 <= g.crop_top_left[1] <= 512 for g in randoms) and len(lefts) > 10
    again = plan_geometry(1000, 500, ds(crop_style="random", **square), "img3")
    assert again == randoms[3], "random crops are seeded by the image, so cached latents stay valid"


def test_crop_aspects():
    preserve = plan_geometry(900, 600, ds(crop=True, crop_aspect="preserve", resolution=512), "k")
    assert preserve.bucket == bucket_size(1.5, 512, "pixel_area")
    closest = plan_geometry(900, 600, ds(crop=True, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0, 1.33],
                                         resolution=512), "k")
    assert closest.bucket == bucket_size(1.33, 512, "pixel_area")
    weighted = ds(crop=True, crop_aspect="random", resolution=512,
                  crop_aspect_buckets=[{"aspect_bucket": 1.0, "weight": 1.0}, {"aspect": 0.5, "weight": 0.0}])
    assert {plan_geometry(900, 600, weighted, f"k{i}").bucket for i in range(20)} == {(512, 512)}
    uncropped = plan_geometry(900, 601, ds(crop=False, resolution=512), "k")
    assert uncropped.bucket == (640, 448)
    w, h = uncropped.resized
    assert w >= 640 and h >= 448 and abs(w / h - 900 / 601) < 0.01


def test_crop_styles_pick_the_recorded_pixels(tmp_path):
    """Left half red, right half blue: the corner crop is all red, the centre crop straddles both."""
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100, 0] = 255
    image[:, 100:, 2] = 255
    path = tmp_path / "halves.png"
    Image.fromarray(image).save(path)
    base = dict(crop=True, crop_aspect="square", resolution=64)
    corner = load_pixels(str(path), plan_geometry(200, 100, ds(crop_style="corner", **base), "k"))
    centre_geometry = plan_geometry(200, 100, ds(crop_style="center", **base), "k")
    assert centre_geometry.crop_top_left == (0, 32)
    centre = load_pixels(str(path), centre_geometry)
    assert corner.shape == centre.shape == (3, 64, 64)
    assert corner[0].float().mean() > 250 and corner[2].float().mean() < 5
    assert centre[0, :, :20].float().mean() > 250 and centre[2, :, -20:].float().mean() > 250


def test_filters():
    assert "too small" in filter_reason(300, 200, ds(resolution=512, minimum_image_size=512))
    assert filter_reason(600, 500, ds(resolution=512, minimum_image_size=512)) is None
    assert filter_reason(300, 200, ds(resolution_type="pixel", resolution=512, minimum_image_size=200)) is None
    assert "too small" in filter_reason(300, 200, ds(resolution_type="area", resolution=1.0, minimum_image_size=0.5))
    assert "aspect out of range" in filter_reason(300, 100, ds(maximum_aspect_ratio=2.0))
    assert "aspect out of range" in filter_reason(100, 300, ds(minimum_aspect_ratio=0.5))


@pytest.mark.parametrize("overrides, message", [
    (dict(resolution_type="area", resolution=1024), "means 1024 megapixels"),
    (dict(resolution_type="pixel_area", resolution=1.0), "resolution_type=area"),
    (dict(resolution_type="pixel_area", minimum_image_size=1.0), "minimum_image_size=1 with resolution_type"),
    (dict(caption_strategy="instanceprompt"), "needs data.datasets.main.instance_prompt"),
    (dict(caption_strategy="parquet"), "parquet.path"),
    (dict(crop=True, crop_aspect="closest"), "crop_aspect_buckets"),
    (dict(repeats=-1), "repeats=-1 is out of range: it must be >= 0 (0 = every image once per epoch"),
    (dict(vae_cache_disable=True, vae_cache_ondemand=True), "exclude each other"),
    (dict(probability=0.0), "every enabled dataset has probability 0"),
])
def test_config_errors_say_what_to_change(overrides, message):
    cfg = DataConfig(datasets={"main": ds(**overrides)})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_fields(cfg, "data")
        check_data(cfg)


def test_config_choices_are_listed():
    with pytest.raises(ConfigError, match="valid choices: filename, textfile, instanceprompt, parquet"):
        check_fields(ds(caption_strategy="bogus"), "data.datasets.main")
    with pytest.raises(ConfigError, match="crop_style='face'"):
        check_fields(ds(crop_style="face"), "data.datasets.main")
