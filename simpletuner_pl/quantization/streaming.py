"""Quantise a model unit by unit (a unit = one block of a ModuleList, or one other top-level child).

`quantize_in_place` converts a model that is already loaded: each layer's float weight is released as soon as its
quantised copy exists, so peak memory stays at one model copy. `stream_load` does better for a model read from a
diffusers folder: it builds the model on the meta device and reads, casts and quantises one unit at a time straight
from the safetensors files, so peak system RAM is the quantised model plus one float block — SimpleTuner needs
~50 GB to quantise Flux because it loads everything in bf16 first.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from simpletuner_pl.progress import track
from simpletuner_pl.quantization.backends import Converter

log = logging.getLogger(__name__)

WEIGHTS = "diffusion_pytorch_model.safetensors"


def iter_units(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Top-level children, with ModuleLists split into their blocks (the unit of streaming)."""
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                yield f"{name}.{i}", block
        else:
            yield name, child


def convert_tree(root: nn.Module, prefix: str, convert: Converter) -> int:
    """Replace every convertible module under `root.<prefix>` (the unit itself included); returns the count."""
    unit = root.get_submodule(prefix)
    names = [f"{prefix}.{n}" if n else prefix for n, _ in unit.named_modules()]
    count = 0
    for name in names:
        replacement = convert(root.get_submodule(name))
        if replacement is not None:
            parent, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent), attr, replacement)
            count += 1
    return count


def quantize_in_place(model: nn.Module, convert: Converter, keep: Sequence[str] = (),
                      device: Optional[torch.device] = None) -> int:
    """Quantise every unit not named (by its top-level name) in `keep`; units move to `device` first."""
    count, units = 0, list(iter_units(model))
    for name, unit in track(units, f"quantising {type(model).__name__}", len(units), "blocks", log):
        if device is not None:
            unit.to(device)
        if name.split(".")[0] not in keep:
            count += convert_tree(model, name, convert)
    if device is not None:
        model.to(device)  # parameters and buffers held by the root itself
    return count


def weight_index(folder: Path) -> Dict[str, Path]:
    """Tensor name -> safetensors file, for a single-file or a sharded diffusers checkpoint."""
    from safetensors import safe_open

    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():
        return {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = folder / WEIGHTS
    if not single.is_file():
        raise FileNotFoundError(f"{folder} has neither {WEIGHTS} nor its .index.json")
    with safe_open(single, "pt", device="cpu") as handle:
        return {k: single for k in handle.keys()}


def read_tensors(keys: Sequence[str], index: Dict[str, Path], strip: str, dtype: torch.dtype,
                 device: torch.device) -> Dict[str, torch.Tensor]:
    """Read `keys` as copies (safetensors hands out views of its memory map; a view kept by an unquantised layer
    would keep the whole file mapped and resident), opening each file only for this call."""
    from safetensors import safe_open

    by_file = defaultdict(list)
    for key in keys:
        by_file[index[key]].append(key)
    out = {}
    for path, file_keys in by_file.items():
        with safe_open(path, "pt", device="cpu") as handle:
            for key in file_keys:
                tensor = handle.get_tensor(key)
                out[key[len(strip):]] = tensor.to(device, dtype if tensor.is_floating_point() else None, copy=True)
    return out


def stream_load(model_cls, folder: Path, dtype: torch.dtype, convert: Converter, keep: Sequence[str],
                device: torch.device, save_unit: Optional[Callable[[str, nn.Module], None]] = None) -> nn.Module:
    """`model_cls` from a diffusers folder, read and quantised one unit at a time (see module docstring)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = model_cls.from_config(model_cls.load_config(folder))
    index = weight_index(folder)
    units = list(iter_units(model))
    for name, unit in track(units, f"streaming {model_cls.__name__}", len(units), "blocks", log):
        keys = [k for k in index if k.startswith(name + ".")]
        unit.load_state_dict(read_tensors(keys, index, name + ".", dtype, device), strict=True, assign=True)
        if name.split(".")[0] not in keep:
            convert_tree(model, name, convert)
        if save_unit is not None:
            save_unit(name, model.get_submodule(name))
    loaded = {k for name, _ in units for k in index if k.startswith(name + ".")}
    rest = [k for k in index if k not in loaded]
    if rest:  # tensors held by the root module itself
        model.load_state_dict(read_tensors(rest, index, "", dtype, device), strict=False, assign=True)
    check_materialised(model, folder)
    return model.to(device)


def check_materialised(model: nn.Module, folder: Path) -> None:
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise RuntimeError(f"{folder} holds no weights for {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}: is it a checkpoint of this model class?")
