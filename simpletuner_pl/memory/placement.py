"""Which components move their own weights between devices.

accelerate's CPU-offload hooks (`_hf_hook`) and diffusers' group-offload hooks (`_diffusers_hook`) move weights
just before a module runs; moving such a component whole onto the GPU would be exactly the peak those options
avoid. This is the one test for it, used by the LightningModule's device moves and by the validation rounds.
"""

from __future__ import annotations

from torch import nn


def is_self_placing(component: nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in component.modules())
