"""What the tests share: the bundled photos, config composition, the CLI runner, metrics and tiny modules."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "simpletuner_pl" / "assets" / "demo"
CPU = "debug=cpu"  # trainer.accelerator=cpu, fp32, no mixed precision, in-process data loading


def compose(*overrides: str):
    from simpletuner_pl.config import compose as _compose

    return _compose(list(overrides))


def typed(*overrides: str):
    """Composed config as the typed dataclasses `run()` works with."""
    from simpletuner_pl.config import to_typed

    return to_typed(compose(*overrides))


def copy_demo_images(target: Path, sidecars: bool = False) -> Path:
    """The bundled photos (with their .txt captions if `sidecars`) in a folder of their own."""
    target.mkdir(parents=True, exist_ok=True)
    for image in DEMO_DIR.glob("*.jpg"):
        shutil.copy(image, target / image.name)
        if sidecars:
            shutil.copy(image.with_suffix(".txt"), target / f"{image.stem}.txt")
    return target


def run_cli(*args: str, cwd: Path = ROOT, module: str = "simpletuner_pl", **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=600)


def read_metrics(run_dir: Path, key: str) -> List[Tuple[int, float]]:
    """(step, value) of every `metrics.csv` row that has `key`."""
    with (Path(run_dir) / "metrics.csv").open() as handle:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(handle) if row.get(key)]


def tiny_module(*overrides: str, family: str = "flux", **denoiser_overrides):
    """The tiny model of `family` built by the real recipe, with `experiment=demo` (or tiny SDXL) settings."""
    from simpletuner_pl.models.build import assemble_module
    from simpletuner_pl.models.registry import family as family_spec

    if family == "flux":
        from simpletuner_pl.models.tiny_flux import build_tiny_flux_components as build

        cfg = typed("experiment=demo", *overrides)
    else:
        from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components as build

        cfg = typed("model=tiny_sdxl", CPU, *overrides)
    components = build(**denoiser_overrides)
    if family == "sdxl":
        from diffusers import DDPMScheduler

        components["scheduler"] = DDPMScheduler.from_config(components["scheduler"].config)
    return assemble_module(cfg, family_spec(family), components)


def tiny_flux_module(*overrides: str, **transformer_overrides):
    return tiny_module(*overrides, **transformer_overrides)


def quantise_tiny(cfg, components: dict, family: str = "flux"):
    """Components built in code, quantised by the one quantisation entry point as `cfg.quant` says."""
    import torch

    from simpletuner_pl.models.build import denoiser_of
    from simpletuner_pl.models.registry import family as family_spec
    from simpletuner_pl.quantization import load_quantized

    spec = family_spec(family)
    return load_quantized(lambda streamed: components, denoiser_of(spec, cfg), cfg.quant, torch.float32,
                          torch.device("cpu"))


def make_datamodule(cfg, tmp_path: Path, rank: int = 0, world: int = 1):
    """The datamodule of `cfg` set up as Lightning would on rank `rank` of `world` (no trainer needed)."""
    from types import SimpleNamespace

    from simpletuner_pl.data.catalog import discover_all
    from simpletuner_pl.data.datamodule import AspectBucketDataModule

    dm = AspectBucketDataModule(cfg.data, cfg.train, cfg.seed, discover_all(cfg.data, cfg.train, cfg.trainer),
                                tmp_path / "out")
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=SimpleNamespace(barrier=lambda: None))
    dm.setup("fit")
    return dm


def perturb_zero_factors(module) -> None:
    """Zero-initialised factors (LoRA's B, LoKr's w2) block their partner's gradient by construction."""
    import torch

    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(6)
        for param in module.trainable_parameters():
            if not param.any():
                param.normal_(std=0.02)
