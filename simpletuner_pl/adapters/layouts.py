"""LoRA file layouts: one set of trained tensors, written in the key layout each loader reads exactly.

Layouts (`<p>` = the denoiser's name, `transformer` or `unet`; `<path>` = a module path under it):
- `peft`: diffusers' own file, `<p>.<path>.lora_A.weight` / `.lora_B.weight` (DoRA: `.lora_magnitude_vector`),
  alpha only in the safetensors metadata. diffusers reads it exactly; ComfyUI does not read the metadata (alpha ≠
  rank is applied at rank/alpha times the strength) and maps `unet.<path>.to_q` keys only in the old
  `.processor.to_q` naming (0 SDXL tensors applied).
- `peft+alpha`: `peft` plus a scalar `<p>.<path>.alpha` per module. ComfyUI (comfy/lora.py) maps
  `transformer.<diffusers path>` for Flux and scales by `.alpha`/rank; diffusers' Flux loader pops the `.alpha`
  tensors as network alphas. Flux's universal layout.
- `kohya`: `lora_<p>_<path, '.' → '_'>.lora_down.weight` / `.lora_up.weight` / `.alpha`. ComfyUI maps every
  diffusers UNet path this way (`unet_to_diffusers`); diffusers converts it for SDXL. SDXL's universal layout.
The alpha tensor is the real alpha: writing the rank there would silently change a LoRA trained with alpha ≠ rank.

DoRA in ComfyUI: `.dora_scale` of shape (out, 1), applied as `(W + s·BA) · dora_scale / (‖W‖_row + eps)` — the
base weight's row norm — where PEFT computes `m · (W + s·BA) / ‖W + s·BA‖_row`. So `dora_scale = m · (‖W‖_row +
eps) / ‖W + s·BA‖_row` makes ComfyUI's patched weight PEFT's merged weight; it depends on the base weights, so it
is written from the trained model (`dora_scales`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping

import torch

LORA_FILE = "pytorch_lora_weights.safetensors"
COMFYUI_FILE = "pytorch_lora_weights_comfyui.safetensors"  # DoRA: the file ComfyUI applies exactly
LAYOUTS = ("peft", "peft+alpha", "kohya")
_PEFT = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_magnitude_vector": "magnitude"}


@dataclass
class LoraTensors:
    """A LoRA as modules: `down` (A, r × in), `up` (B, out × r), `alpha` per module, DoRA's `magnitude` (out,)."""

    down: Dict[str, torch.Tensor] = field(default_factory=dict)
    up: Dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: Dict[str, float] = field(default_factory=dict)
    magnitude: Dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_peft(cls, state: Mapping[str, torch.Tensor], alpha: float) -> "LoraTensors":
        """From PEFT's `<path>.lora_A.weight` layout (no component prefix) and the adapter's alpha."""
        out = cls()
        for key, value in state.items():
            suffix = next((s for s in _PEFT if key.endswith(s)), None)
            if suffix is None:
                raise ValueError(f"{key!r} is not a LoRA tensor (lora_A, lora_B, lora_magnitude_vector)")
            getattr(out, _PEFT[suffix])[key[: -len(suffix)]] = value.detach().contiguous().cpu()
        out.alpha = {path: float(alpha) for path in out.down}
        return out

    def scale(self, path: str) -> float:
        return self.alpha[path] / self.down[path].shape[0]

    def peft_state(self) -> Dict[str, torch.Tensor]:
        """Back to PEFT's layout (no prefix): what a pipeline's `save_lora_weights` takes."""
        names = {v: k for k, v in _PEFT.items()}
        return {f"{path}{names[part]}": tensor for part in ("down", "up", "magnitude")
                for path, tensor in getattr(self, part).items()}


def to_layout(lora: LoraTensors, layout: str, prefix: str,
              dora_scale: Mapping[str, torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The file's tensors in `layout` (`dora_scale`: ComfyUI's DoRA vectors, in place of PEFT's magnitudes)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    out: Dict[str, torch.Tensor] = {}
    for path in lora.down:
        if layout == "kohya":
            name, down, up = f"lora_{prefix}_{path.replace('.', '_')}", "lora_down.weight", "lora_up.weight"
        else:
            name, down, up = f"{prefix}.{path}", "lora_A.weight", "lora_B.weight"
        out[f"{name}.{down}"], out[f"{name}.{up}"] = lora.down[path], lora.up[path]
        if layout != "peft":
            out[f"{name}.alpha"] = torch.tensor(lora.alpha[path], dtype=torch.float32)
        if dora_scale is not None and path in dora_scale:
            out[f"{name}.dora_scale"] = dora_scale[path]
        elif path in lora.magnitude:
            if layout == "kohya":
                raise ValueError("the kohya layout has no PEFT DoRA magnitudes (dora_scale needs the base weights)")
            out[f"{name}.lora_magnitude_vector"] = lora.magnitude[path]
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def dora_scale_of(weight: torch.Tensor, lora: LoraTensors, path: str) -> torch.Tensor:
    """ComfyUI's `dora_scale` (out, 1) that reproduces PEFT's DoRA weight for base `weight` (see module doc)."""
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    merged = w + lora.scale(path) * (lora.up[path].double() @ lora.down[path].double())
    eps = torch.finfo(torch.float32).eps  # ComfyUI patches in fp32 and adds its eps to the base norm
    scale = lora.magnitude[path].double() * (w.norm(dim=1) + eps) / merged.norm(dim=1)
    return scale.reshape(-1, 1).to(torch.float32)


def dora_scales(denoiser: torch.nn.Module, lora: LoraTensors) -> Dict[str, torch.Tensor]:
    """`dora_scale` of every DoRA module of the trained `denoiser`, from its (dequantised) base weights."""
    from peft.utils.integrations import dequantize_module_weight

    out = {}
    for path in lora.magnitude:
        base = denoiser.get_submodule(path).get_base_layer()
        out[path] = dora_scale_of(dequantize_module_weight(base), lora, path)
    return out
