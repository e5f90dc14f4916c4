"""optimum-quanto layers that PEFT's DoRA can read.

DoRA normalises by the base weight, which PEFT fetches with `dequantize_module_weight` and then casts to the input's
dtype; quanto's weight tensors refuse any dtype cast ("The dtype of a weights Tensor cannot be changed"), so DoRA on
a quanto base failed at the first step whenever the adapter's dtype differed from the base's (bf16 base, fp32
adapter: the defaults). PEFT dequantises a layer itself when it has `W_q` (the hook it keeps for HQQ), so these
subclasses expose `W_q` and `dequantize()`; everything else is quanto's own QLinear/QConv2d.
"""

from __future__ import annotations

import torch
from optimum.quanto.nn import QConv2d, QLinear


def _w_q(self) -> torch.Tensor:  # PEFT's attribute name: "this layer dequantizes itself"
    return self.weight


def _dequantize(self) -> torch.Tensor:
    return self.weight.dequantize()


# Plain subclasses (no mixin: an extra base class would change the instance layout, and the converter swaps the
# class of quanto's layers in place).
PeftQLinear = type("PeftQLinear", (QLinear,), {"W_q": property(_w_q), "dequantize": _dequantize,
                                                "__module__": __name__})
PeftQConv2d = type("PeftQConv2d", (QConv2d,), {"W_q": property(_w_q), "dequantize": _dequantize,
                                                "__module__": __name__})
PEFT_CLASSES = {QLinear: PeftQLinear, QConv2d: PeftQConv2d}
