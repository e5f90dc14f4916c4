"""Memory planner CLI: `python -m simpletuner_pl.plan model=flux quant=int8 ... gpu_memory_gb=16 [resolution=1024]`.

Composes the same Hydra config as training (any override works), prints the estimated GPU and system memory per
component before anything loads, and, when the run will not fit, the cheapest changes that make it fit
(`simpletuner_pl.planner`). Training prints the same estimate as a warning at startup.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Tuple

from simpletuner_pl.config import compose, to_typed
from simpletuner_pl.errors import UserError
from simpletuner_pl.preflight import check_config

GB = 1024**3
EXTRA_KEYS = ("gpu_memory_gb", "resolution")


def split_args(argv: List[str]) -> Tuple[List[str], dict]:
    """Planner-only keys (gpu_memory_gb=, resolution=) apart from the Hydra overrides."""
    extra, overrides = {}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in EXTRA_KEYS:
            extra[key] = float(value)
        else:
            overrides.append(arg)
    return overrides, extra


def main(argv: Optional[List[str]] = None) -> int:
    overrides, extra = split_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = to_typed(compose(overrides))
        check_config(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from simpletuner_pl.planner.report import report

    gpu = int(extra["gpu_memory_gb"] * GB) if "gpu_memory_gb" in extra else None
    side = int(extra["resolution"]) if "resolution" in extra else None
    print(report(cfg, gpu, side)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
