"""Capabilities written once and run for every registered family (diffusers' tester-mixin style): the LoRA loads
into a fresh pipeline of the family and changes its output, resume continues at the saved step, a quantised base
streamed from a folder trains, every adapter parameter gets a gradient, and validation images come from the
adapter being trained."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner_pl.models.registry import FAMILIES, family

from helpers import CPU, compose, copy_demo_images, read_metrics, typed

# The saved tiny pipeline of each family and the overrides that make a run of it small.
MODEL = {
    "flux": lambda folder: ["model=flux", f"model.pretrained_model_name_or_path={folder}", "model.t5_max_length=64"],
    "sdxl": lambda folder: ["model=sdxl", f"model.pretrained_model_name_or_path={folder}",
                            "model.pretrained_vae_model_name_or_path=null"],
}
RENDER = {"flux": dict(guidance_scale=3.5, max_sequence_length=64), "sdxl": dict(guidance_scale=5.0)}
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def test_every_family_has_a_case():
    assert set(MODEL) == set(FAMILIES) == set(RENDER)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return copy_demo_images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def folder(request, tiny_flux_dir, tiny_sdxl_dir) -> Path:
    return {"flux": tiny_flux_dir, "sdxl": tiny_sdxl_dir}[request.node.callspec.params["name"]]


def run_args(name: str, folder: Path, images: Path, out: Path, *extra: str):
    return [*MODEL[name](folder), "data=local", f"data.datasets.main.instance_data_dir={images}",
            "data.datasets.main.resolution=64", f"data.cache_dir={out / 'cache'}", f"output_dir={out}",
            "adapter.rank=4", "optimizer.lr=1e-2", "train.gradient_checkpointing=false", CPU, *extra]


def render(name: str, pipe) -> torch.Tensor:
    return pipe("a photo of a cat", height=64, width=64, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0), **RENDER[name]).images


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lora_loads_into_a_fresh_pipeline_and_changes_its_output(name, folder, images, tmp_path):
    from peft.utils import get_peft_model_state_dict

    from simpletuner_pl.train import run

    spec = family(name)
    # diffusers' own layout here; the default (universal) layout is checked against both loaders in test_lora_interop
    run(compose(*run_args(name, folder, images, tmp_path, "train.max_steps=6", "adapter.alpha=2",
                          "adapter.export_format=diffusers")))
    saved = load_file(tmp_path / "adapter" / ADAPTER_FILE)
    prefix = f"{spec.denoiser_name}."
    assert saved and all(k.startswith(prefix) and (".lora_A." in k or ".lora_B." in k) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if ".lora_B." in k)  # B starts at zero: it trained
    pipe = spec.pipeline_cls().from_pretrained(folder)
    before = render(name, pipe)
    pipe.load_lora_weights(tmp_path / "adapter")
    denoiser = getattr(pipe, spec.denoiser_name)
    (adapter,) = denoiser.peft_config  # diffusers names it default_0
    loaded = get_peft_model_state_dict(denoiser, adapter_name=adapter)
    assert set(loaded) == {k.removeprefix(prefix) for k in saved}  # no missing, no unexpected keys
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[prefix + key].to(value.dtype))
    assert denoiser.peft_config[adapter].lora_alpha == 2  # alpha ≠ rank survives the round trip
    after = render(name, pipe)
    assert (after - before).abs().max() > 1e-4
    assert torch.equal(render(name, pipe), after)  # no LoRA dropout left active at inference


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_resume_continues_at_the_saved_step(name, folder, images, tmp_path):
    from simpletuner_pl.train import run

    args = run_args(name, folder, images, tmp_path, "train.checkpoint_every_n_steps=3", "train.log_every_n_steps=1")
    assert run(compose(*args, "train.max_steps=6")).global_step == 6
    adapter_at_6 = load_file(tmp_path / "adapter" / ADAPTER_FILE)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step=3.ckpt",
                                                                              "step=6.ckpt"]
    assert run(compose(*args, "train.max_steps=9")).global_step == 9
    assert [step for step, _ in read_metrics(tmp_path, "train/loss")] == list(range(9))  # first rows kept
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 9
    prefix = f"{family(name).denoiser_name}."
    assert checkpoint["state_dict"] and all(k.startswith(prefix) and ".lora_" in k for k in checkpoint["state_dict"])
    # The resumed run started from the step-6 adapter, not a fresh one: its step-9 weights differ from a
    # from-scratch 3-step run with the same seed, and from the step-6 weights.
    fresh = tmp_path / "fresh"
    run(compose(*args, "train.max_steps=3", f"output_dir={fresh}"))
    resumed, scratch = load_file(tmp_path / "adapter" / ADAPTER_FILE), load_file(fresh / "adapter" / ADAPTER_FILE)
    key = next(k for k in resumed if ".lora_B." in k or ".lora_up." in k)
    assert not torch.equal(resumed[key], scratch[key]) and not torch.equal(resumed[key], adapter_at_6[key])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_quantised_base_streamed_from_its_folder_trains(name, folder, images, tmp_path):
    """The one quantisation entry point streams either family's denoiser block by block from its folder."""
    from optimum.quanto import QLinear

    from simpletuner_pl.train import run

    trainer = run(compose(*run_args(name, folder, images, tmp_path, "quant=int8", "train.max_steps=3")))
    module = trainer.lightning_module
    base_layers = [m.base_layer for n, m in module.denoiser.named_modules() if hasattr(m, "base_layer")]
    assert base_layers and all(isinstance(layer, QLinear) for layer in base_layers)
    assert module.quantised == {family(name).denoiser_name: "int8-quanto"}
    assert all(".lora_" in n for n, p in module.named_parameters() if p.requires_grad)
    saved = load_file(tmp_path / "adapter" / ADAPTER_FILE)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if ".lora_B." in k or ".lora_up." in k)


