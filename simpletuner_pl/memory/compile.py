"""`train.compile`: torch.compile each block of the denoiser, in place."""

from __future__ import annotations

import torch
from torch import nn

from simpletuner_pl.memory.checkpointing import block_lists


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile each block's forward. Module identity is kept (checkpointing, LoRA export and state-dict keys see
    the same modules) and one graph is compiled per block type. The outputs are copied inside the graph: Flux's
    single block returns two views of one tensor, which AOTAutograd refuses to compile when quantised weights
    (tensor subclasses) are graph inputs."""
    count = 0
    for name in block_lists(model):
        for block in model.get_submodule(name):
            block.forward = torch.compile(_fresh_outputs(block.forward), backend=backend)
            count += 1
    return count


def _fresh_outputs(forward):
    def call(*args, **kwargs):
        out = forward(*args, **kwargs)
        return tuple(o.clone() if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out

    return call
