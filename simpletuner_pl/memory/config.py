"""`offload.*` settings and the checks of option combinations that cost memory or break quantised training.

Kept free of torch imports: `simpletuner_pl.config.validate` calls `check_combinations` before anything loads, so a
bad combination fails in a second with the fix, not minutes into loading (SimpleTuner silently disables LoftQ with
quantisation; here it is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from simpletuner_pl.errors import ConfigError
from simpletuner_pl.optimizers import check_optimizer


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class OffloadConfig:
    """Memory placement. `vae_enable_tiling` lives here because `data.*` has no VAE settings (the VAE is a model
    component; the data module only calls it)."""

    group_offload_type: str = _choice("none", "none", "block_level", "leaf_level")  # diffusers group offloading
    blocks_per_group: int = 1
    use_stream: bool = False  # overlap transfers with compute (CUDA only)
    to_disk_path: Optional[str] = None  # spill offloaded weights to this folder instead of RAM
    model_cpu_offload: bool = False  # VAE and text encoders live on the CPU, moved to the GPU only while they run
    offload_during_startup: bool = False  # transformer stays on the CPU while the caches are built
    vae_enable_tiling: bool = False  # encode large images tile by tile


def check_combinations(cfg) -> None:
    """Reject combinations that cannot work, naming the fix. Called by `simpletuner_pl.config.validate`."""
    quant, adapter, train, offload = cfg.quant, cfg.adapter, cfg.train, cfg.offload
    precision = quant.base_model_precision
    if adapter.init == "loftq" and precision != "no_change":
        raise ConfigError(f"adapter.init=loftq computes its initialisation from the full-precision weights and "
                          f"quantises them itself; it cannot start from a {precision} base. Use quant=none with "
                          "LoftQ, or keep the quantised base with adapter.init=default.")
    # DoRA on quanto layers works with PEFT >= 0.21 (its weight norm goes through quanto's dequantising ops;
    # tests/test_memory_config.py checks the magnitudes), so unlike SimpleTuner it is allowed. torchao NF4 is not:
    # PEFT calls `weight.dequantize()`, which NF4Tensor does not provide as a method.
    if adapter.use_dora and precision == "nf4-torchao":
        raise ConfigError("adapter.use_dora=true cannot read torchao NF4 weights (PEFT cannot dequantise them); "
                          "use quant=nf4 (bitsandbytes) or quant=int8, or set adapter.use_dora=false.")
    if train.compile and precision == "nf4-bnb":
        raise ConfigError("train.compile=true: bitsandbytes NF4 layers do not compile (graph breaks on every "
                          "layer, no speed-up). Use quant=nf4_torchao, which compiles, or train.compile=false.")
    if offload.group_offload_type != "none" and offload.model_cpu_offload:
        raise ConfigError("offload.group_offload_type and offload.model_cpu_offload exclude each other: both "
                          "install hooks that move weights between devices and they would fight over placement. "
                          "Pick one (group offload saves more memory for the transformer).")
    if offload.blocks_per_group < 1:
        raise ConfigError("offload.blocks_per_group must be >= 1")
    if offload.use_stream and offload.group_offload_type == "none":
        raise ConfigError("offload.use_stream=true only applies to group offloading: set "
                          "offload.group_offload_type=block_level (or leaf_level)")
    if train.gradient_checkpointing_interval is not None:
        if train.gradient_checkpointing_interval < 1:
            raise ConfigError("train.gradient_checkpointing_interval must be >= 1 (1 = every block) or null")
        if not train.gradient_checkpointing:
            raise ConfigError("train.gradient_checkpointing_interval needs train.gradient_checkpointing=true")
    if cfg.model.attention_backend.startswith("sage"):
        raise ConfigError("model.attention_backend=sage: SageAttention has no backward pass, so it cannot train. "
                          "Use sdpa (default), flash, xformers or flex.")
    check_optimizer(cfg)
    if cfg.model.family == "sdxl" and precision == "fp8-quanto":
        raise ConfigError("quant.base_model_precision=fp8-quanto does not work with the SDXL UNet (its conv layers); "
                          "use int8-quanto or nf4-bnb")
