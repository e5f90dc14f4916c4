import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: thread hand-offs cost more than they save
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "SIMPLETUNER_PL_TEST_CACHE" not in os.environ:  # keep test caches out of the user's ~/.cache
    import tempfile

    os.environ["SIMPLETUNER_PL_TEST_CACHE"] = tempfile.mkdtemp(prefix="simpletuner_pl_test_cache_")
    os.environ["XDG_CACHE_HOME"] = os.environ["SIMPLETUNER_PL_TEST_CACHE"]

import pytest  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parents[1] / "simpletuner_pl" / "assets" / "demo"


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """A tiny random-init FLUX pipeline saved with `save_pretrained`, standing in for a hub download."""
    from simpletuner_pl.models.tiny import save_tiny_flux_pipeline

    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture
def images_dir(tmp_path) -> Path:
    """The bundled photos with filename captions (no sidecars): what a user's folder usually looks like."""
    out = tmp_path / "images"
    out.mkdir()
    for image in DEMO_DIR.glob("*.jpg"):
        shutil.copy(image, out / image.name)
    return out


def compose(*overrides: str):
    from simpletuner_pl.cli import compose as _compose

    return _compose(list(overrides))


def typed(*overrides: str):
    """Composed config as the typed dataclasses `run()` works with."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose(*overrides))


def tiny_flux_module(*overrides: str, **transformer_overrides):
    from simpletuner_pl.models.flux import FluxModule
    from simpletuner_pl.models.tiny import build_tiny_flux_components

    cfg = typed("experiment=demo", *overrides)
    return FluxModule(cfg, build_tiny_flux_components(**transformer_overrides))
