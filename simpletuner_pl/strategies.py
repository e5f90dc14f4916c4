"""`strategy.*` → the object `lightning.Trainer(strategy=...)` receives: Lightning's own strategies, set up so that
only the trainable state is gathered and checkpointed.

- `ddp`: `DDPStrategy` (gloo on the CPU, NCCL on GPUs).
- `fsdp`: FSDP2 through Lightning's `ModelParallelStrategy` on a one-dimensional mesh over every rank (pure data
  parallel, no tensor parallelism). `fully_shard` wraps each block the denoiser declares indivisible (diffusers'
  `_no_split_modules`: Flux's double and single blocks; the UNet's transformer, resnet and up blocks), innermost
  first, then the denoiser itself. The frozen encoders stay whole on every rank: they only fill the caches.
  Checkpoints hold the trainable tensors, gathered whole, in one file (the frozen base is never gathered).
- `deepspeed`: `DeepSpeedStrategy` (ZeRO 2/3, CPU offload) with frozen parameters left out of its checkpoints.

Adapter exports run on rank 0; where weights are sharded every rank first takes part in gathering the trainable
ones (`gathered_trainables`, which `callbacks.checkpointing.AdapterExport` enters on every rank).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy

from simpletuner_pl.config.strategy import StrategyConfig

log = logging.getLogger(__name__)


def build_strategy(strategy: StrategyConfig) -> Any:
    """The Lightning strategy for `strategy.*` ("auto": Lightning's own choice, DDP for several devices)."""
    if strategy.name == "auto":
        return "auto"
    if strategy.name == "ddp":
        return DDPStrategy(find_unused_parameters=strategy.find_unused_parameters)
    if strategy.name == "fsdp":
        return BlockShardedStrategy(reshard_after_forward=strategy.reshard_after_forward)
    return GatheringDeepSpeedStrategy(stage=strategy.stage, offload_optimizer=strategy.offload_optimizer,
                                      offload_parameters=strategy.offload_parameters, exclude_frozen_parameters=True)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter whole, on the CPU (a sharded DTensor is gathered: every rank must call this)."""
    from torch.distributed.tensor import DTensor

    whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return whole.detach().cpu()


class BlockShardedStrategy(ModelParallelStrategy):
    def __init__(self, reshard_after_forward: bool = True):
        super().__init__(save_distributed_checkpoint=False)  # one .ckpt file: resume and its checks read it
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def shard(self, denoiser: torch.nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        indivisible = set(getattr(denoiser, "_no_split_modules", None) or ())
        blocks = [m for m in denoiser.modules() if type(m).__name__ in indivisible and m is not denoiser]
        for block in reversed(blocks):  # innermost first, so no unit holds another's parameters
            fully_shard(block, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(denoiser, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        log.info("FSDP2: %s sharded over %d ranks in %d blocks (+ the rest)", type(denoiser).__name__,
                 mesh.size(), len(blocks))

    def lightning_module_state_dict(self) -> Dict[str, Any]:
        """The trainable tensors, whole (every rank gathers; rank 0 writes): what `DiffusionModule` keeps in a
        checkpoint anyway, without gathering the frozen base."""
        return {name: full(p) for name, p in self.lightning_module.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def gathered_trainables(self, module: torch.nn.Module) -> Iterator[None]:
        """Within the block the trainable parameters are whole tensors (on the CPU), so the adapter export reads
        them as on one device; every rank must enter it. The shards are put back afterwards."""
        swapped = []
        for name, param in list(module.named_parameters()):
            if param.requires_grad:
                owner, _, attr = name.rpartition(".")
                parent = module.get_submodule(owner)
                swapped.append((parent, attr, param))
                parent._parameters[attr] = torch.nn.Parameter(full(param), requires_grad=False)
        try:
            yield
        finally:
            for parent, attr, param in swapped:
                parent._parameters[attr] = param


class GatheringDeepSpeedStrategy(DeepSpeedStrategy):
    @contextlib.contextmanager
    def gathered_trainables(self, module: torch.nn.Module) -> Iterator[None]:
        """ZeRO-3 partitions the weights: gather the trainable ones for the export (every rank enters)."""
        if not self.zero_stage_3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for p in module.parameters() if p.requires_grad]):
            yield
