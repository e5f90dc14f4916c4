"""What the data caches key their entries on: a string that changes whenever an encoder would encode differently."""

from __future__ import annotations

import hashlib
import json

import torch


def describe(component: torch.nn.Module, precision: str = "no_change") -> str:
    """Class, dtype, quantisation, config and a fingerprint of a few weights of one component."""
    config = getattr(component, "config", {})
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    tensors = [t for t in component.state_dict().values() if torch.is_tensor(t) and t.is_floating_point()]
    digest = hashlib.sha256()
    for tensor in tensors[:2] + tensors[-2:]:
        digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return (f"{type(component).__name__}:{next(component.parameters()).dtype}:{precision}:"
            f"{json.dumps(config, sort_keys=True, default=str)}:{digest.hexdigest()}")
