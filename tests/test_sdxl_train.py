"""SDXL end to end on CPU: the issue's command on a saved tiny pipeline with a Kohya export loading back into
StableDiffusionXLPipeline, full fine-tune, Diff2Flow, LoRA targets, and the option combinations refused at startup.
(The diffusers LoRA round trip, resume and the quantised base run for every family in test_families.py.)"""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner_pl.errors import ConfigError, ModelSourceError
from simpletuner_pl.preflight import check_config

from helpers import CPU, compose, copy_demo_images, read_metrics, run_cli, typed


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return copy_demo_images(tmp_path_factory.mktemp("images"))


def model_args(tiny_sdxl_dir, images, out):
    return ["model=sdxl", f"model.pretrained_model_name_or_path={tiny_sdxl_dir}",
            "model.pretrained_vae_model_name_or_path=null", "data=local",
            f"data.datasets.main.instance_data_dir={images}", "data.datasets.main.resolution=64",
            f"data.cache_dir={out / 'cache'}", f"output_dir={out}", CPU]


@pytest.fixture(scope="module")
def trained(tiny_sdxl_dir, images, tmp_path_factory) -> Path:
    """The issue's command (plus CPU settings), with a Kohya export and alpha ≠ rank so the alpha tensor matters."""
    out = tmp_path_factory.mktemp("run")
    result = run_cli(*model_args(tiny_sdxl_dir, images, out), "train.max_steps=12", "adapter=lora", "adapter.rank=4",
                     "adapter.alpha=2", "adapter.export_format=kohya", "optimizer.lr=1e-2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def render(pipe) -> torch.Tensor:
    return pipe("a photo of a cat", height=64, width=64, num_inference_steps=2, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(0), output_type="pt").images


def test_kohya_export_round_trips_through_diffusers(trained, tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    kohya = load_file(trained / "adapter" / "pytorch_lora_weights.safetensors")
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0"
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= set(kohya)
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {v.item() for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    # the same tensors in diffusers' own layout (alpha in its metadata) render the same image
    from simpletuner_pl.adapters.layouts import LoraTensors

    peft = {}
    for key, value in kohya.items():
        if key.endswith(".lora_down.weight"):
            path = key[len("lora_unet_"):-len(".lora_down.weight")]
            peft[path] = (value, kohya[key.replace("lora_down", "lora_up")])
    kohya_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    kohya_pipe.load_lora_weights(trained / "adapter")
    diffusers_pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    names = {n.replace(".", "_"): n for n, _ in diffusers_pipe.unet.named_modules()}
    lora = LoraTensors(down={names[p]: d for p, (d, _) in peft.items()}, up={names[p]: u for p, (_, u) in peft.items()})
    diffusers_pipe.load_lora_weights({f"unet.{k}": v for k, v in lora.peft_state().items()},
                                     adapter_name="plain")
    diffusers_pipe.set_adapters("plain", adapter_weights=0.5)  # alpha 2 / rank 4, as the .alpha tensors say
    torch.testing.assert_close(render(kohya_pipe), render(diffusers_pipe))


def test_full_fine_tune_updates_and_saves_the_unet(tiny_sdxl_dir, images, tmp_path):
    from diffusers import UNet2DConditionModel

    from simpletuner_pl.train import run

    trainer = run(compose(*model_args(tiny_sdxl_dir, images, tmp_path), "adapter=full", "train.max_steps=2",
                          "optimizer.lr=1e-3"))
    assert trainer.global_step == 2
    original = UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet").state_dict()
    trained = UNet2DConditionModel.from_pretrained(tmp_path / "adapter", subfolder="unet").state_dict()
    assert set(trained) == set(original)
    assert any(not torch.equal(trained[k], original[k]) for k in original)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert {f"unet.{k}" for k in original} == set(ckpt)  # the checkpoint carries the whole UNet
    torch.testing.assert_close(ckpt["unet.conv_in.weight"], trained["conv_in.weight"])


def test_diff2flow_trains(tiny_sdxl_dir, images, tmp_path):
    from simpletuner_pl.train import run

    trainer = run(compose(*model_args(tiny_sdxl_dir, images, tmp_path), "train.diff2flow=true",
                          "model.prediction_type=v_prediction", "train.max_steps=3", "train.batch_size=2",
                          "train.log_every_n_steps=1"))
    assert trainer.global_step == 3
    losses = [loss for _, loss in read_metrics(tmp_path, "train/loss")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_missing_fp16_fix_vae_names_the_override(tiny_sdxl_dir):
    from simpletuner_pl.preflight import check_model_sources

    cfg = typed("model=sdxl", f"model.pretrained_model_name_or_path={tiny_sdxl_dir}")
    assert cfg.model.pretrained_vae_model_name_or_path == "madebyollin/sdxl-vae-fp16-fix"
    with pytest.raises(ModelSourceError, match="model.pretrained_vae_model_name_or_path"):
        check_model_sources(cfg, check_config(cfg))  # HF_HUB_OFFLINE=1 and not in the cache


@pytest.mark.parametrize("overrides, message", [
    (["adapter.target=all"], "is a Flux preset"),
    (["adapter.use_dora=true", "adapter.export_format=kohya"], "DoRA"),
    (["adapter=full", "quant=int8"], "cannot be quantised"),
    (["train.diff2flow=true", "train.snr_gamma=5"], "min-SNR"),
    (["model.flavour=dev"], "not a sdxl flavour"),
    (["model=flux", "train.snr_gamma=5"], "SDXL-only"),
    (["model=flux", "adapter.target=everything"], "valid choices: mmdit, all, all+ffs"),
])
def test_invalid_combinations_fail_at_startup(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(typed("model=sdxl", *overrides))


def test_lora_targets_default_and_custom_list():
    from simpletuner_pl.models.build import build_module

    def wrapped(module):
        return {name.rsplit(".", 1)[-1] if not name.endswith("to_out.0") else "to_out.0"
                for name, m in module.unet.named_modules() if hasattr(m, "lora_A")}

    assert wrapped(build_module(typed("model=tiny_sdxl", "quant.base_model_default_dtype=fp32"))) == \
        {"to_q", "to_k", "to_v", "to_out.0"}
    custom = build_module(typed("model=tiny_sdxl", "quant.base_model_default_dtype=fp32",
                                "adapter.target='to_q,proj_in'"))
    assert wrapped(custom) == {"to_q", "proj_in"}
    with pytest.raises(ConfigError, match="nonexistent matches no module"):
        build_module(typed("model=tiny_sdxl", "quant.base_model_default_dtype=fp32", "adapter.target=nonexistent"))


