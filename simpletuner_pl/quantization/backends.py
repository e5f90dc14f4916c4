"""One converter per quantisation backend: a float `nn.Linear` in, its frozen low-bit replacement out.

Converting layer by layer (instead of calling a library's whole-model `quantize`) is what lets the loader stream:
each layer's float weight is dropped as soon as its quantised copy exists, so peak memory is one model copy at
most, and one block when the weights come straight from disk (`simpletuner_pl.quantization.streaming`).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import nn

from simpletuner_pl.config.registries import PRECISIONS

log = logging.getLogger(__name__)

Converter = Callable[[nn.Module], Optional[nn.Module]]

NF4_BLOCKS = [(64, 256), (64, 128), (64, 64), (32, 32), (32, 8), (16, 8)]  # torchao's default first


def quanto_converter(precision: str) -> Converter:
    """optimum-quanto QLinear/QConv2d with frozen int8/int4/int2/fp8 weights (activations stay high precision)."""
    import optimum.quanto as quanto
    from optimum.quanto.nn import quantize_module

    from simpletuner_pl.quantization.quanto_layers import PEFT_CLASSES

    qtype = getattr(quanto, PRECISIONS[precision].quanto_type)

    def convert(module: nn.Module) -> Optional[nn.Module]:
        if type(module) not in (nn.Linear, nn.Conv2d):
            return None
        qmodule = quantize_module(module, weights=qtype)
        qmodule.freeze()  # float weight -> QTensor; the float copy is released here
        qmodule.requires_grad_(False)
        qmodule.__class__ = PEFT_CLASSES[type(qmodule)]  # DoRA can read its weight (quanto_layers)
        return qmodule

    return convert


def bnb_nf4_converter(precision: str) -> Converter:
    """bitsandbytes NF4 `Linear4bit` with double quantisation, built by hand (diffusers' BitsAndBytesConfig refuses
    to run without a GPU). bnb quantises when the parameter is moved to a device, so `.to(device)` does the work."""
    import bitsandbytes as bnb

    def convert(module: nn.Module) -> Optional[nn.Module]:
        if type(module) is not nn.Linear:
            return None
        blocksize = bnb_blocksize(module)
        if blocksize is None:
            log.info("nf4-bnb: %s keeps its dtype (dims not multiples of 32)", module)
            return None
        weight = module.weight
        qlinear = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                    compute_dtype=weight.dtype, compress_statistics=True, quant_type="nf4",
                                    device="meta")
        # bnb repacks a CPU weight for its AVX512-BF16 kernel at the first no-grad eval forward and never back, so
        # training after a validation round on the CPU would fail in that kernel: keep the training layout.
        qlinear.support_avx512bf16_for_cpu = False
        qlinear.weight = bnb.nn.Params4bit(weight.data, requires_grad=False, compress_statistics=True,
                                           quant_type="nf4", blocksize=blocksize)
        if module.bias is not None:
            qlinear.bias = nn.Parameter(module.bias.data, requires_grad=False)
        return qlinear.to(weight.device)

    return convert


def bnb_blocksize(linear: nn.Linear) -> Optional[int]:
    """bnb's default 64-weight blocks, or 32 for narrow layers: its CPU inference kernel repacks the weight in
    (32 rows x blocksize) tiles and fails on a layer narrower than one block (tiny test models)."""
    if linear.out_features % 32 or linear.in_features % 32:
        return None
    return 64 if linear.in_features % 64 == 0 else 32


def torchao_nf4():
    """(to_nf4, linear_nf4): torchao 0.18 moved NF4 out of torchao.dtypes."""
    try:
        from torchao.quantization import to_nf4
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4
    except ImportError:
        from torchao.dtypes.nf4tensor import linear_nf4, to_nf4
    return to_nf4, linear_nf4


class FrozenNF4Linear(nn.Linear):
    """A Linear whose weight is a torchao `NF4Tensor`; `linear_nf4` dequantises per call, autograd flows to the
    input only. Subclassing nn.Linear lets PEFT wrap it like any Linear, and torch.compile traces it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torchao_nf4()[1](x, self.weight)
        return out if self.bias is None else out + self.bias


def nf4_blocks(numel: int) -> Optional[tuple]:
    """Largest (block_size, scaler_block_size) that tiles the weight; torchao needs numel divisible by both."""
    for block, scaler in NF4_BLOCKS:
        if numel % (block * scaler) == 0:
            return block, scaler
    return None


def torchao_nf4_converter(precision: str) -> Converter:
    to_nf4 = torchao_nf4()[0]

    def convert(module: nn.Module) -> Optional[nn.Module]:
        if type(module) is not nn.Linear:
            return None
        blocks = nf4_blocks(module.weight.numel())
        if blocks is None:
            log.info("nf4-torchao: %s keeps its dtype (%d weights tile no NF4 block size)", module,
                     module.weight.numel())
            return None
        qlinear = FrozenNF4Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                  device="meta")
        qlinear.weight = nn.Parameter(to_nf4(module.weight.data, *blocks), requires_grad=False)
        if module.bias is not None:
            qlinear.bias = nn.Parameter(module.bias.data, requires_grad=False)
        return qlinear

    return convert


CONVERTERS = {"quanto": quanto_converter, "bnb": bnb_nf4_converter, "torchao": torchao_nf4_converter}


def converter(precision: str) -> Converter:
    """The layer converter of `precision`'s backend (`simpletuner_pl.config.registries.PRECISIONS`)."""
    backend = PRECISIONS[precision].backend
    if backend not in CONVERTERS:
        raise ValueError(f"no quantisation backend for {precision!r}")
    return CONVERTERS[backend](precision)
