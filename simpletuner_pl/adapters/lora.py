"""PEFT LoRA/DoRA on the denoiser: target presets, init schemes, and a portable export.

Which names `adapter.target` may take is the family's `LoraTargets` (`simpletuner_pl.config.registries`); they are
checked against the model here, so a block the model lacks fails with a clear message. PiSSA/OLoRA rewrite the base
weights; `attach_lora` returns the initial (A0, B0) so the export can be a plain LoRA on the *original* base.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from simpletuner_pl.config.registries import LORA_INITS, REWRITES_BASE, LoraTargets
from simpletuner_pl.config.schema import AdapterConfig
from simpletuner_pl.errors import ConfigError

InitState = Optional[Dict[str, torch.Tensor]]


def alpha_of(adapter_cfg: AdapterConfig) -> float:
    return adapter_cfg.alpha if adapter_cfg.alpha is not None else adapter_cfg.rank


def lora_config(adapter_cfg: AdapterConfig, target_modules: List[str]):
    from peft import LoftQConfig, LoraConfig

    extra = {"loftq_config": LoftQConfig(loftq_bits=4)} if adapter_cfg.init == "loftq" else {}
    return LoraConfig(r=adapter_cfg.rank, lora_alpha=alpha_of(adapter_cfg), lora_dropout=adapter_cfg.dropout,
                      init_lora_weights=LORA_INITS[adapter_cfg.init], use_dora=adapter_cfg.use_dora,
                      target_modules=target_modules, **extra)


def _matches(names, target: str) -> bool:
    return any(n == target or n.endswith("." + target) for n in names)


def resolve_targets(model: torch.nn.Module, value: Optional[str], targets: LoraTargets) -> List[str]:
    """The module names to wrap for `adapter.target=value`, checked against `model`."""
    modules = list(targets.modules(value))
    shown = value or targets.default
    names = {name for name, _ in model.named_modules()}
    if shown in targets.exact:
        missing = [t for t in modules if t not in names]
        if missing:
            singles = len(getattr(model, "single_transformer_blocks", []))
            raise ConfigError(f"adapter.target={shown} trains {', '.join(modules)}, but this {type(model).__name__} "
                              f"has no {', '.join(missing)} (it has {singles} single blocks). Use another preset, "
                              "e.g. adapter.target=all.")
    elif targets.free_form:
        missing = [t for t in modules if not _matches(names, t)]
        if missing or not modules:
            raise ConfigError(f"adapter.target={shown}: {', '.join(missing) or 'no name'} matches no module of "
                              f"{type(model).__name__}; the default is {targets.default}")
    elif not any(_matches(names, t) for t in modules):
        raise ConfigError(f"adapter.target={shown} matches no module of {type(model).__name__}")
    return modules


def attach_lora(model: torch.nn.Module, adapter_cfg: AdapterConfig, target_modules: List[str]) -> InitState:
    """Inject the trainable adapter, its weights in fp32 whatever the base dtype (stable updates). Returns the
    initial adapter tensors when the init rewrote the base weights (PiSSA/OLoRA), else None."""
    from diffusers.training_utils import cast_training_params

    model.add_adapter(lora_config(adapter_cfg, target_modules))
    cast_training_params(model, dtype=torch.float32)
    if adapter_cfg.init not in REWRITES_BASE:
        return None
    # W was rewritten to W - B0A0; the export ΔW = BA - B0A0 = [B | -B0] [A ; A0] (rank 2r, alpha 2α keeps the scale)
    return {k: v.detach().cpu().clone() for k, v in adapter_state_dict(model).items()}


def adapter_state_dict(model: torch.nn.Module, init_state: InitState = None) -> Dict[str, torch.Tensor]:
    """Adapter tensors without PEFT's adapter name, in diffusers' `<module>.lora_A.weight` layout; with the
    `init_state` of a base-rewriting init, the equivalent rank-2r LoRA on the original base."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    if init_state is None:
        return state
    out = {}
    for key, value in state.items():
        if ".lora_A." in key:
            out[key] = torch.cat([value, init_state[key].to(value)], dim=0)
        elif ".lora_B." in key:
            out[key] = torch.cat([value, -init_state[key].to(value)], dim=1)
        else:
            out[key] = value
    return out


def adapter_metadata(model: torch.nn.Module, init_state: InitState = None) -> dict:
    """The LoraConfig as diffusers stores it in safetensors metadata, so loaders recover alpha and targets."""
    config = model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # Dropout regularises training only; diffusers re-creates it from this metadata and leaves the injected layers
    # in train mode, so a non-zero value here would make every inference with the LoRA random.
    config["lora_dropout"] = 0.0
    if init_state is not None:
        config.update(r=2 * config["r"], lora_alpha=2 * config["lora_alpha"], init_lora_weights=True)
    return config
