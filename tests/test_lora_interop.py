"""Every LoRA this project writes loads exactly in diffusers (`load_lora_weights` + `fuse_lora`) and in ComfyUI's
loader (`comfy_reference`: its key mapping and patching), with no key left out and the same weights in both."""

import pytest
import torch
from safetensors.torch import load_file

from lora_checks import (
    assert_same,
    base_components,
    comfy_applied,
    denoiser_name,
    diffusers_fused,
    expected_weights,
    trained,
)

FLUX_PRESETS = ["all", "all+ffs", "mmdit", "context", "context+ffs", "tiny", "nano"]


CASES = [("flux", ()), ("flux", ("adapter.alpha=2",)), ("flux", ("adapter.alpha=16",)),
         ("sdxl", ()), ("sdxl", ("adapter.alpha=2",)),
         ("flux", ("adapter.alpha=2", "adapter.use_dora=true")), ("sdxl", ("adapter.alpha=2", "adapter.use_dora=true"))]


@pytest.mark.parametrize("family,overrides", CASES, ids=lambda v: v if isinstance(v, str) else "-".join(v) or "rank")
def test_the_default_export_loads_exactly_in_diffusers_and_comfyui(tmp_path, family, overrides):
    module, folder = trained(tmp_path, family, *overrides)
    expected = expected_weights(module, family)
    fused = diffusers_fused(folder, family)
    assert_same(fused, expected, expected)
    dora = any("use_dora=true" in o for o in overrides)
    comfy_file = folder / ("pytorch_lora_weights_comfyui.safetensors" if dora else "pytorch_lora_weights.safetensors")
    patched, not_loaded = comfy_applied(comfy_file, family)
    assert not_loaded == []
    assert set(patched) == set(expected)
    assert_same(patched, fused, expected)


@pytest.mark.parametrize("preset", FLUX_PRESETS)
def test_every_flux_preset_loads_in_comfyui_with_alpha_off_rank(tmp_path, preset):
    deep = dict(num_single_layers=21)  # the tiny/nano presets name single blocks 7 and 20
    module, folder = trained(tmp_path, "flux", f"adapter.target={preset}", "adapter.alpha=2", **deep)
    patched, not_loaded = comfy_applied(folder / "pytorch_lora_weights.safetensors", "flux", **deep)
    expected = expected_weights(module, "flux", **deep)
    assert not_loaded == [] and set(patched) == set(expected)
    assert_same(patched, expected, expected)


@pytest.mark.parametrize("family", ["flux", "sdxl"])
def test_lokr_files_load_in_comfyui_as_the_trained_delta(tmp_path, family):
    extra = ("adapter.lycoris.target_module=[Attention]",) if family == "sdxl" else ()
    module, folder = trained(tmp_path, family, "adapter=lokr", *extra)
    tensors = load_file(folder / "pytorch_lokr_weights.safetensors")
    patched, not_loaded = comfy_applied(folder / "pytorch_lokr_weights.safetensors", family)
    assert not_loaded == [] and patched
    base = base_components(family)[denoiser_name(family)].state_dict()
    for name, weight in patched.items():
        stem = "lycoris_" + name[: -len(".weight")].replace(".", "_")
        delta = torch.kron(tensors[f"{stem}.lokr_w1"].double(), tensors[f"{stem}.lokr_w2"].double())
        torch.testing.assert_close(weight, (base[name].double() + delta).float(), rtol=2e-5, atol=2e-6)
    modules = {k.split(".")[0] for k in tensors if k.endswith(".lokr_w1")}
    assert len(patched) == len(modules)
    # and it is the adapter the model trained: its forward equals the patched weights' (one module)
    name = sorted(patched)[0]
    layer = module.denoiser.get_submodule(name[: -len(".weight")])
    x = torch.randn(3, layer.in_features)
    with module.inference_adapters():
        ours = layer(x)
    bias = base.get(name.replace(".weight", ".bias"))
    torch.testing.assert_close(ours, torch.nn.functional.linear(x, patched[name], bias), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,fmt", [("flux", "diffusers"), ("flux", "comfyui"), ("sdxl", "diffusers"),
                                        ("sdxl", "kohya"), ("sdxl", "comfyui")])
def test_each_export_format_loads_where_it_says(tmp_path, family, fmt):
    module, folder = trained(tmp_path, family, "adapter.alpha=2", f"adapter.export_format={fmt}")
    expected = expected_weights(module, family)
    assert_same(diffusers_fused(folder, family), expected, expected)  # diffusers reads all of them
    keys = set(load_file(folder / "pytorch_lora_weights.safetensors"))
    patched, not_loaded = comfy_applied(folder / "pytorch_lora_weights.safetensors", family)
    if fmt == "diffusers":  # diffusers' own layout: alpha only in metadata, SDXL in the new naming
        assert not any(k.endswith(".alpha") for k in keys)
        if family == "sdxl":
            assert len(not_loaded) == len(keys)  # what users see: "lora key not loaded" for every tensor
        return
    assert not_loaded == [] and set(patched) == set(expected)
    assert_same(patched, expected, expected)
    if fmt == "kohya":
        assert all(k.startswith("lora_unet_") for k in keys)


def test_dora_with_a_comfyui_only_layout_is_refused():
    from simpletuner_pl.config.checks import validate
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.models.registry import check_config

    from helpers import typed

    with pytest.raises(ConfigError, match="universal"):
        validate(typed("experiment=demo", "adapter.use_dora=true", "adapter.export_format=comfyui"))
    with pytest.raises(ConfigError, match="kohya is not available for Flux"):
        check_config(typed("experiment=demo", "adapter.export_format=kohya"))
