"""Hydra entry point (`python -m simpletuner_pl ...` / `simpletuner-pl ...`) and `compose()` for notebooks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

log = logging.getLogger("simpletuner_pl")


def config_dir() -> Path:
    """`conf/` beside the package in a source checkout, `simpletuner_pl/conf/` inside an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"simpletuner_pl's config tree (train.yaml) is neither in {package.parent / 'conf'} "
                            f"nor in {package / 'conf'}; reinstall the package")


def demo_data_dir() -> str:
    return str(Path(__file__).resolve().parent / "assets" / "demo")


def register() -> None:
    from omegaconf import OmegaConf

    from simpletuner_pl.config import register_configs

    register_configs()
    OmegaConf.register_new_resolver("demo_data_dir", demo_data_dir, replace=True)


def compose(overrides: Optional[List[str]] = None):
    """The composed, typed config for `overrides` (same syntax as the command line), without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


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

    from simpletuner_pl.errors import UserError
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
