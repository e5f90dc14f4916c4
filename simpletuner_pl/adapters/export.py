"""Writing the trained adapter: LoRA files in the layout `adapter.export_format` names (`layouts`), and full
fine-tunes as diffusers folders.

`export_format` → layout of `pytorch_lora_weights.safetensors` is the family's (`FamilySpec.export_formats`):
`universal` (default) is the layout both diffusers' `load_lora_weights` and ComfyUI's LoRA loader apply exactly
(Flux `peft+alpha`, SDXL `kohya`); `diffusers` is diffusers' own writer; `kohya`/`comfyui` name the layout those
tools read. A DoRA adapter's magnitudes only have one exact reading in diffusers (PEFT's `lora_magnitude_vector`),
so `universal` writes that file and, beside it, `pytorch_lora_weights_comfyui.safetensors` with ComfyUI's
`dora_scale` (computed from the base weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Mapping

import torch

from simpletuner_pl.adapters.layouts import COMFYUI_FILE, LORA_FILE, LoraTensors, to_layout


def kohya_metadata(lora: LoraTensors) -> Dict[str, str]:
    ranks = {v.shape[0] for v in lora.down.values()}
    alphas = set(lora.alpha.values())
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks, default=0)),
            "ss_network_alpha": str(alphas.pop() if len(alphas) == 1 else "per-module")}


def save_layout(directory: Path, lora: LoraTensors, layout: str, prefix: str, pipeline_cls, metadata: dict) -> Path:
    """`directory/pytorch_lora_weights.safetensors` in `layout`; `metadata`: the LoraConfig diffusers stores."""
    from safetensors.torch import save_file

    tensors = to_layout(lora, layout, prefix)
    if layout == "peft":  # diffusers' own writer, so its metadata (alpha, targets, DoRA) is what its loader expects
        save_diffusers_lora(pipeline_cls, directory, prefix, {k[len(prefix) + 1:]: v for k, v in tensors.items()},
                            metadata)
    else:  # alpha travels as tensors (diffusers refuses them next to its metadata: it infers the rest)
        save_file(tensors, str(directory / LORA_FILE), metadata={"format": "pt", **kohya_metadata(lora)})
    return directory / LORA_FILE


def write_lora(directory: Path, export_format: str, layouts: Mapping[str, str], pipeline_cls, prefix: str,
               state: Dict[str, torch.Tensor], metadata: dict,
               dora_scales: Callable[[LoraTensors], Dict[str, torch.Tensor]]) -> List[Path]:
    """The adapter's LoRA file(s) in `directory`; returns their paths (the loadable one first)."""
    from safetensors.torch import save_file

    lora = LoraTensors.from_peft(state, metadata["lora_alpha"])
    layout = layouts[export_format]
    if lora.magnitude:  # PEFT's magnitudes (with diffusers' metadata) are the only DoRA diffusers reads exactly
        layout = "peft"
    written = [save_layout(directory, lora, layout, prefix, pipeline_cls, metadata)]
    if lora.magnitude and export_format == "universal":
        comfy = to_layout(lora, layouts["comfyui"], prefix, dora_scale=dora_scales(lora))
        save_file(comfy, str(directory / COMFYUI_FILE), metadata={"format": "pt", "dora": "comfyui"})
        written.append(directory / COMFYUI_FILE)
    return written


def save_diffusers_lora(pipeline_cls, directory: Path, denoiser_name: str, state: Dict[str, torch.Tensor],
                        metadata: dict) -> None:
    """The family pipeline's own LoRA writer (`<Pipeline>.save_lora_weights`), so its loader reads it back."""
    pipeline_cls.save_lora_weights(directory, **{f"{denoiser_name}_lora_layers": state,
                                                 f"{denoiser_name}_lora_adapter_metadata": metadata})


def save_full(model: torch.nn.Module, directory: Path) -> Path:
    """A fully fine-tuned denoiser as a diffusers folder: `from_pretrained(directory)` loads it back. A folder without
    its weights (seen once under FSDP: `save_pretrained` wrote only config.json) is an error, not an export."""
    model.save_pretrained(directory, safe_serialization=True)
    if not any(Path(directory).glob("*.safetensors")):
        raise RuntimeError(f"saving the fine-tuned {type(model).__name__} to {directory} wrote no weights file")
    return directory
