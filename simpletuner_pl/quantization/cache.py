"""On-disk cache of a quantised model, one file per unit, so a second run skips reading and quantising the floats.

The key covers everything the quantised bytes depend on: the source files (path, size, mtime), the precision, the
dtype, the modules kept in high precision and the library versions. Units are stored as pickled modules
(`torch.save(module)`), because quanto, bitsandbytes and torchao each keep their own tensor subclasses and
quantisation state; the cache is therefore trusted local data, written by this tool only — never point
`quant.cache_dir` at files from elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch import nn

COMPLETE = "complete.json"
LIBRARIES = ("torch", "diffusers", "optimum-quanto", "bitsandbytes", "torchao")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def cache_key(weight_files: Sequence[Path], precision: str, dtype: torch.dtype, keep: Sequence[str]) -> str:
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(set(weight_files))]
    spec = dict(files=files, precision=precision, dtype=str(dtype), keep=sorted(keep),
                versions={lib: _version(lib) for lib in LIBRARIES})
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


class UnitCache:
    def __init__(self, root: str | os.PathLike, key: str, precision: str):
        self.dir = Path(root).expanduser() / f"{precision}-{key}"
        self.staging = self.dir.with_name(self.dir.name + ".partial")

    @property
    def complete(self) -> bool:
        return (self.dir / COMPLETE).is_file()

    def save_unit(self, name: str, module: nn.Module) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        torch.save(module, self.staging / f"{name}.pt")

    def finish(self, units: Sequence[str]) -> None:
        """Publish the staged units atomically: a crashed run leaves only a `.partial` folder, never a bad cache."""
        (self.staging / COMPLETE).write_text(json.dumps({"units": list(units)}))
        shutil.rmtree(self.dir, ignore_errors=True)
        os.replace(self.staging, self.dir)

    def load_into(self, model: nn.Module, device: torch.device) -> Dict[str, nn.Module]:
        """Replace each unit of the (meta) `model` by its cached quantised module."""
        units = json.loads((self.dir / COMPLETE).read_text())["units"]
        loaded = {}
        for name in units:
            module = torch.load(self.dir / f"{name}.pt", map_location=device, weights_only=False)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module)
            loaded[name] = module
        return loaded
