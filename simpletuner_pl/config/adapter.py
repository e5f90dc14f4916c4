"""`adapter.*`: what is trained — a PEFT LoRA/DoRA (`lora`), a LyCORIS LoKr (`lokr`) or the whole denoiser (`full`).

The LoRA keys (rank, alpha, dropout, target, init, DoRA, export format) and the LoKr keys (`adapter.lycoris.*`,
SimpleTuner's lycoris_config.json fields) each belong to their type; set with another type they would do nothing,
so `check_adapter_keys` refuses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from simpletuner_pl.config.fields import at_least, between, choice
from simpletuner_pl.config.registries import LORA_INITS
from simpletuner_pl.errors import ConfigError

LORA_KEYS = ("rank", "alpha", "dropout", "target", "init", "use_dora", "export_format", "init_lora")


@dataclass
class LycorisConfig:
    """LyCORIS LoKr (SimpleTuner's example lycoris_config.json): Kronecker factors of each targeted Linear."""

    multiplier: float = at_least(1.0, 0.0)
    linear_dim: int = at_least(10000, 1)  # rank of the decomposed factor; unused with full_matrix
    linear_alpha: float = at_least(1.0, 0.0)
    factor: int = at_least(16, -1)  # the small factor's size where module_factors names no class (-1: balanced)
    full_matrix: bool = True  # both factors full matrices (the recommended LoKr setting)
    # Adds the adapter's output to the base layer's instead of rebuilding W + ΔW: LyCORIS forces it on quantised
    # layers, and on a bf16 base it keeps small deltas that rebuilding would round away.
    bypass_mode: bool = True
    target_module: List[str] = field(default_factory=lambda: ["Attention", "FeedForward"])  # module classes
    target_name: List[str] = field(default_factory=list)  # module-path regexes, wrapped as well
    module_factors: Dict[str, int] = field(default_factory=lambda: {"Attention": 16, "FeedForward": 8})


@dataclass
class AdapterConfig:
    type: str = choice("lora", "lora", "lokr", "full")
    rank: int = at_least(16, 1)
    alpha: Optional[float] = at_least(None, 0.0, strict=True)  # None = rank, as in SimpleTuner
    dropout: float = between(0.1, 0.0, 1.0, high_strict=True)
    target: Optional[str] = None  # null = the family's default (a preset name, or module names where allowed)
    init: str = choice("default", *LORA_INITS)
    use_dora: bool = False
    # universal: the layout diffusers and ComfyUI both apply exactly (simpletuner_pl.adapters.layouts)
    export_format: str = choice("universal", "universal", "diffusers", "kohya", "comfyui")
    init_lora: Optional[str] = None  # start from this LoRA file (diffusers/PEFT, Kohya or ComfyUI keys)
    lycoris: LycorisConfig = field(default_factory=LycorisConfig)


def check_adapter_keys(adapter: AdapterConfig) -> None:
    """Keys of another adapter type than `adapter.type` must keep their defaults."""
    defaults = AdapterConfig()
    inert = []
    if adapter.type != "lora":
        inert += [f"adapter.{k}" for k in LORA_KEYS if getattr(adapter, k) != getattr(defaults, k)
                  and not (adapter.type == "lokr" and k == "init_lora")]
    if adapter.type != "lokr":
        inert += [f"adapter.lycoris.{f.name}" for f in dataclasses.fields(LycorisConfig)
                  if getattr(adapter.lycoris, f.name) != getattr(defaults.lycoris, f.name)]
    if inert:
        raise ConfigError(f"adapter.type={adapter.type} does not read {', '.join(inert)}: remove them, or pick the "
                          "adapter they belong to (adapter=lora for the LoRA keys, adapter=lokr for adapter.lycoris.*)")
