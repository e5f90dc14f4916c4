"""`train.gradient_checkpointing(_interval)`: checkpoint every n-th block, keep the others' activations.

Checkpointing every block (interval 1) stores only block inputs and recomputes each block in the backward pass;
interval n recomputes only blocks 0, n, 2n, ... of each block list and keeps the activations of the rest: more
memory, less recomputation. diffusers models route each block through `_gradient_checkpointing_func(block, ...)`;
`IntervalCheckpoint` is that function, deciding per block, so there is no call counting and no monkey-patching of
`torch.utils.checkpoint` (SimpleTuner's old SDXL approach, removed because it broke). Blocks are the members of
the ModuleLists owned by a module that checkpoints (Flux: `transformer_blocks`, `single_transformer_blocks`;
a UNet: each down/mid/up block's `resnets` and `attentions`), numbered within their own list as SimpleTuner does.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import nn
from torch.utils.checkpoint import checkpoint


def block_lists(model: nn.Module) -> List[str]:
    """Names of the ModuleLists whose members diffusers passes to the checkpointing function."""
    out = []
    for name, module in model.named_modules():
        if not hasattr(module, "gradient_checkpointing"):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and not any(hasattr(b, "gradient_checkpointing") for b in child):
                out.append(f"{name}.{child_name}" if name else child_name)
    return out


def selected_blocks(model: nn.Module, interval: Optional[int] = None) -> List[str]:
    """Block i of each list is checkpointed iff i % interval == 0 (None: every block)."""
    interval = interval or 1
    return [f"{lst}.{i}" for lst in block_lists(model) for i in range(len(model.get_submodule(lst)))
            if i % interval == 0]


class IntervalCheckpoint:
    """diffusers' `gradient_checkpointing_func`: non-reentrant checkpoint for selected blocks, plain call otherwise."""

    def __init__(self, blocks: List[nn.Module]):
        self.blocks = {id(b) for b in blocks}

    def __call__(self, function: Callable, *args):
        if id(function) in self.blocks:
            return checkpoint(function.__call__, *args, use_reentrant=False)
        return function(*args)


def enable_gradient_checkpointing(model: nn.Module, interval: Optional[int] = None) -> List[str]:
    """Turn checkpointing on for every `interval`-th block (None: all); returns the checkpointed block names."""
    if not hasattr(model, "enable_gradient_checkpointing"):
        return []
    names = selected_blocks(model, interval)
    model.enable_gradient_checkpointing(IntervalCheckpoint([model.get_submodule(n) for n in names]))
    return names
