"""PEFT LoRA/DoRA on the denoiser: SimpleTuner's Flux target presets, init schemes, and a portable export.

PEFT matches a target name against the end of each module path, so `to_q` hits double- and single-stream
attention alike and `proj_out` also hits the final output projection, exactly as SimpleTuner's presets do.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from simpletuner_pl.errors import ConfigError

_FLUX_ALL = ["to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "add_k_proj", "add_q_proj", "add_v_proj",
             "to_out.0", "to_add_out"]
_FLUX_CONTEXT = ["add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj", "to_add_out"]
_FLUX_FFS = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]

FLUX_TARGET_PRESETS: Dict[str, List[str]] = {
    "mmdit": ["to_k", "to_q", "to_v", "to_out.0", "to_qkv"],
    "all": _FLUX_ALL,
    "all+ffs": _FLUX_ALL + _FLUX_FFS,
    "context": _FLUX_CONTEXT,
    "context+ffs": _FLUX_CONTEXT + ["ff_context.net.0.proj", "ff_context.net.2"],
    # TheLastBen's one/two-layer recipes name exact modules; they need a full-depth (38 single block) transformer.
    "tiny": ["single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"],
    "nano": ["single_transformer_blocks.7.proj_out"],
}
_EXACT_PRESETS = ("tiny", "nano")
# SDXL: every self- (attn1) and cross-attention (attn2) projection of the UNet's transformer blocks (SimpleTuner's
# DEFAULT_LORA_TARGET); `adapter.target` may name other modules as a comma-separated list.
SDXL_TARGETS: List[str] = ["to_k", "to_q", "to_v", "to_out.0"]
DEFAULT_TARGETS = {"flux": "all", "sdxl": ",".join(SDXL_TARGETS)}
_INIT = {"default": True, "gaussian": "gaussian", "olora": "olora", "pissa": "pissa", "loftq": "loftq"}


def lora_config(adapter_cfg, target_modules: List[str]):
    from peft import LoftQConfig, LoraConfig

    extra = {"loftq_config": LoftQConfig(loftq_bits=4)} if adapter_cfg.init == "loftq" else {}
    return LoraConfig(
        r=adapter_cfg.rank,
        lora_alpha=adapter_cfg.alpha if adapter_cfg.alpha is not None else adapter_cfg.rank,
        lora_dropout=adapter_cfg.dropout,
        init_lora_weights=_INIT[adapter_cfg.init],
        use_dora=adapter_cfg.use_dora,
        target_modules=target_modules,
        **extra,
    )


def resolve_targets(model: torch.nn.Module, preset: Optional[str], family: str = "flux") -> List[str]:
    """The module names to wrap, checked against the model so a missing block fails with a clear message.

    Flux takes a preset name; other families a comma-separated list of module-name suffixes (null = default)."""
    preset = preset or DEFAULT_TARGETS[family]
    names = {name for name, _ in model.named_modules()}
    if family != "flux":
        targets = [t.strip() for t in preset.split(",") if t.strip()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing or not targets:
            raise ConfigError(f"adapter.target={preset}: {', '.join(missing) or 'no name'} matches no module of "
                              f"{type(model).__name__}; the default is {DEFAULT_TARGETS[family]}")
        return targets
    targets = FLUX_TARGET_PRESETS[preset]
    if preset in _EXACT_PRESETS:
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(
                f"adapter.target={preset} trains {', '.join(targets)}, but this transformer has no {', '.join(missing)} "
                f"(it has {len(getattr(model, 'single_transformer_blocks', []))} single blocks). "
                "Use another preset, e.g. adapter.target=all."
            )
    elif not any(n == t or n.endswith("." + t) for n in names for t in targets):
        raise ConfigError(f"adapter.target={preset} matches no module of {type(model).__name__}")
    return targets


def attach_lora(model: torch.nn.Module, adapter_cfg, target_modules: List[str]) -> None:
    """Inject the trainable adapter; its weights are kept in fp32 whatever the base dtype (stable updates)."""
    from diffusers.training_utils import cast_training_params

    if adapter_cfg.use_dora and adapter_cfg.init in ("pissa", "olora"):
        raise ConfigError(f"adapter.use_dora=true cannot be combined with adapter.init={adapter_cfg.init}")
    model.add_adapter(lora_config(adapter_cfg, target_modules))
    cast_training_params(model, dtype=torch.float32)
    if adapter_cfg.init in ("pissa", "olora"):
        # These inits rewrite the base weights to W - BA; remember (A0, B0) so the export is a plain LoRA
        # on the *original* base: ΔW = BA - B0A0 = [B | -B0] [A ; A0] (rank 2r, alpha 2α keeps the scale).
        model._lora_init_state = {k: v.detach().cpu().clone() for k, v in adapter_state_dict(model, raw=True).items()}


def adapter_state_dict(model: torch.nn.Module, raw: bool = False) -> Dict[str, torch.Tensor]:
    """Adapter tensors without PEFT's adapter name, in diffusers' `<module>.lora_A.weight` layout."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    init = getattr(model, "_lora_init_state", None)
    if raw or init is None:
        return state
    out = {}
    for key, value in state.items():
        if ".lora_A." in key:
            out[key] = torch.cat([value, init[key].to(value)], dim=0)
        elif ".lora_B." in key:
            out[key] = torch.cat([value, -init[key].to(value)], dim=1)
        else:
            out[key] = value
    return out


def adapter_metadata(model: torch.nn.Module, adapter_cfg) -> dict:
    """The LoraConfig as diffusers stores it in safetensors metadata, so loaders recover alpha and targets."""
    config = model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # Dropout regularises training only; diffusers re-creates it from this metadata and leaves the injected layers
    # in train mode, so a non-zero value here would make every inference with the LoRA random.
    config["lora_dropout"] = 0.0
    if getattr(model, "_lora_init_state", None) is not None:
        config.update(r=2 * config["r"], lora_alpha=2 * config["lora_alpha"], init_lora_weights=True)
    return config
