"""Pixels, caches and batches with the tiny Flux model's real encoders (CPU)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simpletuner_pl.config import DatasetConfig
from simpletuner_pl.data.buckets import plan_geometry
from simpletuner_pl.data.cache import TensorCache
from simpletuner_pl.data.images import load_pixels

from helpers import CPU, DEMO_DIR, make_datamodule, typed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEMO = DEMO_DIR


def config(folder: Path, cache: Path, *overrides: str):
    return typed("experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={folder}",
                 "data.datasets.main.resolution=64", f"data.cache_dir={cache}", CPU, *overrides)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    from simpletuner_pl.models.build import build_module

    return build_module(config(DEMO, tmp_path_factory.mktemp("unused")))


def counting(module, monkeypatch):
    calls = []
    original = module.encode_images
    monkeypatch.setattr(module, "encode_images",
                        lambda pixels, **kw: calls.append(len(pixels)) or original(pixels, **kw))
    return calls


def test_image_modes_become_upright_rgb(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent → white
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.new("L", (64, 64), 100).save(tmp_path / "grey.png")
    Image.new("CMYK", (64, 64), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(tmp_path / "deep.png")
    stored = np.zeros((64, 192, 3), np.uint8)
    stored[:, :96] = 255  # left half white: after rotating 90° clockwise it is the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    ds = DatasetConfig(instance_data_dir=str(tmp_path), resolution=64, crop_style="center")
    square = plan_geometry(64, 64, ds, "k")
    for name, value in (("rgba.png", 255), ("grey.png", 100), ("cmyk.jpg", 255), ("deep.png", 255)):
        pixels = load_pixels(str(tmp_path / name), square)
        assert pixels.shape == (3, 64, 64) and abs(pixels.float().mean().item() - value) < 3, name
    upright = plan_geometry(64, 192, ds, "k")
    assert upright.bucket == (64, 128)
    pixels = load_pixels(str(tmp_path / "rotated.jpg"), upright).float()
    assert pixels.shape == (3, 128, 64)
    assert pixels[:, :48].mean() > 240 and pixels[:, -48:].mean() < 15


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    cat = Image.open(DEMO / "chelsea-the-cat.jpg")
    cat.save(root / "a.jpg")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "a.png")  # same stem, other image
    cat.crop((0, 0, 300, 100)).save(root / "wide_cat.jpg")
    return root


datamodule = make_datamodule


def test_cache_keys_and_invalidation(folder, tmp_path, module, monkeypatch):
    calls = counting(module, monkeypatch)
    cfg = config(folder, tmp_path / "cache")
    datamodule(cfg, tmp_path).build_caches(module)
    vae = TensorCache(cfg.data.vae_cache_dir("main"))
    assert len(vae.keys()) == 3 and sum(calls) == 3, "a.jpg and a.png get one entry each"
    assert len(TensorCache(cfg.data.text_cache_dir()).keys()) == 2  # "a" (shared) and "wide cat"
    datamodule(cfg, tmp_path).build_caches(module)
    assert sum(calls) == 3, "a second start re-encodes nothing"
    datamodule(config(folder, tmp_path / "cache", "data.datasets.main.resolution=128"), tmp_path).build_caches(module)
    assert len(vae.keys()) == 6 and sum(calls) == 6, "a new resolution is a new entry, never a stale one"
    assert all(not name.endswith(".tmp") for _, _, files in os.walk(vae.root) for name in files)


def test_ranks_cache_disjoint_shards(folder, tmp_path, module, monkeypatch):
    calls = counting(module, monkeypatch)
    cfg = config(folder, tmp_path / "cache", "data.datasets.main.repeats=1")
    vae = TensorCache(cfg.data.vae_cache_dir("main"))
    datamodule(cfg, tmp_path, rank=0, world=2).build_caches(module)
    first = vae.keys()
    datamodule(cfg, tmp_path, rank=1, world=2).build_caches(module)
    assert 0 < len(first) < 3 and len(vae.keys()) == 3 and sum(calls) == 3


def test_batches_carry_cached_latents_and_the_pipelines_own_text_conditioning(folder, tmp_path, module):
    """t5_padding=unmodified (the default): the cached sequence is the whole padded one, T5's outputs at the pad
    tokens included, exactly what FluxPipeline.encode_prompt hands the transformer."""
    cfg = config(folder, tmp_path / "cache", "data.datasets.main.is_regularisation_data=true")
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(module)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and {tuple(b["latents"].shape[2:]) for b in batches} == {(8, 8), (8, 16)}
    max_length = cfg.model.t5_max_length
    pipe = module.validation_pipeline()
    for batch in batches:
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        assert "pixel_values" not in batch and batch["latents"].shape[:2] == (1, 16)
        assert batch["dataset_id"] == "main" and batch["is_regularisation"] is True
        h, w = batch["latents"].shape[2:]
        assert batch["target_size"].tolist() == [[h * 8, w * 8]] and batch["crop_top_left"].shape == (1, 2)
        embeds, pooled, _ = pipe.encode_prompt(batch["captions"], None, max_sequence_length=max_length)
        assert batch["prompt_embeds"].shape == (1, max_length, 32)
        assert torch.equal(batch["prompt_embeds"], embeds) and torch.equal(batch["pooled_prompt_embeds"], pooled)
        assert batch["prompt_embeds"][:, -1].abs().sum() > 0  # the pad positions carry T5's outputs
        tokens = pipe.tokenizer_2(batch["captions"], padding="max_length", max_length=max_length, truncation=True,
                                  return_tensors="pt")
        assert torch.equal(batch["attention_mask"], tokens.attention_mask)
        assert torch.isfinite(module.training_loss(batch))
    assert dm.state_dict() == {"epoch": 0, "position": 3}
    report = json.loads((tmp_path / "out" / "data" / "buckets.json").read_text())
    assert report["main"]["buckets"] == {"64x64": 2, "128x64": 1} and report["main"]["skipped"] == []


def test_zero_padding_is_stored_trimmed_and_read_back_padded(tmp_path):
    """t5_padding=zero: the pad outputs are exactly zero, so entries are cut to the real tokens (lossless) and
    padded with zeros again on read."""
    from simpletuner_pl.data.cache import TensorCache

    from helpers import copy_demo_images, tiny_flux_module

    folder = copy_demo_images(tmp_path / "images", sidecars=True)
    model = ("model.t5_padding=zero", "model.t5_max_length=128")  # the demo captions have 85-110 tokens
    cfg = config(folder, tmp_path / "cache", *model, "data.datasets.main.caption_strategy=textfile")
    zero_module = tiny_flux_module(*model)
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(zero_module)
    cache = TensorCache(cfg.data.text_cache_dir())
    entries = [cache.load(key) for key in sorted(cache.keys())]
    assert entries and all(e["prompt_embeds"].shape[0] == int(e["length"]) for e in entries)
    assert any(int(e["length"]) < cfg.model.t5_max_length for e in entries)
    batch = next(iter(dm.train_dataloader()))
    reference = zero_module.encode_prompts(batch["captions"])
    assert torch.equal(batch["prompt_embeds"], reference["prompt_embeds"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"].cpu())
    length = int(batch["attention_mask"].sum())
    assert batch["prompt_embeds"][:, length:].abs().sum() == 0


def test_caption_dropout_and_pixels_without_encoders(folder, tmp_path):
    cfg = config(folder, tmp_path / "cache", "data.datasets.main.caption_dropout_probability=1.0")
    batch = next(iter(datamodule(cfg, tmp_path).train_dataloader()))
    assert batch["captions"] == [""] and "prompt_embeds" not in batch
    pixels = batch["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.min() >= -1 and pixels.max() <= 1


def test_on_demand_and_disabled_latents(folder, tmp_path, module, monkeypatch):
    calls = counting(module, monkeypatch)
    cfg = config(folder, tmp_path / "cache", "data.datasets.main.vae_cache_ondemand=true")
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(module)
    vae = TensorCache(cfg.data.vae_cache_dir("main"))
    assert calls == [] and vae.keys() == set()
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert "pixel_values" not in batch and batch["latents"].shape[1] == 16 and len(vae.keys()) == 1
    cfg = config(folder, tmp_path / "other", "data.datasets.main.vae_cache_disable=true")
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(module)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert "pixel_values" in batch and "latents" not in batch
    assert TensorCache(cfg.data.vae_cache_dir("main")).keys() == set()


def test_image_that_fails_to_decode_is_dropped_and_reported(folder, tmp_path, module):
    data = (DEMO / "coffee-cup.jpg").read_bytes()
    (folder / "garbled.jpg").write_bytes(data[:2000] + bytes(range(256)) * 20 + data[7120:])  # intact ending
    cfg = config(folder, tmp_path / "cache")
    dm = datamodule(cfg, tmp_path)
    assert len(dm.samples) == 4
    dm.build_caches(module)
    assert len(dm.samples) == 3 and len(list(dm.train_dataloader())) == 3
    skipped = json.loads((tmp_path / "out" / "data" / "buckets.json").read_text())["main"]["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["garbled.jpg"] and "cannot decode" in skipped[0]["reason"]


def test_unreadable_cache_entry_is_encoded_again(folder, tmp_path, module):
    cfg = config(folder, tmp_path / "cache")
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(module)
    vae = TensorCache(cfg.data.vae_cache_dir("main"))
    for key in vae.keys():
        vae.path(key).write_bytes(b"not safetensors")  # e.g. a copy interrupted by a full disk
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["latents"].shape[1] == 16
    rewritten = [k for k in vae.keys() if vae.path(k).stat().st_size > 100]
    assert len(rewritten) == 1 and vae.load(rewritten[0])["latents"].shape == batch["latents"].shape[1:]


def test_sdxl_batches_keep_all_77_clip_tokens(folder, tmp_path):
    """Sequences are padded to the length the model's own encoder gives: 77 attended CLIP tokens for SDXL."""
    from simpletuner_pl.models.build import build_module

    cfg = config(folder, tmp_path / "cache", "model=tiny_sdxl")
    sdxl = build_module(cfg)
    dm = datamodule(cfg, tmp_path)
    dm.build_caches(sdxl)
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0), 0)
    reference = sdxl.encode_prompts(batch["captions"])
    assert batch["prompt_embeds"].shape == reference["prompt_embeds"].shape and batch["attention_mask"].all()
    torch.testing.assert_close(batch["prompt_embeds"], reference["prompt_embeds"])
    assert batch["latents"].shape[1] == 4 and torch.isfinite(sdxl.training_loss(batch))
