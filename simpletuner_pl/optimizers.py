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

import logging
from typing import TYPE_CHECKING, Iterable, Optional

from simpletuner_pl.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: `check_optimizer` runs in config validation, before heavy imports
    import torch

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adamw_bf16", "optimi_lion", "optimi_stableadamw", "bnb_adamw8bit", "bnb_lion8bit_paged",
              "prodigy")
BF16_WEIGHTS = ("adamw_bf16",)  # optimizers that train bf16 weights in place
SELF_CLIPPING = ("optimi_stableadamw", "prodigy")  # bound their own update size; SimpleTuner skips clipping too
SCHEDULE_FREE = ("prodigy",)


def check_optimizer(cfg) -> None:
    """Invalid optimizer combinations (called by `simpletuner_pl.config.validate`)."""
    opt = cfg.optimizer
    if opt.name in BF16_WEIGHTS and cfg.quant.base_model_default_dtype == "fp32":
        raise ConfigError(f"optimizer={opt.name} trains bf16 weights; with quant.base_model_default_dtype=fp32 use "
                          "optimizer=adamw (fp32 weights and states) or set quant.base_model_default_dtype=bf16")
    if opt.name in BF16_WEIGHTS and cfg.adapter.type == "full":
        raise ConfigError(f"optimizer={opt.name} keeps the trained weights in bf16; adapter=full keeps fp32 master "
                          "weights, use optimizer=adamw (or optimi_stableadamw)")
    if opt.name in SCHEDULE_FREE and (opt.lr_scheduler != "constant" or opt.warmup_steps):
        raise ConfigError(f"optimizer={opt.name} is schedule-free and sets its own step size: use "
                          "optimizer.lr_scheduler=constant and optimizer.warmup_steps=0 (optimizer=prodigy sets both)")


def trainable_dtype(opt_cfg) -> Optional[torch.dtype]:
    """The dtype the optimizer needs the trained weights in (None: keep the adapter's fp32)."""
    import torch

    return torch.bfloat16 if opt_cfg.name in BF16_WEIGHTS else None


def prepare_trainable(params: Iterable[torch.nn.Parameter], opt_cfg) -> None:
    dtype = trainable_dtype(opt_cfg)
    if dtype is not None:
        for p in params:
            p.data = p.data.to(dtype)


def clip_value(cfg) -> Optional[float]:
    """`train.max_grad_norm` for Lightning, or None for optimizers that bound their own updates (logged)."""
    if cfg.train.max_grad_norm is not None and cfg.optimizer.name in SELF_CLIPPING:
        log.warning("optimizer=%s bounds its own update size; train.max_grad_norm=%s is not applied",
                    cfg.optimizer.name, cfg.train.max_grad_norm)
        return None
    return cfg.train.max_grad_norm


def build_optimizer(params: Iterable[torch.nn.Parameter], opt_cfg) -> torch.optim.Optimizer:
    import torch

    params = list(params)
    name, lr, betas, wd, eps = opt_cfg.name, opt_cfg.lr, tuple(opt_cfg.betas), opt_cfg.weight_decay, opt_cfg.eps
    extra = dict(opt_cfg.extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, **extra)
    if name in ("adamw_bf16", "optimi_stableadamw", "optimi_lion"):
        import optimi

        if any(p.device.type != "cuda" for p in params):  # optimi would pick its Triton kernels whenever
            extra.setdefault("triton", False)  # triton is importable, and they fail on the CPU
        if name == "optimi_lion":
            return optimi.Lion(params, lr=lr, betas=betas, weight_decay=wd, **extra)
        cls = optimi.AdamW if name == "adamw_bf16" else optimi.StableAdamW
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, kahan_sum=name == "adamw_bf16" or None,
                   **extra)
    if name in ("bnb_adamw8bit", "bnb_lion8bit_paged"):
        import bitsandbytes as bnb

        if name == "bnb_adamw8bit":
            return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, **extra)
        extra.setdefault("min_8bit_size", 4096)
        return bnb.optim.PagedLion8bit(params, lr=lr, betas=betas, weight_decay=wd, **extra)
    if name == "prodigy":
        from prodigyplus import ProdigyPlusScheduleFree

        extra.setdefault("d0", 1e-6)
        return ProdigyPlusScheduleFree(params, lr=lr, betas=betas, weight_decay=wd, eps=eps, **extra)
    raise ConfigError(f"optimizer.name={name!r}; valid: {', '.join(OPTIMIZERS)}")


def set_mode(optimizer, train: bool) -> None:
    """Schedule-free optimizers keep two weight sequences: train mode for the forward/backward, eval mode for
    everything that reads the weights (checkpoints, adapter export, validation). No-op for the others."""
    inner = getattr(optimizer, "optimizer", optimizer)  # unwrap Lightning's LightningOptimizer
    if callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None)):  # torch's have neither
        (inner.train if train else inner.eval)()
