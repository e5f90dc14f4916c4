"""How exactly each exported LoRA file loads in diffusers and in ComfyUI's loader, per family and adapter type.

    python experiments/lora_interop.py

For each case: tensors in the file ComfyUI is given, keys it leaves out, and the largest difference between the
weight ComfyUI patches and the one diffusers fuses, relative to the largest |ΔW|; then what the layouts this
replaced did (diffusers' layout in ComfyUI; DoRA magnitudes renamed to dora_scale). Uses the test suite's tiny
models and its re-statement of ComfyUI's loader (tests/comfy_reference.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch
from safetensors.torch import load_file, save_file

from lora_checks import base_components, comfy_applied, denoiser_name, diffusers_fused, trained

CASES = [("flux", "LoRA α=rank", ()), ("flux", "LoRA α=rank/2", ("adapter.alpha=2",)),
         ("flux", "DoRA α=rank/2", ("adapter.alpha=2", "adapter.use_dora=true")),
         ("sdxl", "LoRA α=rank", ()), ("sdxl", "LoRA α=rank/8", ("adapter.alpha=2",)),
         ("sdxl", "DoRA α=rank/8", ("adapter.alpha=2", "adapter.use_dora=true"))]


def relative(patched: dict, fused: dict, base: dict) -> float:
    delta = max(float((fused[k] - base[k]).abs().max()) for k in patched)
    return max(float((patched[k] - fused[k]).abs().max()) for k in patched) / delta


def renamed_magnitudes(folder: Path, tmp: Path, family: str) -> Path:
    """The ComfyUI file with PEFT's magnitudes copied in as `dora_scale` (what a plain key rename gives)."""
    comfy = load_file(folder / "pytorch_lora_weights_comfyui.safetensors")
    for key, magnitude in load_file(folder / "pytorch_lora_weights.safetensors").items():
        if key.endswith(".lora_magnitude_vector"):
            prefix, _, path = key[: -len(".lora_magnitude_vector")].partition(".")
            stem = f"transformer.{path}" if family == "flux" else f"lora_unet_{path.replace('.', '_')}"
            comfy[f"{stem}.dora_scale"] = magnitude.reshape(-1, 1)
    save_file(comfy, str(tmp / "renamed.safetensors"))
    return tmp / "renamed.safetensors"


def main() -> None:
    print("| family | adapter | file for ComfyUI | tensors | not loaded | max Δ ComfyUI vs diffusers / max |ΔW| |")
    print("|---|---|---|---|---|---|")
    for family, label, overrides in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            _, folder = trained(Path(tmp), family, *overrides)
            name = "pytorch_lora_weights_comfyui.safetensors" if "DoRA" in label else "pytorch_lora_weights.safetensors"
            base = base_components(family)[denoiser_name(family)].state_dict()
            fused = diffusers_fused(folder, family)
            patched, missed = comfy_applied(folder / name, family)
            print(f"| {family} | {label} | `{name}` | {len(load_file(folder / name))} | {len(missed)} | "
                  f"{relative(patched, fused, base):.1e} |")
            if "DoRA" in label:
                wrong, _ = comfy_applied(renamed_magnitudes(folder, Path(tmp), family), family)
                print(f"| {family} | {label}, magnitudes renamed | (old way) | | | "
                      f"{relative(wrong, fused, base):.1e} |")
    for family in ("flux", "sdxl"):
        with tempfile.TemporaryDirectory() as tmp:
            _, folder = trained(Path(tmp), family, "adapter.alpha=2", "adapter.export_format=diffusers")
            base = base_components(family)[denoiser_name(family)].state_dict()
            fused = diffusers_fused(folder, family)
            patched, missed = comfy_applied(folder / "pytorch_lora_weights.safetensors", family)
            error = f"{relative(patched, fused, base):.1e}" if patched else "nothing applied"
            tensors = len(load_file(folder / "pytorch_lora_weights.safetensors"))
            print(f"| {family} | LoRA α≠rank, export_format=diffusers (old default) | "
                  f"`pytorch_lora_weights.safetensors` | {tensors} | {len(missed)} | {error} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
