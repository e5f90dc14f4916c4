"""The eval loss reads its held-out images with the training pipeline's own code: every format discovery finds,
transparency composited over white, every caption strategy, unreadable files skipped, one square geometry."""

import pytest
import torch
from PIL import Image

from simpletuner_pl.callbacks.eval_loss import batches
from simpletuner_pl.config import DataConfig, DatasetConfig, EvalLossConfig
from simpletuner_pl.data.held_out import discover_held_out, held_out_source
from simpletuner_pl.errors import DataError


def folder_of_images(root):
    root.mkdir()
    Image.new("RGBA", (96, 64), (0, 0, 0, 0)).save(root / "clear.png")  # fully transparent: white, not black
    Image.new("RGB", (64, 96), (0, 0, 255)).save(root / "blue.tif")
    (root / "blue.txt").write_text("a blue square\nsecond variant\n")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_formats_transparency_captions_and_geometry(tmp_path):
    root = folder_of_images(tmp_path / "held_out")
    source = held_out_source(DataConfig(), EvalLossConfig(enabled=True, instance_data_dir=str(root), resolution=32))
    images = discover_held_out(source, tmp_path / "cache", limit=10)
    assert [(p.path.rsplit("/", 1)[1], p.caption) for p in images] == [("blue.tif", "a blue square"),
                                                                       ("clear.png", "clear")]
    assert all(p.geometry.bucket == (32, 32) for p in images)
    pixels = [b["pixel_values"] for b in batches(images, torch.device("cpu"))]
    assert all(p.shape == (1, 3, 32, 32) for p in pixels)
    assert torch.allclose(pixels[1], torch.ones_like(pixels[1]))  # transparent → white → 1.0
    assert pixels[0][0, 2].mean() > 0.99 and pixels[0][0, 0].mean() < -0.99  # blue stays blue


def test_a_dataset_type_eval_entry_uses_its_own_caption_strategy(tmp_path):
    root = folder_of_images(tmp_path / "held_out")
    data = DataConfig(datasets={"held": DatasetConfig(dataset_type="eval", instance_data_dir=str(root),
                                                      caption_strategy="instanceprompt", instance_prompt="sks",
                                                      resolution=64)})
    source = held_out_source(data, EvalLossConfig(enabled=True))
    assert source.setting == "data.datasets.held.instance_data_dir"
    assert source.resolution == 512  # no training dataset to match here: the eval default
    assert {p.caption for p in discover_held_out(source, tmp_path / "cache", limit=1)} == {"sks"}


def test_missing_or_empty_folder_names_the_setting(tmp_path):
    loss = EvalLossConfig(enabled=True, instance_data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="eval.eval_loss.instance_data_dir=.*does not exist"):
        discover_held_out(held_out_source(DataConfig(), loss), tmp_path / "cache", 4)
    (tmp_path / "empty").mkdir()
    loss.instance_data_dir = str(tmp_path / "empty")
    with pytest.raises(DataError, match="no images"):
        discover_held_out(held_out_source(DataConfig(), loss), tmp_path / "cache", 4)
