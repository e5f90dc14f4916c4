"""Shared by the LoRA interop tests: trained tiny adapters, the weights they mean, and what each loader makes of
their files (diffusers' `load_lora_weights` + `fuse_lora`, ComfyUI's loader re-stated in `comfy_reference`)."""

from pathlib import Path

import torch
from safetensors.torch import load_file

import comfy_reference
from helpers import perturb_zero_factors, tiny_module


def base_components(family: str, **denoiser) -> dict:
    if family == "flux":
        from simpletuner_pl.models.tiny_flux import build_tiny_flux_components as build
    else:
        from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components as build
    return build(**denoiser)


def denoiser_name(family: str) -> str:
    return "transformer" if family == "flux" else "unet"


def trained(tmp_path: Path, family: str, *overrides: str, **denoiser):
    """A tiny module with non-trivial adapter weights (DoRA magnitudes moved off ‖W‖), exported as configured."""
    module = tiny_module(*overrides, family=family, **denoiser)
    perturb_zero_factors(module)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for name, param in module.denoiser.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand_like(param))
    module.export_adapter(tmp_path / "adapter")
    return module, tmp_path / "adapter"


def expected_weights(module, family: str, **denoiser) -> dict:
    """W + (alpha/rank)·B·A per adapted module (DoRA: m·V/‖V‖_row), computed here from the adapter's tensors."""
    base = base_components(family, **denoiser)[denoiser_name(family)].state_dict()
    state, alpha = module.adapter_state_dict(), module.adapter_cfg.alpha or module.adapter_cfg.rank
    out = {}
    for key in state:
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[: -len(".lora_A.weight")]
        down, up = state[key].double(), state[f"{path}.lora_B.weight"].double()
        merged = base[f"{path}.weight"].double() + alpha / down.shape[0] * up @ down
        if f"{path}.lora_magnitude_vector" in state:
            magnitude = state[f"{path}.lora_magnitude_vector"].double()[:, None]
            merged = magnitude * merged / merged.norm(dim=1, keepdim=True)
        out[f"{path}.weight"] = merged.float()
    return out


def diffusers_fused(folder: Path, family: str, weight_name: str = "pytorch_lora_weights.safetensors") -> dict:
    from simpletuner_pl.models.registry import family as family_spec

    pipe = family_spec(family).pipeline_cls()(**base_components(family))
    pipe.load_lora_weights(folder, weight_name=weight_name)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return getattr(pipe, denoiser_name(family)).state_dict()


def comfy_applied(file: Path, family: str, **denoiser):
    return comfy_reference.apply(family, base_components(family, **denoiser)[denoiser_name(family)], load_file(file))


def assert_same(actual: dict, expected: dict, names) -> None:
    for name in names:
        torch.testing.assert_close(actual[name].float(), expected[name].float(), rtol=2e-5, atol=2e-6, msg=name)
