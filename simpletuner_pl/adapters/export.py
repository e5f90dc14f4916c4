"""Adapter export formats beyond diffusers': Kohya/ComfyUI LoRA files, and full fine-tunes as diffusers folders.

Kohya layout (what A1111, Forge, ComfyUI and diffusers' `load_lora_weights` all read for SDXL):
`lora_unet_<module path with '.' → '_'>.lora_down.weight` (= PEFT lora_A), `.lora_up.weight` (= lora_B) and a
scalar `.alpha` per module, with the module path in diffusers naming (SimpleTuner's `--lora_format comfyui`).
The alpha tensor is the real LoRA alpha: loaders scale by alpha/rank, so writing the rank there (diffusers'
`convert_state_dict_to_kohya` does) would silently change the strength of any LoRA trained with alpha ≠ rank.
DoRA is not exported this way: diffusers drops Kohya `dora_scale` tensors on load, so no round trip could check it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
_SUFFIXES = {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight"}


def to_kohya(state: Dict[str, torch.Tensor], alpha: float, prefix: str = "unet") -> Dict[str, torch.Tensor]:
    """PEFT/diffusers adapter tensors (`<module>.lora_A.weight`, no component prefix) → Kohya keys with alphas."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"cannot export {key!r} in Kohya format (only plain LoRA tensors have a Kohya name)")
        name = f"lora_{prefix}_" + key[: -len(suffix)].replace(".", "_")
        kind = _SUFFIXES[suffix]
        out[f"{name}.{kind}"] = value
        if kind == "lora_down.weight":
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_kohya(state: Dict[str, torch.Tensor], alpha: float, path: Path, prefix: str = "unet") -> Path:
    from safetensors.torch import save_file

    tensors = to_kohya(state, alpha, prefix)
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")}
    metadata = {"ss_network_module": "networks.lora", "ss_network_alpha": str(alpha),
                "ss_network_dim": str(max(ranks)) if ranks else "0"}
    save_file(tensors, str(path), metadata=metadata)
    return path


def save_diffusers_lora(pipeline_cls, directory: Path, denoiser_name: str, state: Dict[str, torch.Tensor],
                        metadata: dict) -> None:
    """The family pipeline's own LoRA writer (`<Pipeline>.save_lora_weights`), so its loader reads it back."""
    pipeline_cls.save_lora_weights(directory, **{f"{denoiser_name}_lora_layers": state,
                                                 f"{denoiser_name}_lora_adapter_metadata": metadata})


def save_full(model: torch.nn.Module, directory: Path) -> Path:
    """A fully fine-tuned denoiser as a diffusers folder: `from_pretrained(directory)` loads it back."""
    model.save_pretrained(directory, safe_serialization=True)
    return directory
