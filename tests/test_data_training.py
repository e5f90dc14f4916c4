"""Real training runs on a mixed-aspect folder of real photos with corrupt files in it (issue 3's "done when")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from simpletuner_pl.data.datamodule import AspectBucketDataModule
from simpletuner_pl.train import run

from helpers import CPU, DEMO_DIR, ROOT, compose

DEMO = DEMO_DIR
BAD = {"truncated.jpg", "empty.jpg", "notes.png"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Portrait, landscape and square crops of the demo photos (three buckets at 64 px), plus corrupt files."""
    root = tmp_path_factory.mktemp("mixed")
    for photo in DEMO.glob("*.jpg"):
        image = Image.open(photo)
        w, h = image.size
        image.crop((0, 0, w, w // 3)).save(root / f"{photo.stem} landscape.jpg")
        image.crop((0, 0, h // 3, h)).save(root / f"{photo.stem} portrait.jpg")
        image.crop((0, 0, min(w, h), min(w, h))).save(root / f"{photo.stem} square.png")
    data = (DEMO / "coffee-cup.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image")
    return root


def test_done_when_command(mixed, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    result = subprocess.run(
        [sys.executable, "-m", "simpletuner_pl", "model=tiny_flux", "data=local",
         f"data.datasets.main.instance_data_dir={mixed}", "data.datasets.main.crop=false",
         "data.datasets.main.resolution=64", "quant.base_model_default_dtype=fp32", "train.mixed_precision=no",
         "train.max_steps=6", "train.gradient_checkpointing=false", "trainer.accelerator=cpu", f"output_dir={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "data" / "buckets.json").read_text())["main"]
    assert report["buckets"] == {"64x64": 5, "64x128": 5, "128x64": 5}
    assert {Path(s["path"]).name for s in report["skipped"]} == BAD
    assert "skipping" in result.stdout + result.stderr
    assert (out / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "xdg" / "simpletuner_pl" / "vae" / "main").rglob("*.safetensors"))) == 15


def test_resume_continues_the_epoch(mixed, tmp_path, monkeypatch):
    seen = []
    original = AspectBucketDataModule.on_before_batch_transfer
    monkeypatch.setattr(AspectBucketDataModule, "on_before_batch_transfer",
                        lambda self, batch, i: seen.append(batch["_position"]) or original(self, batch, i))

    def train(steps: int):
        return run(compose("experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={mixed}",
                           "data.datasets.main.resolution=64", f"data.cache_dir={tmp_path / 'cache'}",
                           f"train.max_steps={steps}", f"output_dir={tmp_path / 'run'}", CPU))

    train(4)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["AspectBucketDataModule"] == {"epoch": 0, "position": 4}
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3)]
    trainer = train(7)
    assert seen[4:] == [(0, 4), (0, 5), (0, 6)], "the resumed run continues the saved epoch, not from its start"
    assert trainer.global_step == 7 and trainer.datamodule.state_dict() == {"epoch": 0, "position": 7}


def test_epochs_advance_and_continue_after_a_resume(tmp_path, monkeypatch):
    """Five images, batch 1: steps 0-4 are epoch 0, steps 5-7 epoch 1 (its own order), across a resume too."""
    seen = []
    original = AspectBucketDataModule.on_before_batch_transfer
    monkeypatch.setattr(AspectBucketDataModule, "on_before_batch_transfer",
                        lambda self, batch, i: seen.append(batch["_position"]) or original(self, batch, i))
    args = ("experiment=demo", CPU, "data.datasets.demo.resolution=64", "train.checkpoint_every_n_steps=3",
            f"data.cache_dir={tmp_path / 'cache'}")
    run(compose(*args, "train.max_steps=8", f"output_dir={tmp_path / 'straight'}"))
    assert seen == [(0, p) for p in range(5)] + [(1, p) for p in range(3)]
    seen.clear()
    run(compose(*args, "train.max_steps=4", f"output_dir={tmp_path / 'split'}"))
    run(compose(*args, "train.max_steps=8", f"output_dir={tmp_path / 'split'}"))
    assert seen == [(0, p) for p in range(5)] + [(1, p) for p in range(3)]
