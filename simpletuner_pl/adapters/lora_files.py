"""Reading a LoRA file of any trainer into `LoraTensors`: ours, SimpleTuner's, ai-toolkit's, Kohya's, ComfyUI's.

diffusers' `lora_state_dict` already converts the layouts of the other trainers (Kohya sd-scripts, ai-toolkit,
XLabs, OneTrainer, …) to its own; this adds what a converter must not do silently: keys it does not recognise are
refused with their names (a converted file missing them would load as a different LoRA), and the adapters diffusers
cannot convert exactly (DoRA, whose ComfyUI form depends on the base weights; LyCORIS) are refused with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from simpletuner_pl.adapters.layouts import LoraTensors
from simpletuner_pl.errors import ConfigError

_LORA_KEY = re.compile(
    r"^(?:(?:transformer|unet|diffusion_model|base_model\.model)\.|lora_(?:unet|transformer)_).+"
    r"(?:\.lora_[AB]\.weight|\.lora_(?:up|down)\.weight|\.alpha|_lora\.(?:up|down)\.weight|\.lora\.(?:up|down)\.weight)$")


def _listed(keys: List[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def guess_family(keys, block_names: Mapping[str, Tuple[str, ...]]) -> Optional[str]:
    """The family (of `block_names`: family → names only its files contain) the keys belong to, or None."""
    found = [name for name, hints in block_names.items() if any(h in k for k in keys for h in hints)]
    return found[0] if len(found) == 1 else None


def check_keys(tensors: Dict[str, torch.Tensor], where: str) -> None:
    """Refuse what a LoRA converter would drop or get wrong, naming the keys."""
    keys = sorted(tensors)
    if any(".lokr_" in k or k.startswith("lycoris_") for k in keys):
        raise ConfigError(f"{where} is a LyCORIS (LoKr) file: ComfyUI reads it as it is, and diffusers through "
                          "simpletuner_pl.adapters.lokr.load_lokr_weights; there is nothing to convert")
    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in keys):
        raise ConfigError(f"{where} is a DoRA adapter: its ComfyUI form depends on the base model's weights, so it "
                          "cannot be converted from the file alone; export it from the run with "
                          "adapter.export_format=universal (which writes both forms)")
    text = [k for k in keys if k.startswith(("lora_te", "text_encoder", "te_", "te1", "te2"))]
    if text:
        raise ConfigError(f"{where} holds text-encoder LoRA tensors, which this project neither trains nor "
                          f"converts: {_listed(text)}")
    unknown = [k for k in keys if not _LORA_KEY.match(k)]
    if unknown:
        raise ConfigError(f"{where} has tensors that are not LoRA weights of a known layout: {_listed(unknown)}")


def read_lora(path: Path, pipeline_cls, prefix: str) -> LoraTensors:
    """The file's LoRA as modules of the denoiser (`prefix`: its name), through the pipeline's own converters."""
    from safetensors.torch import load_file

    check_keys(load_file(str(path)), str(path))
    state, alphas, metadata = pipeline_cls.lora_state_dict(str(path.parent), weight_name=path.name,
                                                           return_alphas=True, return_lora_metadata=True)
    foreign = sorted(k for k in state if not k.startswith(f"{prefix}."))
    if foreign:
        raise ConfigError(f"{path}: {_listed(foreign)} are not {prefix} LoRA weights")
    own = {k[len(prefix) + 1:]: v for k, v in state.items()}
    lora = LoraTensors.from_peft(peft_names(own), alpha=0.0)
    alphas = _module_alphas(alphas or {}, prefix)
    metadata = metadata or {}
    default = metadata.get(f"{prefix}.lora_alpha", metadata.get("lora_alpha"))
    pattern = metadata.get(f"{prefix}.alpha_pattern") or {}
    for module, down in lora.down.items():
        matched = next((v for k, v in pattern.items() if module == k or module.endswith(f".{k}")), None)
        alpha = alphas.get(module, matched if matched is not None else default)
        lora.alpha[module] = float(alpha if alpha is not None else down.shape[0])
    return lora


def peft_names(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """diffusers' converters may answer in the old attention-processor naming; PEFT's `<module>.lora_A.weight`."""
    if state and not any(".lora_A." in k for k in state):
        from diffusers.utils import convert_unet_state_dict_to_peft

        return convert_unet_state_dict_to_peft(state)
    return state


def _module_alphas(alphas: Dict[str, object], prefix: str) -> Dict[str, float]:
    """Network alphas by module path, from `<module>.alpha` or the old naming's `<…>.to_q_lora.down.weight.alpha`."""
    out = {}
    for key, value in alphas.items():
        key = key[len(prefix) + 1:] if key.startswith(f"{prefix}.") else key
        stem = key[: -len(".alpha")]
        if stem.endswith("down.weight"):
            stem = next(iter(peft_names({stem: torch.zeros(0)})))[: -len(".lora_A.weight")]
        out[stem] = float(value)
    return out
