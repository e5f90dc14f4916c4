"""The run's Lightning loggers: `metrics.csv` always (first, so `trainer.logger` is it), then each tracker chosen
with `logger=` / `logger.report_to` (checked at startup by `simpletuner_pl.config.logging.check_loggers`).

Each tracker writes under the output folder unless told otherwise: TensorBoard in `tensorboard/`, W&B in `wandb/`,
MLflow in a local SQLite store (`mlflow.db`, artifacts in `mlruns/`). A resumed run continues where it stopped:
TensorBoard purges the events after the checkpoint's step (they are trained again), W&B resumes the same run id
(kept in `wandb/run_id`) and MLflow the run tagged with this output folder. A fresh run gives each tracker its config
as hyperparameters (`optimizer.lr`, `adapter.rank`, ...).
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from simpletuner_pl.callbacks.metrics_log import MetricsCSVLogger
from simpletuner_pl.config.logging import LoggerConfig, chosen_loggers, wandb_mode
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.io import write_text

OUTPUT_DIR_TAG = "simpletuner_pl.output_dir"


def run_name(cfg: LoggerConfig, output_dir: Path) -> str:
    """`logger.run_name`, else the output folder's name (with its sweep's folder for a multirun job `0`, `1`...)."""
    if cfg.run_name:
        return cfg.run_name
    folder = Path(output_dir).resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name.isdigit() else folder.name


def tensorboard(cfg: LoggerConfig, output_dir: Path, resume_step: Optional[int]) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(output_dir, name="tensorboard", version="", default_hp_metric=False,
                             purge_step=resume_step)


def wandb_run_id(output_dir: Path, resume_step: Optional[int]) -> str:
    """The id a resumed run continues; a new one otherwise (written by rank 0, which alone talks to W&B)."""
    path = Path(output_dir) / "wandb" / "run_id"
    if resume_step is not None and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        write_text(path, run_id)
    return run_id


def wandb(cfg: LoggerConfig, output_dir: Path, resume_step: Optional[int]) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    class FinishingWandbLogger(WandbLogger):
        """Lightning leaves the W&B run open; finishing it writes everything out (offline: the run file) and lets
        the next `run(cfg)` in the same process (a notebook, a sweep) start a run of its own."""

        @rank_zero_only
        def finalize(self, status: str) -> None:
            super().finalize(status)
            if self._experiment is not None:
                self._experiment.finish(exit_code=0 if status == "success" else 1)

    return FinishingWandbLogger(name=run_name(cfg, output_dir), save_dir=str(output_dir), project=cfg.project,
                       entity=cfg.wandb.entity, mode=wandb_mode(cfg.wandb), id=wandb_run_id(output_dir, resume_step),
                       resume="allow")


def mlflow_run_id(tracking_uri: str, experiment: str, output_dir: Path) -> Optional[str]:
    """The MLflow run this output folder reported to before (a resume continues it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{OUTPUT_DIR_TAG}` = '{output_dir}'", max_results=1)
    return runs[0].info.run_id if runs else None


def mlflow(cfg: LoggerConfig, output_dir: Path, resume_step: Optional[int]) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    folder = Path(output_dir).resolve()
    uri = cfg.mlflow.tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = None if cfg.mlflow.tracking_uri else (folder / "mlruns").as_uri()
    run_id = mlflow_run_id(uri, cfg.project, folder) if resume_step is not None and rank_zero_only.rank == 0 else None
    return MLFlowLogger(experiment_name=cfg.project, run_name=run_name(cfg, output_dir), tracking_uri=uri,
                        tags={OUTPUT_DIR_TAG: str(folder)}, artifact_location=artifacts, run_id=run_id)


BUILDERS: Dict[str, Callable[[LoggerConfig, Path, Optional[int]], Logger]] = {
    "tensorboard": tensorboard, "wandb": wandb, "mlflow": mlflow}


def hyperparameters(cfg: RunConfig) -> Dict[str, Any]:
    """The run's config as dotted keys (`optimizer.lr`, `adapter.rank`): what sweeps are compared by."""
    def flat(tree: Any, prefix: str) -> Dict[str, Any]:
        if isinstance(tree, dict):
            return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: tree}

    return flat(dataclasses.asdict(cfg), "")


def build_loggers(cfg: RunConfig, output_dir: Path, resume_step: Optional[int]) -> List[Logger]:
    """A fresh run gives each tracker its config as hyperparameters; a resumed one keeps those of its start (MLflow
    refuses to change a parameter, and `train.max_steps` usually changes)."""
    trackers = [BUILDERS[name](cfg.logger, Path(output_dir), resume_step) for name in chosen_loggers(cfg.logger)]
    if trackers and resume_step is None:
        params = hyperparameters(cfg)
        for tracker in trackers:
            tracker.log_hyperparams(params)
    return [MetricsCSVLogger(output_dir, resume_step), *trackers]
