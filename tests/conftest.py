import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: thread hand-offs cost more than they save
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "SIMPLETUNER_PL_TEST_CACHE" not in os.environ:  # keep test caches out of the user's ~/.cache
    import tempfile

    os.environ["SIMPLETUNER_PL_TEST_CACHE"] = tempfile.mkdtemp(prefix="simpletuner_pl_test_cache_")
    os.environ["XDG_CACHE_HOME"] = os.environ["SIMPLETUNER_PL_TEST_CACHE"]

from pathlib import Path

import pytest

from helpers import copy_demo_images


def pytest_collection_modifyitems(config, items):
    """`gpu` tests (selected with `-m gpu`) are skipped, with the reason, where there is no CUDA GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            for item in gpu_tests:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """A tiny random-init FLUX pipeline saved with `save_pretrained`, standing in for a hub download."""
    from simpletuner_pl.models.tiny_flux import save_tiny_flux_pipeline

    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny random-init SDXL pipeline saved with `save_pretrained`, standing in for a hub download."""
    from simpletuner_pl.models.tiny_sdxl import save_tiny_sdxl_pipeline

    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture
def images_dir(tmp_path) -> Path:
    """The bundled photos with filename captions (no sidecars): what a user's folder usually looks like."""
    return copy_demo_images(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_assistant_lora(tmp_path_factory) -> Path:
    """A LoRA for the tiny schnell transformer (no guidance embedding) with non-zero weights, written by diffusers'
    own `FluxPipeline.save_lora_weights`: a stand-in for ostris/FLUX.1-schnell-training-adapter."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    transformer = build_tiny_flux_components(guidance_embeds=False)["transformer"]
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # scale 2
    transformer.add_adapter(config)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.2)
    folder = tmp_path_factory.mktemp("assistant")
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   transformer_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"
