"""`adapter.init_lora`: start training from an existing adapter file (SimpleTuner's "train `context+ffs`, then
continue with `--init_lora`").

A LoRA file in any layout the family pipeline's `load_lora_weights` reads (diffusers/PEFT keys, Kohya/ComfyUI
`lora_unet_…`/`.alpha` keys, and the other trainers' layouts diffusers converts) is loaded the way that loader
reads it, as a temporary PEFT adapter, then copied into the trained adapter so that each module's ΔW is the file's:
B is rescaled by the file's alpha/rank over ours. Modules of the file the configured targets lack, and rank
mismatches, are refused with their names (the file would be partly dropped); targeted modules the file lacks keep
their fresh initialisation (a wider target set than the file's, as in the workflow above). A LoKr file for
`adapter=lokr` must match the configured LoKr module for module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

from simpletuner_pl.adapters.switch import adapter_disabled
from simpletuner_pl.errors import ConfigError

TEMPORARY = "init_lora"
TRAINED = "default"


def lora_file(location: str) -> Path:
    """The file of `adapter.init_lora`: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise ConfigError(f"adapter.init_lora={location}: there is no LoRA file {path}")
    return path


def _names(items: List[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_initial_lora(denoiser: nn.Module, pipeline_cls, location: str, prefix: str) -> int:
    """Copy the LoRA file at `location` into the denoiser's trained adapter; returns how many modules it set."""
    path = lora_file(location)
    try:
        state, alphas, metadata = pipeline_cls.lora_state_dict(str(path.parent), weight_name=path.name,
                                                               return_alphas=True, return_lora_metadata=True)
        modules = file_modules(state, prefix, location)
        with adapter_disabled(denoiser, keep=[TRAINED]):  # its flags come back; loading adds an adapter
            denoiser.load_lora_adapter(state, prefix=prefix, network_alphas=alphas, metadata=metadata,
                                       adapter_name=TEMPORARY)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(f"adapter.init_lora={location}: cannot read it as a LoRA of this model ({err})") from None
    try:
        copied = _copy_into_trained(denoiser, location)
    finally:
        if TEMPORARY in getattr(denoiser, "peft_config", {}):
            denoiser.delete_adapters(TEMPORARY)
    missing = sorted(modules - copied)
    if missing:
        raise ConfigError(f"adapter.init_lora={location} holds LoRA weights for module(s) this model does not have: "
                          f"{_names(missing)}")
    return len(copied)


def file_modules(state: Dict[str, torch.Tensor], prefix: str, location: str) -> set:
    """The denoiser modules a (diffusers-converted) LoRA state dict adapts; keys for anything else are refused."""
    foreign = sorted(k for k in state if not k.startswith(f"{prefix}."))
    if foreign:
        raise ConfigError(f"adapter.init_lora={location} has tensors that are not {prefix} LoRA weights (only the "
                          f"{prefix} is trained here): {_names(foreign)}")
    from simpletuner_pl.adapters.lora_files import peft_names

    own = peft_names({k[len(prefix) + 1:]: v for k, v in state.items()})
    modules = {k.split(".lora_A.")[0] for k in own if ".lora_A." in k}
    if not modules:
        raise ConfigError(f"adapter.init_lora={location} holds no LoRA weights ({_names(sorted(state))})")
    return modules


def _copy_into_trained(denoiser: nn.Module, location: str) -> set:
    from peft.tuners.lora import LoraLayer

    layers: Dict[str, LoraLayer] = {n: m for n, m in denoiser.named_modules()
                                    if isinstance(m, LoraLayer) and TEMPORARY in m.lora_A}
    untargeted = sorted(n for n, m in layers.items() if TRAINED not in m.lora_A)
    if untargeted:
        raise ConfigError(f"adapter.init_lora={location} trains module(s) the configured adapter.target does not: "
                          f"{_names(untargeted)}; widen adapter.target to include them")
    ranks = sorted(f"{n} (file {m.r[TEMPORARY]}, adapter.rank {m.r[TRAINED]})" for n, m in layers.items()
                   if m.r[TEMPORARY] != m.r[TRAINED])
    if ranks:
        raise ConfigError(f"adapter.init_lora={location} has another rank than the adapter: {_names(ranks)}; set "
                          "adapter.rank to the file's")
    with torch.no_grad():
        for layer in layers.values():
            ratio = layer.scaling[TEMPORARY] / layer.scaling[TRAINED]  # the same ΔW = scale·B·A as the file
            layer.lora_A[TRAINED].weight.copy_(layer.lora_A[TEMPORARY].weight)
            layer.lora_B[TRAINED].weight.copy_(layer.lora_B[TEMPORARY].weight * ratio)
            magnitudes = getattr(layer, "lora_magnitude_vector", {})
            if TEMPORARY in magnitudes and TRAINED in magnitudes:
                magnitudes[TRAINED].weight.copy_(magnitudes[TEMPORARY].weight)
    return set(layers)


def load_initial_lokr(network: nn.Module, location: str) -> int:
    """Load a LyCORIS LoKr file into the trained LoKr `network` (same modules and factor shapes)."""
    from simpletuner_pl.adapters.lokr import read_lokr

    path = Path(location).expanduser()
    if path.is_dir():
        path = path / "pytorch_lokr_weights.safetensors"
    if not path.is_file():
        raise ConfigError(f"adapter.init_lora={location}: there is no LoKr file {path}")
    state, _ = read_lokr(path)
    own = network.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        problems = [f"{label}: {_names(keys)}" for label, keys in (("not in the file", missing),
                    ("not in the adapter", extra), ("another shape", shapes)) if keys]
        raise ConfigError(f"adapter.init_lora={location} does not match the configured LoKr ("
                          + "; ".join(problems) + "); use the adapter.lycoris settings it was trained with")
    network.load_state_dict({k: v.to(own[k]) for k, v in state.items()})
    return len(state)
