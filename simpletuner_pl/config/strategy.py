"""`strategy.*`: how Lightning spreads a run over devices and nodes (`strategy=auto|ddp|fsdp|deepspeed_*`).

`simpletuner_pl.strategies` turns this into a Lightning strategy object; how many processes run is still
`trainer.devices` × `trainer.num_nodes` (or what torchrun / SLURM launched). The checks here refuse, before anything
loads, the combinations a strategy cannot run: DeepSpeed without CUDA or without the `[deepspeed]` extra, and the
options that need every rank for each forward pass of a sharded denoiser (validation and eval rounds run on rank 0
only).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from simpletuner_pl.config.fields import choice
from simpletuner_pl.errors import ConfigError

FSDP_KEYS = ("reshard_after_forward",)
DEEPSPEED_KEYS = ("stage", "offload_optimizer", "offload_parameters")
EXTERNAL_LAUNCHERS = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS")  # torchrun; srun (a multi-task SLURM step)


@dataclass
class StrategyConfig:
    name: str = choice("auto", "auto", "ddp", "fsdp", "deepspeed")
    # ddp: let some trainable parameters get no gradient in a step (costs a graph traversal per step); the
    # built-in adapters use every trainable parameter in every step
    find_unused_parameters: bool = False
    # fsdp (FSDP2 `fully_shard` per denoiser block): free a block's gathered weights after its forward (ZeRO-3-like);
    # false keeps them until the backward (fewer all-gathers, more memory)
    reshard_after_forward: bool = True
    # deepspeed: ZeRO stage (2 shards gradients and optimizer states, 3 the weights too) and CPU offloading
    stage: int = choice(2, 2, 3)
    offload_optimizer: bool = False
    offload_parameters: bool = False  # stage 3 only

    @property
    def shards_weights(self) -> bool:
        """Each rank holds only a shard of the denoiser: every forward needs every rank."""
        return self.name == "fsdp" or (self.name == "deepspeed" and self.stage == 3)


def check_strategy(cfg) -> None:
    """Keys of another strategy, and options a strategy cannot run, refused with the fix (`cfg`: a `RunConfig`;
    not imported, as `schema` imports this module)."""
    strategy, defaults = cfg.strategy, StrategyConfig()
    own = {"ddp": ("find_unused_parameters",), "fsdp": FSDP_KEYS, "deepspeed": DEEPSPEED_KEYS}.get(strategy.name, ())
    stray = [f.name for f in fields(strategy) if f.name != "name" and f.name not in own
             and getattr(strategy, f.name) != getattr(defaults, f.name)]
    if stray:
        raise ConfigError(f"strategy={strategy.name} does not read {', '.join(f'strategy.{k}' for k in stray)}; "
                          "remove it or pick the strategy that reads it (strategy=ddp|fsdp|deepspeed_zero2|...)")
    if strategy.offload_parameters and strategy.stage != 3:
        raise ConfigError("strategy.offload_parameters=true needs ZeRO stage 3 (strategy=deepspeed_zero3_offload); "
                          "stage 2 keeps whole weights on every GPU")
    if strategy.shards_weights:
        check_sharded(cfg)


def check_sharded(cfg) -> None:
    label = "strategy=fsdp" if cfg.strategy.name == "fsdp" else "strategy=deepspeed_zero3"
    switches = {"validation": cfg.validation.enabled, "eval.clip_score": cfg.eval.clip_score.enabled,
                "eval.eval_loss": cfg.eval.eval_loss.enabled}
    rounds = [key for key, on in switches.items() if on]
    if rounds:
        raise ConfigError(f"{label} shards the denoiser's weights, so every forward pass needs every rank, but "
                          f"{' and '.join(rounds)} rounds run on rank 0 only; use strategy=ddp or "
                          "strategy=deepspeed_zero2 (whole weights on each rank) for validation, or turn them off "
                          "(validation=off eval=off)")
    if cfg.adapter.use_dora:
        raise ConfigError(f"{label} shards the base weights, which the DoRA export reads on rank 0 (its magnitude is "
                          "relative to them); use strategy=ddp or deepspeed_zero2 with adapter.use_dora=true")
    if cfg.strategy.name != "fsdp":
        return
    if cfg.quant.base_model_precision != "no_change":
        raise ConfigError(f"strategy=fsdp cannot shard a quantised base (quant.base_model_precision="
                          f"{cfg.quant.base_model_precision}: its weights are not plain tensors); use quant=none, or "
                          "strategy=ddp to train on a quantised base")
    if cfg.adapter.type == "lokr":
        raise ConfigError("strategy=fsdp cannot shard a LyCORIS LoKr network (it runs inside the denoiser's layers "
                          "through patched forwards FSDP never sees); use strategy=ddp with adapter=lokr")
    if cfg.offload.grouped or cfg.offload.offload_during_startup:
        raise ConfigError("strategy=fsdp places the denoiser's shards itself; offload.group_offload_type and "
                          "offload.offload_during_startup would move them away: set them off (offload=none)")


def check_strategy_environment(strategy: StrategyConfig, trainer: Mapping[str, Any]) -> None:
    """Ranks started by torchrun/srun share one output_dir; DeepSpeed needs its package and CUDA: said up front
    rather than after the weights load."""
    check_shared_output_dir()
    if strategy.name != "deepspeed":
        return
    label = f"strategy=deepspeed_zero{strategy.stage}"
    if str(trainer.get("accelerator", "auto")) == "cpu":
        raise ConfigError(f"{label} runs on CUDA GPUs only, and trainer.accelerator=cpu; use strategy=ddp (or "
                          "strategy=fsdp) on the CPU")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{label} needs DeepSpeed: pip install 'simpletuner_pl[deepspeed]' (or strategy=fsdp, "
                          "which needs nothing extra)")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{label} runs on CUDA GPUs only, and this machine has none; use strategy=ddp (or "
                          "strategy=fsdp) on the CPU")


def check_shared_output_dir() -> None:
    """Processes started by torchrun or srun compose their configs separately, so the default
    `output_dir=outputs/${now:...}` may differ between ranks by a second; they must be told one folder. (Lightning's
    own launcher, `trainer.devices=N`, hands rank 0's folder to the processes it starts.)"""
    world = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    if world <= 1 or not any(name in os.environ for name in EXTERNAL_LAUNCHERS):
        return
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    given = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] in ("output_dir", "hydra.run.dir")]
    if not given:
        raise ConfigError("this process was started by torchrun or srun, and each process composes its own "
                          "config: pass output_dir=/path/to/run so every rank writes the same run folder (the "
                          "default, outputs/<date-time>, can differ between ranks)")