@pytest.mark.parametrize("precision", ["no_change", "int8-quanto"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_adapter_parameter_gets_a_gradient(name, precision):
    """A connectivity check that catches silent no-op adapters: after one backward, no trainable tensor is
    without a non-zero gradient (B is moved off its zero init first, so A's gradient flows too)."""
    from simpletuner_pl.models.build import build_module

    module = build_module(typed(f"model=tiny_{name}", CPU, "adapter.rank=4", f"quant.base_model_precision={precision}"))
    params = dict(module.named_parameters())
    torch.manual_seed(0)
    with torch.no_grad():
        for param in (p for n, p in params.items() if ".lora_B." in n):
            param.normal_(0, 0.02)
    batch = {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1, "captions": ["a photo of a cat", "a rocket"]}
    module.training_loss(batch).backward()
    trainable = [n for n, p in params.items() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert [n for n in trainable if params[n].grad is None or params[n].grad.abs().sum() == 0] == []


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_validation_images_come_from_the_adapter_being_trained(name, folder, images, tmp_path):
    import numpy as np
    from PIL import Image

    from simpletuner_pl.train import run

    run(compose(*run_args(name, folder, images, tmp_path, "train.max_steps=2", "validation=on",
                          "validation.prompt=a photo of a cat", "validation.resolutions=64",
                          "validation.num_inference_steps=2", "validation.every_n_steps=1000")))
    steps = sorted(p.name for p in (tmp_path / "validation").iterdir())
    assert steps == ["step_0", "step_2"]  # the base-model benchmark and the end
    with Image.open(tmp_path / "validation/step_0/validation-64x64.png") as first, \
            Image.open(tmp_path / "validation/step_2/validation-64x64.png") as last:
        assert first.size == last.size == (64, 64)
        assert not np.array_equal(np.asarray(first), np.asarray(last))
    assert f"{family(name).pipeline.split(':')[1]}" in (tmp_path / "adapter" / "README.md").read_text()
