"""LyCORIS LoKr on the denoiser (SimpleTuner's `lora_type=lycoris`, `algo=lokr`): attach, save, load, toggle.

The network lives beside the model: LyCORIS swaps each targeted Linear's `forward` for its own, and the Kronecker
factors are parameters of the returned `LycorisNetwork` only (register it as a submodule of the trainer's module so
optimiser, `.to()` and checkpoints see it; the base model's `state_dict` is untouched).

Keys (LyCORIS' layout): `lycoris_<module path under the denoiser, '.' → '_'>.lokr_w1`/`.lokr_w2` (`_a`/`_b` when
low-rank) and a scalar `.alpha`, e.g. `lycoris_transformer_blocks_0_attn_to_q.lokr_w1` (Flux),
`lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lokr_w1` (SDXL). ComfyUI reads them as they
are (comfy/lora.py `model_lora_keys_unet`): `lycoris_` + each diffusers key of `comfy.utils.flux_to_diffusers` for
Flux (q/k/v as slices of the fused qkv/linear1) and of `comfy.utils.unet_to_diffusers` for SDXL (like `lora_unet_`),
paths relative to the transformer/UNet, so no conversion is needed. With `full_matrix` ComfyUI ignores `alpha` and
adds kron(w1, w2): LyCORIS' own delta (its scale is 1 then).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Mapping, Tuple, Union

from simpletuner_pl.errors import ConfigError
from simpletuner_pl.io import atomic_path

if TYPE_CHECKING:  # torch and lycoris are imported where used: LokrSettings stays importable without them
    import torch
    from lycoris import LycorisNetwork
    from torch import nn

LOKR_FILE = "pytorch_lokr_weights.safetensors"
CONFIG_KEY = "lycoris_config"  # safetensors metadata key holding the settings (SimpleTuner's convention)
PREFIX = "lycoris"
# SimpleTuner's configs name diffusers' shared `Attention` (its own Flux copy uses it); diffusers' Flux has its own
# `FluxAttention`, so without this a SimpleTuner config would silently train only the MLPs of a Flux model.
CLASS_ALIASES: Mapping[str, Tuple[str, ...]] = {"Attention": ("FluxAttention",)}


@dataclass(frozen=True)
class LokrSettings:
    """SimpleTuner's lycoris_config.json as plain values (`to_config`/`from_config` convert)."""

    algo: str = "lokr"
    multiplier: float = 1.0
    linear_dim: int = 10000  # ignored with full_matrix (both Kronecker factors are full matrices)
    linear_alpha: float = 1.0
    factor: int = 16  # the small factor's size (LyCORIS `factorization`) where module_factors names no class
    full_matrix: bool = True
    # Add the adapter's output to the base output instead of the base weight. Forced by LyCORIS on quantised
    # layers; on a bf16 base it keeps more of a still-tiny delta (rebuilding rounds W + ΔW back to W).
    bypass_mode: bool = False
    target_module: Tuple[str, ...] = ("Attention", "FeedForward")  # module class names; Linears inside are wrapped
    target_name: Tuple[str, ...] = ()  # regexes on module paths (re.match), wrapped as well
    module_factors: Mapping[str, int] = field(default_factory=lambda: {"Attention": 16, "FeedForward": 8})

    def __post_init__(self):
        if self.algo != "lokr":
            raise ConfigError(f"algo={self.algo!r}: only LyCORIS 'lokr' is supported here")
        for name in ("target_module", "target_name"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # Factors of untargeted classes are dropped: in LyCORIS a module_algo_map entry would make its class a target.
        factors = {k: int(v) for k, v in dict(self.module_factors).items() if k in self.target_module}
        object.__setattr__(self, "module_factors", factors)

    def to_config(self) -> dict:
        preset = {"target_module": list(self.target_module), "target_name": list(self.target_name),
                  "module_algo_map": {name: {"factor": f} for name, f in self.module_factors.items()}}
        return {"algo": self.algo, "multiplier": self.multiplier, "linear_dim": self.linear_dim,
                "linear_alpha": self.linear_alpha, "factor": self.factor, "full_matrix": self.full_matrix,
                "bypass_mode": self.bypass_mode, "apply_preset": preset}

    @classmethod
    def from_config(cls, config: Mapping) -> "LokrSettings":
        """Read a SimpleTuner lycoris_config; anything this module would not honour is an error, not ignored."""
        config = dict(config)
        preset = dict(config.pop("apply_preset", None) or {})
        algo_map = dict(preset.pop("module_algo_map", None) or {})
        scalars = {f.name for f in fields(cls)} - {"target_module", "target_name", "module_factors"}
        unknown = sorted(set(config) - scalars)
        unknown += sorted(f"apply_preset.{k}" for k in set(preset) - {"target_module", "target_name"})
        unknown += sorted(f"module_algo_map.{k}" for k, v in algo_map.items() if set(v) != {"factor"})
        if unknown:
            raise ConfigError(f"unsupported lycoris_config keys: {', '.join(unknown)}")
        targets = tuple(preset.get("target_module", cls.target_module))
        targets += tuple(name for name in algo_map if name not in targets)  # LyCORIS targets a mapped class too
        return cls(**config, target_module=targets, target_name=tuple(preset.get("target_name", ())),
                   module_factors={name: v["factor"] for name, v in algo_map.items()})


def _classes(names, present) -> list:
    """Each class name, or its alias where the model has the alias instead."""
    out = []
    for name in names:
        hits = [c for c in (name, *CLASS_ALIASES.get(name, ())) if c in present]
        out += hits or [name]
    return out


def _preset(model: nn.Module, settings: LokrSettings) -> dict:
    """A complete LyCORIS preset: `apply_preset` sets class attributes, so every key is given to reset the last."""
    present = {type(m).__name__ for m in model.modules()}
    targets = _classes(settings.target_module, present)
    factors = {c: {"factor": f} for name, f in settings.module_factors.items() for c in _classes([name], present)}
    return {"target_module": targets, "target_name": list(settings.target_name), "module_algo_map": factors,
            "name_algo_map": {}, "exclude_name": [], "lora_prefix": PREFIX, "use_fnmatch": False}


def _finish(network: "LycorisNetwork", model: nn.Module, settings: LokrSettings) -> "LycorisNetwork":
    """Same forward path at training and inference (bypass where asked or where the layer is not a plain
    Linear/Conv, e.g. quanto/bnb/torchao), fp32 factors on the model's device, hooked into the model."""
    import torch
    from torch import nn

    plain = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for lora in network.loras:
        lora.bypass_mode = bool(settings.bypass_mode or type(lora.org_module[0]) not in plain)
    network.apply_to()
    network.to(device=next((p.device for p in model.parameters()), None), dtype=torch.float32)
    network.lokr_settings = settings  # set_lokr_enabled's "on" multiplier
    return network


def attach_lokr(model: nn.Module, settings: LokrSettings) -> "LycorisNetwork":
    """Freeze `model` and hook a trainable LoKr into it (fp32 factors whatever the base dtype, also on quanto
    QLinear layers). The factor LyCORIS calls w2 starts at zero, so the model's output is unchanged at first."""
    from lycoris import LycorisNetwork, create_lycoris

    model.requires_grad_(False)
    LycorisNetwork.apply_preset(_preset(model, settings))
    network = create_lycoris(model, settings.multiplier, settings.linear_dim, settings.linear_alpha,
                             algo=settings.algo, factor=settings.factor, full_matrix=settings.full_matrix,
                             bypass_mode=settings.bypass_mode)
    if not network.loras:
        raise ConfigError(f"LoKr: no layer of {type(model).__name__} matches target_module="
                          f"{settings.target_module} target_name={settings.target_name}")
    return _finish(network, model, settings).requires_grad_(True)


def lokr_state_dict(network: "LycorisNetwork") -> Dict[str, torch.Tensor]:
    """Detached CPU copies of the LoKr tensors in LyCORIS' key layout (module docstring), fp32 as trained."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in network.state_dict().items()}


def save_lokr(network: "LycorisNetwork", path: Union[str, Path], settings: LokrSettings) -> Path:
    """A .safetensors file of the LoKr tensors with the settings as JSON under `lycoris_config`, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(lokr_state_dict(network), str(tmp), metadata={CONFIG_KEY: json.dumps(settings.to_config())})
    return Path(path)


def read_lokr(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], LokrSettings]:
    """The tensors and settings of a LoKr file; a file without `lycoris_config` metadata gets the defaults."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    settings = LokrSettings.from_config(json.loads(metadata[CONFIG_KEY])) if CONFIG_KEY in metadata else None
    return state, settings or LokrSettings()


def follow_inputs(network: "LycorisNetwork"):
    """A forward pre-hook moving the factors to the device of the call's first tensor: `pipe.to("cuda")` or CPU
    offload move the model but not the separate network (LyCORIS' rebuild path would then mix devices)."""
    import torch

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = next((t for t in (*args, *kwargs.values()) if torch.is_tensor(t)), None)
        if x is not None and next(network.parameters()).device != x.device:
            network.to(x.device)

    return hook


def load_lokr_weights(model: nn.Module, path: Union[str, Path]) -> "LycorisNetwork":
    """Hook a saved LoKr into `model` (e.g. `pipe.transformer`) for inference, at the saved multiplier; the factors
    follow the inputs' device. Module shapes come from the tensors (`lycoris.create_lycoris_from_weights`): the
    outputs are the training-time ones. Fails if a saved module has no counterpart in `model` (a file for another
    model)."""
    from lycoris import LycorisNetwork, create_lycoris_from_weights

    state, settings = read_lokr(path)
    LycorisNetwork.apply_preset({"lora_prefix": PREFIX})
    network, _ = create_lycoris_from_weights(settings.multiplier, str(path), model, weights_sd=state)
    unmatched = sorted({k.split(".")[0] for k in state} - {lora.lora_name for lora in network.loras})
    if unmatched:
        raise ConfigError(f"{path}: {len(unmatched)} LoKr modules match no layer of {type(model).__name__}, "
                          f"e.g. {unmatched[0]}")
    _finish(network, model, settings).load_state_dict(state)  # also the saved alphas (LyCORIS re-derives 1)
    model.register_forward_pre_hook(follow_inputs(network), with_kwargs=True)
    return network.requires_grad_(False)


def set_lokr_enabled(network: "LycorisNetwork", enabled: bool) -> None:
    """Adapter on (the settings' multiplier) or off (0: every wrapped layer returns its base output exactly)."""
    settings = getattr(network, "lokr_settings", None) or LokrSettings()
    network.set_multiplier(settings.multiplier if enabled else 0.0)


@contextlib.contextmanager
def lokr_disabled(network: "LycorisNetwork") -> Iterator[None]:
    """Base-model predictions within the block (regularisation targets); the previous strength comes back after."""
    previous = network.multiplier
    network.set_multiplier(0.0)
    try:
        yield
    finally:
        network.set_multiplier(previous)
