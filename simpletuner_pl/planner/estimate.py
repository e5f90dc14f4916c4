"""Bytes of a configured run's parts, before any weight is loaded: weights per precision and the adapter size.

Weight bytes follow each backend's storage layout (checked against the real quantised layers in
tests/test_memory_plan.py); LoRA parameters come from PEFT itself on the meta model with the run's targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from torch import nn

from simpletuner_pl.adapters.lora import lora_config, resolve_targets
from simpletuner_pl.config.registries import PRECISIONS, LoraTargets
from simpletuner_pl.config.schema import AdapterConfig
from simpletuner_pl.quantization.backends import bnb_blocksize, nf4_blocks

GB = 1024**3
CUDA_OVERHEAD = 0.6 * GB  # CUDA context + cuBLAS workspaces, outside PyTorch's allocator (not measured here)
PROCESS_BASELINE = 1.3 * GB  # RSS of python + torch + diffusers + transformers + lightning, measured on CPU


def linear_bytes(linear: nn.Linear, precision: str, dtype_bytes: int) -> int:
    """Storage of one Linear's weight after quantisation (layouts of quanto, bitsandbytes and torchao)."""
    traits = PRECISIONS[precision]
    n, rows = linear.weight.numel(), linear.out_features
    if traits.backend == "quanto" and traits.bits == 8:
        return n + rows * dtype_bytes  # one scale per output row
    if traits.backend == "quanto":
        return n * traits.bits // 8 + (n // 128) * 2 * dtype_bytes  # scale + shift per group of 128
    if traits.backend == "bnb" and bnb_blocksize(linear) or traits.backend == "torchao" and nf4_blocks(n):
        return n // 2 + n // 64 + n // 4096  # 4-bit codes, 8-bit block absmax, double-quantised scalers
    return n * dtype_bytes


def weight_bytes(model: nn.Module, precision: str, dtype_bytes: int, keep=()) -> int:
    """Parameters and buffers of `model` with its Linear layers at `precision` (except the `keep` subtrees);
    LoRA layers, if attached, are left out (they are the adapter's)."""
    total, quantised = 0, set()
    if precision != "no_change":
        for name, module in model.named_modules():
            if type(module) is nn.Linear and name.split(".")[0] not in keep and ".lora_" not in name:
                total += linear_bytes(module, precision, dtype_bytes)
                quantised.add(id(module.weight))
    for name, p in model.named_parameters():
        if id(p) not in quantised and ".lora_" not in name:
            total += p.numel() * dtype_bytes
    return total + sum(b.numel() * b.element_size() for b in model.buffers())


def lora_parameters(denoiser: nn.Module, adapter_cfg: AdapterConfig, targets: LoraTargets) -> int:
    """Trainable adapter parameters: PEFT's own layer matching on the meta model."""
    denoiser.add_adapter(lora_config(adapter_cfg, resolve_targets(denoiser, adapter_cfg.target, targets)))
    return sum(p.numel() for p in denoiser.parameters() if p.requires_grad)


@dataclass
class Estimate:
    """Bytes per component; `gpu` is the accelerator peak (max of startup and training), `ram` system memory."""

    parts: Dict[str, int] = field(default_factory=dict)
    gpu_startup: int = 0
    gpu_training: int = 0
    ram: int = 0
    notes: list = field(default_factory=list)

    @property
    def gpu(self) -> int:
        return max(self.gpu_startup, self.gpu_training)
