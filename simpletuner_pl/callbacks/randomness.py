"""Every random generator in the checkpoint, so a resumed run draws exactly what the uninterrupted run would have.

Python's, NumPy's, torch's CPU and CUDA generators are saved per rank with each checkpoint and restored when
training starts again. A fresh run seeds them (run seed + rank) when training starts, after the caches are built:
filling a latent cache draws VAE samples, and whether the cache already existed must not change the training
noise. Each rank seeds differently, so data-parallel ranks draw independent noise.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, List, Optional

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def collect() -> Dict[str, Any]:
    """This process's generator states, as tensors and plain containers (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                       "position": int(position), "has_gauss": int(has_gauss),
                                       "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RandomState(L.Callback):
    def __init__(self, seed: int):
        self.seed = seed
        self.loaded: Optional[List[Dict[str, Any]]] = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        rank = trainer.global_rank
        if self.loaded is not None and len(self.loaded) == trainer.world_size:
            restore(self.loaded[rank])
            return
        if self.loaded is not None:
            log.warning("the checkpoint holds random states of %d ranks, this run has %d: reseeding instead (the "
                        "resumed run will not repeat the original draws)", len(self.loaded), trainer.world_size)
        seed_all(self.seed + rank + 1_000_003 * trainer.global_step)

    def state_dict(self) -> Dict[str, Any]:
        states = [collect()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, collect())
        return {"ranks": states}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.loaded = state_dict.get("ranks")
