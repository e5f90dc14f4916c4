"""Turning the trained adapter off for a forward: the base model's own prediction (regularisation targets).

PEFT's switches (`disable_adapters`, `set_adapters`) also flip `requires_grad` of the adapter weights; the flags are
restored exactly afterwards, so the optimizer's parameters and any frozen adapter (schnell's assistant) are as they
were. A disabled PEFT layer returns its base layer's output itself, so the prediction is the base model's exactly
(DoRA included; a zero scale would not undo DoRA's magnitude).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch import nn


@contextlib.contextmanager
def adapter_disabled(denoiser: nn.Module, keep: Sequence[str] = (), active: Sequence[str] = ("default",)
                     ) -> Iterator[None]:
    """Within the block only the adapters in `keep` are active (none by default); `active` is restored after."""
    flags = [(param, param.requires_grad) for param in denoiser.parameters()]
    if keep:
        denoiser.set_adapters(list(keep), [1.0] * len(keep))
    else:
        denoiser.disable_adapters()
    try:
        yield
    finally:
        if keep:
            denoiser.set_adapters(list(active), [1.0] * len(active))
        else:
            denoiser.enable_adapters()
        for param, flag in flags:
            param.requires_grad_(flag)
