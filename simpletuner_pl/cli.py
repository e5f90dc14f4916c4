"""Hydra entry point: `python -m simpletuner_pl ...` / `simpletuner-pl ...` (and Hydra's `-m` multirun)."""

from __future__ import annotations

import logging
import sys

from simpletuner_pl.config import register
from simpletuner_pl.errors import Interrupted, UserError
from simpletuner_pl.paths import config_dir

log = logging.getLogger("simpletuner_pl")


def _job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from simpletuner_pl.train import run

    cfg.output_dir = HydraConfig.get().runtime.output_dir  # the job's own folder, also under multirun
    try:
        run(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)
    except Interrupted as stop:
        log.warning("%s", stop)
        sys.exit(stop.exit_code)


def main() -> None:
    import hydra

    register()
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_job)()
