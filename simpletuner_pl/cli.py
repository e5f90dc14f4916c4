"""Hydra entry point: `python -m simpletuner_pl ...` / `simpletuner-pl ...` (and Hydra's `-m` multirun)."""

from __future__ import annotations

import logging
import sys

from simpletuner_pl.config import register
from simpletuner_pl.errors import Interrupted, UserError
from simpletuner_pl.paths import config_dir
from simpletuner_pl.startup import pause_collector, resume_collector

log = logging.getLogger("simpletuner_pl")


def _job(cfg):
    """One run; returns what a sweeper minimises (`sweeps.objective`), or `sweeps.Refused` for a multirun job
    whose input was refused, so that the other jobs still run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from simpletuner_pl.sweeps import Refused, objective
    from simpletuner_pl.train import run

    hydra_cfg = HydraConfig.get()
    cfg.output_dir = hydra_cfg.runtime.output_dir  # the job's own folder, also under multirun
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        run(cfg)
    except UserError as err:
        log.error("%s", err)
        if multirun:
            return Refused(str(err))  # reported in the sweep summary
        sys.exit(2)
    except Interrupted as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)
    return objective(cfg.output_dir) if multirun else None


def main() -> None:
    pause_collector()  # until the run's libraries are imported (simpletuner_pl.startup: 1.5 s of a warm start)
    try:
        import hydra

        register()
        hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_job)()
    finally:
        resume_collector()  # a run refused before its imports, --help, --cfg
