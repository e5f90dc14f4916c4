"""`logger.*`: which experiment trackers a run reports to, besides the `metrics.csv` every run writes.

`logger=tensorboard|wandb|mlflow` (or several: `logger=[tensorboard,wandb]`) switches one on; SimpleTuner's
`report_to` (`logger.report_to=tensorboard|wandb|mlflow|all|none`) says the same in its words. The CSV logger is
always on: the resume logic, the tests and the sweep summary read `metrics.csv`. `chosen_loggers` resolves both
spellings into one list and `check_loggers` refuses, before anything heavy runs, a logger whose package is missing
or a W&B online run with no credentials.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

from simpletuner_pl.config.fields import choice
from simpletuner_pl.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")  # Lightning's TensorBoardLogger, WandbLogger, MLFlowLogger
REPORT_TO = (*TRACKERS, "all", "none")  # SimpleTuner's values (all = every tracker that is installed)
EXTRA = "pip install 'simpletuner_pl[loggers]'"
PACKAGES = {"tensorboard": ("tensorboard",), "wandb": ("wandb",),
            "mlflow": ("mlflow", "sqlalchemy", "alembic")}  # mlflow-skinny + what its SQLite store needs


@dataclass
class TensorBoardConfig:
    enabled: bool = False  # event files in <output_dir>/tensorboard (`tensorboard --logdir <output_dir>`)


@dataclass
class WandbConfig:
    enabled: bool = False
    entity: Optional[str] = None  # team or user; None = the logged-in account's default
    mode: Optional[str] = choice(None, None, "online", "offline")  # None = $WANDB_MODE, else online


@dataclass
class MLflowConfig:
    enabled: bool = False
    # None = a local store: sqlite:///<output_dir>/mlflow.db with artifacts in <output_dir>/mlruns
    tracking_uri: Optional[str] = None


@dataclass
class LoggerConfig:
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    report_to: Optional[str] = choice(None, None, *REPORT_TO)  # SimpleTuner's --report_to; adds to the above
    project: str = "simpletuner_pl"  # SimpleTuner's tracker_project_name: the W&B project, the MLflow experiment
    run_name: Optional[str] = None  # SimpleTuner's tracker_run_name; None = the output folder's name


def installed(tracker: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES[tracker])


def chosen_loggers(cfg: LoggerConfig) -> List[str]:
    """The trackers to build, in a fixed order (`metrics.csv` is written regardless)."""
    enabled = {name for name in TRACKERS if getattr(cfg, name).enabled}
    if cfg.report_to == "none":
        if enabled:
            raise ConfigError(f"logger.report_to=none contradicts the enabled logger(s) {', '.join(sorted(enabled))}: "
                              "drop report_to, or the logger= choice")
    elif cfg.report_to == "all":
        enabled |= {name for name in TRACKERS if installed(name)}
    elif cfg.report_to is not None:
        enabled.add(cfg.report_to)
    return [name for name in TRACKERS if name in enabled]


def wandb_mode(cfg: WandbConfig) -> str:
    return cfg.mode or os.environ.get("WANDB_MODE") or "online"


def has_wandb_credentials() -> bool:
    """What `wandb.init` would find without prompting: the API key or identity-token variables, or a ~/.netrc
    entry for the W&B host (`wandb login` writes one)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def check_loggers(cfg: LoggerConfig) -> List[str]:
    """The chosen trackers, each installed and (W&B online) logged in; a `ConfigError` with the fix otherwise."""
    chosen = chosen_loggers(cfg)
    for name in chosen:
        missing = [package for package in PACKAGES[name] if importlib.util.find_spec(package) is None]
        if missing:
            raise ConfigError(f"the {name} logger needs {', '.join(missing)}, which is not installed: {EXTRA}")
    if "wandb" in chosen and wandb_mode(cfg.wandb) == "online" and not has_wandb_credentials():
        raise ConfigError("the wandb logger is online but no W&B credentials were found (WANDB_API_KEY, ~/.netrc): "
                          "run `wandb login`, or log locally with logger.wandb.mode=offline (upload later with "
                          "`wandb sync <output_dir>/wandb/offline-run-*`)")
    return chosen
