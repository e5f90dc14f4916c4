"""`python -m simpletuner_pl.tools.convert_lora`: a LoRA moved between layouts keeps its exact weights in the
loaders of the target layout, and keys it does not know are refused by name."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run_cli
from lora_checks import assert_same, comfy_applied, diffusers_fused, expected_weights, trained


def test_sdxl_kohya_to_diffusers_and_comfyui(tmp_path):
    from simpletuner_pl.tools.convert_lora import convert

    module, folder = trained(tmp_path, "sdxl", "adapter.alpha=2", "adapter.export_format=kohya")
    expected = expected_weights(module, "sdxl")
    plain = convert(folder, tmp_path / "as_diffusers", "diffusers")
    assert all(k.startswith("unet.") and ".alpha" not in k for k in load_file(plain))
    assert_same(diffusers_fused(plain.parent, "sdxl"), expected, expected)
    comfy = convert(plain, tmp_path / "comfy.safetensors", "comfyui")
    patched, not_loaded = comfy_applied(comfy, "sdxl")
    assert not_loaded == [] and set(patched) == set(expected)
    assert_same(patched, expected, expected)


def test_flux_diffusers_file_with_alpha_off_rank_becomes_universal(tmp_path):
    from simpletuner_pl.tools.convert_lora import convert

    module, folder = trained(tmp_path, "flux", "adapter.alpha=2", "adapter.export_format=diffusers")
    expected = expected_weights(module, "flux")
    patched, _ = comfy_applied(folder / "pytorch_lora_weights.safetensors", "flux")
    assert any(not torch.allclose(patched[k], expected[k]) for k in expected)  # ComfyUI misses the metadata alpha
    universal = convert(folder, tmp_path / "universal", "universal")
    patched, not_loaded = comfy_applied(universal, "flux")
    assert not_loaded == []
    assert_same(patched, expected, expected)
    assert_same(diffusers_fused(universal.parent, "flux"), expected, expected)


def test_an_ai_toolkit_style_file_without_alpha_converts_at_scale_one(tmp_path):
    """ai-toolkit writes diffusers keys with neither metadata nor alpha: ΔW = B·A."""
    from simpletuner_pl.tools.convert_lora import convert

    module, _ = trained(tmp_path, "flux")  # alpha = rank: ΔW = B·A, the same as the file states it
    state = {f"transformer.{k}": v.contiguous() for k, v in module.adapter_state_dict().items()}
    save_file(state, str(tmp_path / "aitk.safetensors"))
    out = convert(tmp_path / "aitk.safetensors", tmp_path / "out.safetensors", "comfyui")
    patched, not_loaded = comfy_applied(out, "flux")
    expected = expected_weights(module, "flux")
    assert not_loaded == [] and set(patched) == set(expected)
    assert_same(patched, expected, expected)


@pytest.mark.parametrize("extra, message", [
    ({"transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": torch.ones(32)}, "DoRA"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)}, "text-encoder"),
    ({"transformer.transformer_blocks.0.attn.to_q.hada_w1_a": torch.zeros(4, 4)}, "hada_w1_a"),
])
def test_what_a_converter_would_drop_is_refused_by_name(tmp_path, extra, message):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.tools.convert_lora import convert

    module, _ = trained(tmp_path, "flux")
    state = {f"transformer.{k}": v.contiguous() for k, v in module.adapter_state_dict().items()}
    save_file({**state, **extra}, str(tmp_path / "in.safetensors"))
    with pytest.raises(ConfigError, match=message):
        convert(tmp_path / "in.safetensors", tmp_path / "out.safetensors", "comfyui")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_command_line(tmp_path):
    _, folder = trained(tmp_path, "sdxl")
    result = run_cli(str(folder), str(tmp_path / "x.safetensors"), "--to", "diffusers",
                     module="simpletuner_pl.tools.convert_lora")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout and (tmp_path / "x.safetensors").is_file()
    refused = run_cli(str(folder), str(tmp_path / "y.safetensors"), "--to", "kohya", "--family", "flux",
                      module="simpletuner_pl.tools.convert_lora")
    assert refused.returncode == 2 and "kohya is not available for Flux" in refused.stderr
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    broken = run_cli(str(tmp_path / "bad.safetensors"), str(tmp_path / "z.safetensors"),
                     module="simpletuner_pl.tools.convert_lora")
    assert broken.returncode == 2 and "is not a readable .safetensors file" in broken.stderr
    assert "Traceback" not in broken.stderr
