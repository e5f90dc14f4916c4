"""Memory planner: `python -m simpletuner_pl.plan model=flux quant=int8 ... gpu_memory_gb=16 [resolution=1024]`.

Composes the same Hydra config as training (any override works), prints the estimated GPU and system memory per
component before anything loads, and, when the run will not fit, the cheapest changes that make it fit.
`check_budget` is the same estimate as a warning at training startup.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional, Tuple

log = logging.getLogger(__name__)
GB = 1024**3
EXTRA_KEYS = ("gpu_memory_gb", "resolution")


def split_args(argv: List[str]) -> Tuple[List[str], dict]:
    """Planner-only keys (gpu_memory_gb=, resolution=) apart from the Hydra overrides."""
    extra, overrides = {}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        (extra.__setitem__(key, float(value)) if key in EXTRA_KEYS else overrides.append(arg))
    return overrides, extra


def describe(cfg, side: int) -> str:
    train = cfg.train
    ckpt = "off" if not train.gradient_checkpointing else f"every {train.gradient_checkpointing_interval or 1} block(s)"
    return (f"{cfg.model.family} ({cfg.model.flavour}), base {cfg.quant.base_model_precision} "
            f"({cfg.quant.base_model_default_dtype}), {cfg.adapter.type} rank {cfg.adapter.rank} on "
            f"{cfg.adapter.target or 'default'} targets, optimizer {cfg.optimizer.name}, {side} px, batch "
            f"{train.batch_size}, gradient checkpointing {ckpt}")


def report(cfg, gpu_bytes: Optional[int], side: Optional[int] = None) -> Tuple[str, bool]:
    from simpletuner_pl.memory.advice import suggest, table
    from simpletuner_pl.memory.budget import Facts, assemble, run_resolution

    facts = Facts(cfg)
    side = side or run_resolution(cfg)
    est = assemble(cfg, facts, gpu=gpu_bytes is not None, side=side)
    lines = [f"memory plan: {describe(cfg, side)}", table(est, gpu_bytes)]
    fits = gpu_bytes is None or est.gpu <= gpu_bytes
    if not fits:
        found = suggest(cfg, facts, gpu_bytes, side)
        lines.append("cheapest changes that fit:" if found else "no combination of the planner's changes fits")
        lines += [f"  {' '.join(o)}   (GPU peak {peak / GB:.1f} GB)" for o, peak in found]
    return "\n".join(lines), fits


def check_budget(cfg) -> None:
    """Warn at startup when the estimated peak exceeds the device (GPU memory, or RAM on a CPU-only run)."""
    import torch

    from simpletuner_pl.memory.options import training_device

    if cfg.model.family != "flux":
        log.info("memory plan: the planner models Flux only; no estimate for %s", cfg.model.family)
        return
    try:
        device = training_device(cfg)
        if device.type == "cuda":
            text, fits = report(cfg, torch.cuda.get_device_properties(device).total_memory)
        else:
            import psutil

            from simpletuner_pl.memory.budget import Facts, assemble

            est = assemble(cfg, Facts(cfg), gpu=False)
            fits, text = est.ram <= psutil.virtual_memory().total, f"estimated RAM peak {est.ram / GB:.1f} GB"
    except Exception as err:  # the plan is advice; a model it cannot price must still train
        log.warning("memory plan unavailable (%s: %s)", type(err).__name__, err)
        return
    if not fits:
        log.warning("this run probably does not fit in memory:\n%s", text)


def main(argv: Optional[List[str]] = None) -> int:
    from omegaconf import OmegaConf

    from simpletuner_pl.cli import compose
    from simpletuner_pl.config import validate
    from simpletuner_pl.errors import UserError

    overrides, extra = split_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = OmegaConf.to_object(compose(overrides))
        validate(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = int(extra["gpu_memory_gb"] * GB) if "gpu_memory_gb" in extra else None
    side = int(extra["resolution"]) if "resolution" in extra else None
    print(report(cfg, gpu, side)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
