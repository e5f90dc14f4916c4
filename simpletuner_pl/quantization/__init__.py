"""Quantised base models: `quant.base_model_precision` and `quant.text_encoder_{1,2}_precision`.

Backends: optimum-quanto (`int8|int4|int2|fp8-quanto`), bitsandbytes NF4 (`nf4-bnb`: diffusers'
BitsAndBytesConfig while loading on a CUDA GPU, the same Linear4bit layers swapped in by hand elsewhere) and torchao
NF4 (`nf4-torchao`, which also compiles). Only Linear (and, for quanto, Conv2d) weights are quantised; norms and
embeddings keep their dtype, and so do the Flux modules SimpleTuner keeps in high precision (`KEEP`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from simpletuner_pl.quantization.backends import converter
from simpletuner_pl.quantization.streaming import iter_units, quantize_in_place, read_tensors, stream_load, weight_index

log = logging.getLogger(__name__)

# Input/output projections and the final norm are tiny and sensitive; SimpleTuner keeps them in high precision too.
KEEP: Dict[str, tuple] = {"flux": ("x_embedder", "context_embedder", "norm_out", "proj_out"), "sdxl": ()}
TEXT_ENCODERS = {"text_encoder": "text_encoder_1_precision", "text_encoder_2": "text_encoder_2_precision"}


def quantization_device(cfg) -> torch.device:
    """`quantize_via=accelerator` quantises on this process's GPU (faster, needs the VRAM); `cpu` on the CPU."""
    if cfg.quant.quantize_via == "accelerator" and torch.cuda.is_available() \
            and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def quantize_model(model: nn.Module, precision: str, keep=(), device: Optional[torch.device] = None) -> int:
    """Quantise `model` in place, unit by unit; returns the number of layers converted."""
    if precision == "no_change":
        return 0
    count = quantize_in_place(model, converter(precision), keep, device)
    mark(model, precision)
    log.info("%s: %d layers quantised to %s", type(model).__name__, count, precision)
    return count


def mark(model: nn.Module, precision: str) -> None:
    model.base_model_precision = precision
    if precision == "nf4-bnb":
        model.is_loaded_in_4bit = True  # PEFT then wraps Linear4bit with its bnb-aware LoRA layer


def is_quantized(model: nn.Module, precision: str) -> bool:
    return getattr(model, "base_model_precision", "no_change") == precision


def load_quantized_transformer(cfg, dtype: torch.dtype) -> Optional[nn.Module]:
    """The Flux transformer read and quantised block by block from its folder (or the quantised-weights cache);
    None when it is not quantised or has no folder (the built-in tiny model is quantised in place instead)."""
    precision, model_cfg = cfg.quant.base_model_precision, cfg.model
    if precision == "no_change" or not model_cfg.pretrained_model_name_or_path:
        return None
    from diffusers import FluxTransformer2DModel

    from simpletuner_pl.models.loading import subfolder

    location = model_cfg.pretrained_transformer_model_name_or_path or model_cfg.pretrained_model_name_or_path
    sub = subfolder(model_cfg.pretrained_transformer_subfolder) \
        if model_cfg.pretrained_transformer_model_name_or_path else "transformer"
    device = quantization_device(cfg)
    if precision == "nf4-bnb" and device.type == "cuda":
        from simpletuner_pl.quantization.bnb_gpu import load_nf4_with_diffusers

        return load_nf4_with_diffusers(FluxTransformer2DModel, location, sub, model_cfg.revision, dtype, KEEP["flux"])
    folder = local_folder(location, sub, model_cfg.revision)
    model = _load(FluxTransformer2DModel, folder, dtype, precision, device, cfg.quant.cache_dir)
    mark(model, precision)
    return model


def _load(model_cls, folder: Path, dtype, precision: str, device, cache_dir: Optional[str]) -> nn.Module:
    keep = KEEP["flux"]
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


def local_folder(location: str, sub: Optional[str], revision: Optional[str]) -> Path:
    """A local diffusers folder, or the hub snapshot of just that subfolder (from the cache when offline)."""
    local = Path(location).expanduser()
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(location, revision=revision, allow_patterns=[f"{sub}/*"] if sub else None))
    return local / sub if sub else local


def quantize_components(cfg, components: Dict[str, object], denoiser_name: str) -> None:
    """Quantise the denoiser (unless the loader already did) and the text encoders, in place."""
    quant, device = cfg.quant, quantization_device(cfg)
    denoiser = components[denoiser_name]
    if not is_quantized(denoiser, quant.base_model_precision):
        quantize_model(denoiser, quant.base_model_precision, KEEP.get(cfg.model.family, ()), device)
    for name, key in TEXT_ENCODERS.items():
        if name in components:
            quantize_model(components[name], getattr(quant, key), (), device)
