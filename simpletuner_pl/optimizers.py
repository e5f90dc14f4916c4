"""`optimizer.name` → a torch optimizer over the trainable (adapter) parameters.

- `adamw`: torch AdamW, fp32 adapter weights and states (16 bytes per trained parameter).
- `adamw_bf16` (SimpleTuner's default): the adapter weights themselves are bf16 and torch-optimi's AdamW keeps
  bf16 moments plus a bf16 Kahan compensation buffer, so updates far below bf16's resolution still accumulate
  (10 bytes per parameter, and bf16 LoRA matmuls). SimpleTuner uses stochastic rounding for the same purpose;
  Kahan summation is deterministic and tracks fp32 AdamW more closely (tests/test_optimizers.py).
- `optimi_lion`, `optimi_stableadamw`: torch-optimi (Kahan summation switches on by itself for bf16 weights).
- `bnb_adamw8bit`, `bnb_lion8bit_paged`: bitsandbytes 8-bit states; paged states need CUDA — on the CPU
  bitsandbytes itself falls back to ordinary (unpaged) buffers and says so.
- `prodigy`: ProdigyPlusScheduleFree (learning-rate free, schedule free: lr 1.0, constant scheduler); it needs
  `optimizer.train()` before the forward and `optimizer.eval()` to expose the averaged weights, see `set_mode`.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from typing import Iterable, Optional

import torch

from simpletuner_pl.config.registries import OPTIMIZERS
from simpletuner_pl.config.schema import OptimizerConfig, TrainConfig
from simpletuner_pl.errors import ConfigError

log = logging.getLogger(__name__)


def cast_trainable(params: Iterable[torch.nn.Parameter], opt_cfg: OptimizerConfig) -> None:
    """Optimizers that train bf16 weights in place get the adapter in bf16; the others keep its fp32."""
    if OPTIMIZERS[opt_cfg.name].bf16_weights:
        for p in params:
            p.data = p.data.to(torch.bfloat16)


def clip_value(train: TrainConfig, opt_cfg: OptimizerConfig) -> Optional[float]:
    """`train.max_grad_norm` for Lightning, or None for optimizers that bound their own updates (logged)."""
    if train.max_grad_norm is not None and OPTIMIZERS[opt_cfg.name].self_clipping:
        log.warning("optimizer=%s bounds its own update size; train.max_grad_norm=%s is not applied",
                    opt_cfg.name, train.max_grad_norm)
        return None
    return train.max_grad_norm


def _torch_adamw(params, o: OptimizerConfig, extra: dict):
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, **extra)


def _optimi(params, o: OptimizerConfig, extra: dict):
    import optimi

    if any(p.device.type != "cuda" for p in params):  # optimi would pick its Triton kernels whenever
        extra.setdefault("triton", False)  # triton is importable, and they fail on the CPU
    common = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "optimi_lion":
        return optimi.Lion(params, **common, **extra)
    cls = optimi.AdamW if o.name == "adamw_bf16" else optimi.StableAdamW
    return cls(params, **common, eps=o.eps, kahan_sum=o.name == "adamw_bf16" or None, **extra)


def _bitsandbytes(params, o: OptimizerConfig, extra: dict):
    import bitsandbytes as bnb

    if o.name == "bnb_adamw8bit":
        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                   **extra)
    extra.setdefault("min_8bit_size", 4096)
    return bnb.optim.PagedLion8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **extra)


def _prodigy(params, o: OptimizerConfig, extra: dict):
    from prodigyplus import ProdigyPlusScheduleFree

    extra.setdefault("d0", 1e-6)
    return ProdigyPlusScheduleFree(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps,
                                   **extra)


BUILDERS = {"adamw": _torch_adamw, "adamw_bf16": _optimi, "optimi_stableadamw": _optimi, "optimi_lion": _optimi,
            "bnb_adamw8bit": _bitsandbytes, "bnb_lion8bit_paged": _bitsandbytes, "prodigy": _prodigy}


def optimizer_class(name: str) -> type:
    """The class `optimizer.name` builds (imported on demand)."""
    if name == "adamw":
        return torch.optim.AdamW
    if name in ("adamw_bf16", "optimi_stableadamw", "optimi_lion"):
        import optimi

        return {"adamw_bf16": optimi.AdamW, "optimi_stableadamw": optimi.StableAdamW, "optimi_lion": optimi.Lion}[name]
    if name in ("bnb_adamw8bit", "bnb_lion8bit_paged"):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit if name == "bnb_adamw8bit" else bnb.optim.PagedLion8bit
    from prodigyplus import ProdigyPlusScheduleFree

    return ProdigyPlusScheduleFree


def check_extra(opt_cfg: OptimizerConfig) -> None:
    """`optimizer.extra` keys must be arguments of the optimizer (checked before any weight is loaded); the ones
    with an `optimizer.*` key of their own are set there."""
    own = {"lr", "betas", "eps", "weight_decay", "params"}
    valid = [p for p in inspect.signature(optimizer_class(opt_cfg.name).__init__).parameters if p not in own | {"self"}]
    for key in opt_cfg.extra:
        if key in own:
            raise ConfigError(f"optimizer.extra.{key}: set optimizer.{key} instead")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            raise ConfigError(f"optimizer.extra.{key} is not an argument of optimizer={opt_cfg.name}"
                              f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; valid: "
                              f"{', '.join(valid)}")


def build_optimizer(params: Iterable[torch.nn.Parameter], opt_cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return BUILDERS[opt_cfg.name](list(params), opt_cfg, dict(opt_cfg.extra))


def set_mode(optimizer, train: bool) -> None:
    """Schedule-free optimizers keep two weight sequences: train mode for the forward/backward, eval mode for
    everything that reads the weights (checkpoints, adapter export, validation). No-op for the others."""
    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap Lightning's LightningOptimizer
    if callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None)):  # torch's have neither
        (inner.train if train else inner.eval)()
