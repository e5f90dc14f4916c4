"""Hydra entry point: `python -m simpletuner_pl ...` / `simpletuner-pl ...` (and Hydra's `-m` multirun)."""

from __future__ import annotations

import logging
import sys

from simpletuner_pl.config import register
from simpletuner_pl.errors import UserError
from simpletuner_pl.paths import config_dir

log = logging.getLogger("simpletuner_pl")


def quiet_libraries() -> None:
    """One line per message: Lightning's own console handler would repeat what Hydra's root handler prints."""
    import warnings

    import lightning.pytorch  # noqa: F401  (it installs its console handler on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel probe noise on import
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum registration notices
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # frozen encoders, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")  # we log across epochs
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())  # an advert, printed at every start


def _job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from simpletuner_pl.train import run

    cfg.output_dir = HydraConfig.get().runtime.output_dir  # the job's own folder, also under multirun
    quiet_libraries()
    try:
        run(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)


def main() -> None:
    import hydra

    register()
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_job)()
