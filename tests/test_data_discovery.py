"""Discovery (header-only, cached), caption strategies and the data errors raised before any model loads."""

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from simpletuner_pl.config import DataConfig, DatasetConfig, RunConfig, TrainConfig
from simpletuner_pl.data import discovery
from simpletuner_pl.data.catalog import discover_all as discover_datasets
from simpletuner_pl.errors import DataError
from simpletuner_pl.preflight import check_config

from helpers import DEMO_DIR as DEMO
from helpers import typed


def write_bad_files(folder: Path) -> None:
    data = (DEMO / "coffee-cup.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not a picture")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    shutil.copy(DEMO / "chelsea-the-cat.jpg", root / "cat.jpg")
    shutil.copy(DEMO / "coffee-cup.jpg", root / "sub" / "coffee_cup (2).jpg")
    Image.new("RGBA", (120, 80), (255, 0, 0, 128)).save(root / "rgba.png")
    rotated = Image.new("RGB", (300, 100), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rotated.save(root / "rotated.jpg", exif=exif)
    (root / ".hidden").mkdir()
    shutil.copy(DEMO / "coffee-cup.jpg", root / ".hidden" / "ignored.jpg")
    write_bad_files(root)
    return root


def test_headers_only_sizes_exif_and_bad_files(folder, tmp_path, monkeypatch):
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or original(self))
    listing = discovery.discover(folder, tmp_path / "cache", read_sidecars=False)
    info = {i.rel: i for i in listing.images}
    assert set(info) == {"cat.jpg", "sub/coffee_cup (2).jpg", "rgba.png", "rotated.jpg", "truncated.jpg",
                         "empty.jpg", "notes.png"}
    assert (info["cat.jpg"].width, info["cat.jpg"].height) == (451, 300)
    assert (info["rotated.jpg"].width, info["rotated.jpg"].height) == (100, 300), "EXIF orientation honoured"
    assert "truncated" in info["truncated.jpg"].error
    assert info["empty.jpg"].error == "zero-byte file"
    assert "not an image" in info["notes.png"].error
    assert all(i.error is None for k, i in info.items() if k not in ("truncated.jpg", "empty.jpg", "notes.png"))
    assert loads == [(600, 400)], "only the file with a bad ending is decoded (to confirm the truncation)"


def test_metadata_cache_is_keyed_by_mtime_and_size(folder, tmp_path, monkeypatch):
    first = discovery.discover(folder, tmp_path / "cache", read_sidecars=True)
    assert len(list((tmp_path / "cache" / "metadata").iterdir())) == 1, "one compact file per dataset folder"
    monkeypatch.setattr(discovery, "read_header", lambda *a: pytest.fail("a cached file was opened"))
    assert discovery.discover(folder, tmp_path / "cache", read_sidecars=True).images == first.images
    Image.new("RGB", (64, 256)).save(folder / "cat.jpg")  # same path, new content
    os.utime(folder / "cat.jpg", ns=(1, 1))
    opened = []
    monkeypatch.setattr(discovery, "read_header", lambda path, size: opened.append(path) or (64, 256, None))
    changed = {i.rel: i for i in discovery.discover(folder, tmp_path / "cache", read_sidecars=True).images}
    assert opened == [str(folder / "cat.jpg")] and (changed["cat.jpg"].width, changed["cat.jpg"].height) == (64, 256)


def run_config(tmp_path, batch_size=1, **datasets) -> RunConfig:
    data = DataConfig(datasets=datasets, cache_dir=str(tmp_path / "cache"))
    return RunConfig(data=data, train=TrainConfig(batch_size=batch_size), trainer={"accelerator": "cpu"})


def discover_all(cfg: RunConfig):
    return discover_datasets(cfg.data, cfg.train, cfg.trainer)


def dataset(folder, **kw) -> DatasetConfig:
    return replace(DatasetConfig(instance_data_dir=str(folder), resolution=64), **kw)


def skipped_reasons(index) -> dict:
    return {Path(e["path"]).name: e["reason"] for e in index.skipped}


def test_caption_strategies(folder, tmp_path):
    (folder / "cat.txt").write_text("a cat\n\nthe cat Chelsea\n")
    (folder / "rgba.txt").write_text("   \n")
    catalog = discover_all(run_config(
        tmp_path, byname=dataset(folder), bytext=dataset(folder, caption_strategy="textfile"),
        byprompt=dataset(folder, caption_strategy="instanceprompt", instance_prompt="sks thing")))
    names = {Path(s.path).name: s.captions for s in catalog["byname"].samples}
    assert names["coffee_cup (2).jpg"] == ("coffee cup",) and names["rgba.png"] == ("rgba",)
    texts = {Path(s.path).name: s.captions for s in catalog["bytext"].samples}
    assert texts == {"cat.jpg": ("a cat", "the cat Chelsea")}
    reasons = skipped_reasons(catalog["bytext"])
    assert "no caption" in reasons["rgba.png"] and "no caption" in reasons["rotated.jpg"]
    assert "truncated" in reasons["truncated.jpg"] and reasons["empty.jpg"] == "zero-byte file"
    assert {s.captions for s in catalog["byprompt"].samples} == {("sks thing",)}


