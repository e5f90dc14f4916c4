"""Activation memory of a training step, measured by running the denoiser on the meta device.

A meta forward computes shapes and dtypes only (no memory, ~1 s for the full Flux), while autograd still records
every tensor it saves for the backward pass. `saved_tensors_hooks` attributes each saved storage to the block
running at the time, so the bytes kept under any gradient-checkpointing choice follow without a GPU: a
checkpointed block keeps only its inputs, and recomputes its own activations (the backward peak) when its turn
comes. Parameters (frozen base or LoRA) are not activations and are skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, Set

import torch
import torch.nn.functional as F
from torch import nn


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@contextlib.contextmanager
def fused_attention_on_meta():
    """On meta tensors torch picks the *math* SDPA (fp32 scores, seq x seq per head: ~1 GB per Flux block at
    1024 px), which no GPU run uses. Route it through the memory-efficient kernel, whose saved tensors (q, k, v,
    output, log-sum-exp) are what flash/efficient attention keep on a GPU and the flash kernel keeps on a CPU."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if query.device.type != "meta":
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class ActivationProfile:
    saved: Dict[int, int] = field(default_factory=dict)  # storage -> bytes
    owner: Dict[int, str] = field(default_factory=dict)  # storage -> block name ("" outside blocks)
    inputs: Dict[str, Set[int]] = field(default_factory=dict)  # block -> storages of its tensor arguments
    input_bytes: Dict[int, int] = field(default_factory=dict)
    grad_working_set: int = 0  # gradients of the widest block's inputs, alive while it backpropagates

    def block_bytes(self, block: str) -> int:
        return sum(b for k, b in self.saved.items() if self.owner[k] == block)

    def kept_bytes(self, checkpointed: Iterable[str]) -> int:
        """Bytes alive at the start of the backward pass plus the recompute peak of the worst checkpointed block."""
        checkpointed = set(checkpointed)
        kept = {k: b for k, b in self.saved.items() if self.owner[k] not in checkpointed}
        for block in checkpointed:
            kept.update({k: self.input_bytes[k] for k in self.inputs.get(block, ())})
        recompute = max((self.block_bytes(b) for b in checkpointed), default=0)
        return sum(kept.values()) + recompute + self.grad_working_set


def profile_activations(model: nn.Module, blocks: Iterable[str], **inputs) -> ActivationProfile:
    """Run `model(**inputs)` (meta tensors, train mode) and attribute saved tensors to `blocks`."""
    profile, current = ActivationProfile(), [""]
    params = {_key(p) for p in model.parameters()}
    alive = []  # every recorded tensor stays referenced, so no storage address is reused during the profile

    def pack(t: torch.Tensor):
        alive.append(t)
        k = _key(t)
        if k not in params and k not in profile.saved:
            profile.saved[k] = t.untyped_storage().nbytes()
            profile.owner[k] = current[0]
        return t

    def enter(name):
        def hook(module, args, kwargs):
            tensors = [a for a in [*args, *kwargs.values()] if torch.is_tensor(a)]
            tensors += [x for a in [*args, *kwargs.values()] if isinstance(a, tuple) for x in a if torch.is_tensor(x)]
            alive.extend(tensors)
            profile.inputs[name] = {_key(t) for t in tensors}
            profile.input_bytes.update({_key(t): t.untyped_storage().nbytes() for t in tensors})
            profile.grad_working_set = max(profile.grad_working_set,
                                           sum(t.untyped_storage().nbytes() for t in tensors if t.dim() >= 3))
            current[0] = name
        return hook

    def leave(module, args, kwargs, output):
        current[0] = ""

    handles = []
    for name in blocks:
        module = model.get_submodule(name)
        handles += [module.register_forward_pre_hook(enter(name), with_kwargs=True),
                    module.register_forward_hook(leave, with_kwargs=True)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fused_attention_on_meta():
            output = model(**inputs)
        del output
    finally:
        for h in handles:
            h.remove()
    return profile
