"""Quantised base models: `quant.base_model_precision` and `quant.text_encoder_{1,2}_precision`, one entry point.

Backends (`simpletuner_pl.config.registries.PRECISIONS`): optimum-quanto (`int8|int4|int2|fp8-quanto`),
bitsandbytes NF4 (`nf4-bnb`: diffusers' BitsAndBytesConfig while loading on a CUDA GPU, the same Linear4bit layers
swapped in by hand elsewhere) and torchao NF4 (`nf4-torchao`, which also compiles). Only Linear (and, for quanto,
Conv2d) weights are quantised; norms and embeddings keep their dtype, and so do the modules the family keeps in
high precision. A denoiser read from a folder is streamed block by block (Flux and SDXL alike): peak RAM is its
quantised size plus one float block, never a full-precision copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from simpletuner_pl.config.registries import PRECISIONS
from simpletuner_pl.config.schema import QuantConfig
from simpletuner_pl.quantization.backends import converter
from simpletuner_pl.quantization.streaming import iter_units, quantize_in_place, read_tensors, stream_load, weight_index
from simpletuner_pl.sources import local_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Denoiser:
    """The family's denoiser as quantisation sees it."""

    name: str  # its component name ("transformer", "unet")
    model_class: Callable[[], type]  # the diffusers class, imported on demand
    location: Optional[str]  # folder or hub id; None: built in code (tiny models), quantised in place
    subfolder: Optional[str]
    revision: Optional[str]
    keep: Tuple[str, ...] = ()  # top-level children kept in high precision


def quantization_device(quant: QuantConfig, training_device: torch.device) -> torch.device:
    """`quantize_via=accelerator` quantises on the training GPU (faster, needs the VRAM); `cpu` in system RAM."""
    return training_device if quant.quantize_via == "accelerator" and training_device.type == "cuda" \
        else torch.device("cpu")


def quantize_model(model: nn.Module, precision: str, keep=(), device: Optional[torch.device] = None) -> int:
    """Quantise `model` in place, unit by unit; returns the number of layers converted."""
    if precision == "no_change":
        return 0
    count = quantize_in_place(model, converter(precision), keep, device)
    flag_4bit(model, precision)
    log.info("%s: %d layers quantised to %s", type(model).__name__, count, precision)
    return count


def flag_4bit(model: nn.Module, precision: str) -> None:
    """PEFT wraps bitsandbytes Linear4bit layers with its bnb-aware LoRA layer only when the model says so."""
    if PRECISIONS[precision].backend == "bnb":
        model.is_loaded_in_4bit = True


def load_quantized(load: Callable[[Optional[nn.Module]], Dict[str, object]], denoiser: Denoiser, quant: QuantConfig,
                   dtype: torch.dtype, training_device: torch.device) -> Tuple[Dict[str, object], Dict[str, str]]:
    """The family's components from `load(denoiser or None)`, quantised as `quant` says; and what was quantised
    (component → precision). A denoiser with a folder is streamed and handed to `load`; otherwise it and the text
    encoders are quantised in place after loading."""
    precision, device = quant.base_model_precision, quantization_device(quant, training_device)
    streamed = None
    if precision != "no_change" and denoiser.location is not None:
        streamed = load_denoiser(denoiser, precision, dtype, device, quant.cache_dir)
    components = load(streamed)
    done = {denoiser.name: precision} if streamed is not None else {}
    if streamed is None and quantize_model(components[denoiser.name], precision, denoiser.keep, device):
        done[denoiser.name] = precision
    for name, encoder_precision in quant.encoder_precisions().items():
        if name in components and quantize_model(components[name], encoder_precision, (), device):
            done[name] = encoder_precision
    return components, done


def load_denoiser(denoiser: Denoiser, precision: str, dtype: torch.dtype, device: torch.device,
                  cache_dir: Optional[str]) -> nn.Module:
    """The denoiser read and quantised block by block from its folder (or the quantised-weights cache)."""
    model_cls = denoiser.model_class()
    if PRECISIONS[precision].backend == "bnb" and device.type == "cuda":
        from simpletuner_pl.quantization.bnb_gpu import load_nf4_with_diffusers

        model = load_nf4_with_diffusers(model_cls, denoiser.location, denoiser.subfolder, denoiser.revision, dtype,
                                        denoiser.keep)
    else:
        folder = local_folder(denoiser.location, denoiser.subfolder, denoiser.revision)
        model = _stream(model_cls, folder, dtype, precision, denoiser.keep, device, cache_dir)
    flag_4bit(model, precision)
    log.info("%s streamed and quantised to %s", model_cls.__name__, precision)
    return model


def _stream(model_cls, folder, dtype, precision: str, keep, device, cache_dir: Optional[str]) -> nn.Module:
    if cache_dir is None:
        return stream_load(model_cls, folder, dtype, converter(precision), keep, device)
    from accelerate import init_empty_weights

    from simpletuner_pl.quantization.cache import UnitCache, cache_key

    index = weight_index(folder)
    cache = UnitCache(cache_dir, cache_key(list(index.values()), precision, dtype, keep), precision)
    if not cache.complete:
        names = []
        model = stream_load(model_cls, folder, dtype, converter(precision), keep, device,
                            save_unit=lambda name, unit: (names.append(name), cache.save_unit(name, unit)))
        cache.finish(names)
        log.info("quantised weights cached in %s", cache.dir)
        return model
    log.info("quantised weights read from the cache %s", cache.dir)
    with init_empty_weights(include_buffers=False):
        model = model_cls.from_config(model_cls.load_config(folder))
    cache.load_into(model, device)
    rest = [k for k in index if not any(k.startswith(n + ".") for n, _ in iter_units(model))]
    if rest:
        model.load_state_dict(read_tensors(rest, index, "", dtype, device), strict=False, assign=True)
    return model.to(device)