def test_parquet_captions(folder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"filename": ["cat", "coffee_cup (2)"], "caption": ["a cat", None],
                      "alt": ["unused", "a cup of coffee"]})
    pq.write_table(table, folder / "captions.parquet")
    ds = dataset(folder, caption_strategy="parquet")
    ds.parquet.path, ds.parquet.fallback_caption_column = "captions.parquet", "alt"
    catalog = discover_all(run_config(tmp_path, main=ds))
    assert {Path(s.path).name: s.captions for s in catalog["main"].samples} == {
        "cat.jpg": ("a cat",), "coffee_cup (2).jpg": ("a cup of coffee",)}
    assert "no parquet row" in skipped_reasons(catalog["main"])["rotated.jpg"]


def test_missing_and_empty_folders(tmp_path):
    missing = dataset(tmp_path / "pseudo-camera-10k", huggingface_dataset="bghira/pseudo-camera-10k")
    with pytest.raises(DataError, match="huggingface-cli download --repo-type=dataset bghira/pseudo-camera-10k "
                                        f"--local-dir={tmp_path / 'pseudo-camera-10k'}"):
        discover_all(run_config(tmp_path, main=missing))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"no images \(.*\) found under .*empty"):
        discover_all(run_config(tmp_path, main=dataset(tmp_path / "empty")))


def test_everything_filtered_names_the_filters(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (100, 100)).save(root / f"small{i}.jpg")
    write_bad_files(root)
    with pytest.raises(DataError) as err:
        discover_all(run_config(tmp_path, main=dataset(root, minimum_image_size=512)))
    message = str(err.value)
    assert "no images detected in dataset main" in message and "all 6 image files" in message
    assert "3 too small" in message and "1 truncated or corrupt image data" in message
    assert "1 zero-byte file" in message and "1 not an image" in message
    assert "lower data.datasets.main.minimum_image_size (now 512, in pixel_area units)" in message


def test_too_small_for_the_batch_names_the_repeats(tmp_path, caplog):
    root = tmp_path / "few"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64)).save(root / f"square{i}.jpg")
    Image.new("RGB", (192, 64)).save(root / "wide.jpg")
    with pytest.raises(DataError) as err:
        discover_all(run_config(tmp_path, batch_size=8, main=dataset(root)))
    message = str(err.value)
    assert "no images detected in dataset main (4 usable)" in message
    assert "64x64 (3 images), 128x64 (1 image)" in message
    assert "train.batch_size × ranks × gradient_accumulation_steps = 8 × 1 × 1 = 8" in message
    assert "set data.datasets.main.repeats=7" in message
    catalog = discover_all(run_config(tmp_path, batch_size=2, main=dataset(root)))  # only the 1-image bucket drops
    assert len(catalog["main"].samples) == 4
    assert "dataset main: bucket(s) 128x64 (1 image)" in caplog.text and "repeats=1 to keep them" in caplog.text
    discover_all(run_config(tmp_path, batch_size=8, main=dataset(root, repeats=7)))  # the advice works


def test_quickstart_configs_compose_and_name_the_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quickstart's paths are relative to the working directory
    cfg = typed("data=pseudo_camera", "trainer.accelerator=cpu")
    check_config(cfg)
    reg, subject, small = (cfg.data.datasets[k] for k in
                           ("pseudo-camera-10k-flux", "dreambooth-subject", "dreambooth-subject-512"))
    assert (reg.crop, reg.crop_aspect, reg.crop_style, reg.resolution, reg.is_regularisation_data) == (
        True, "square", "center", 512, True)
    assert (subject.resolution, subject.repeats, subject.caption_strategy, small.resolution) == (
        1024, 1000, "instanceprompt", 512)
    assert cfg.data.text_embeds.cache_dir == "cache/text/flux" and cfg.data.text_embeds.write_batch_size == 128
    with pytest.raises(DataError, match="huggingface-cli download --repo-type=dataset bghira/pseudo-camera-10k "
                                        "--local-dir=datasets/pseudo-camera-10k"):
        discover_all(cfg)
    dreambooth = typed("data=dreambooth", "trainer.accelerator=cpu")
    check_config(dreambooth)
    assert dreambooth.data.datasets["subject"].repeats == 1000
