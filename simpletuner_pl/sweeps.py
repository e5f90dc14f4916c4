"""Hydra multirun bookkeeping: each job's outcome beside its outputs, one summary table in the sweep folder.

`SweepSummary` is the Hydra callback of `conf/train.yaml` (`hydra.callbacks`). After every job it writes the job's
record (`sweep_job.json`: number, overrides, status, error) into the job's folder and rewrites
`sweep_summary.csv` and `.md` in the sweep folder from every record there; on_job_end runs where the job ran
(this process, or a SLURM node under submitit), so the table is current while the sweep runs and complete when
it ends. The numbers come from each job's own `metrics.csv` and `timings.json`. `objective` is what a job returns
to a sweeper: Optuna minimises it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from simpletuner_pl.io import write_json, write_text
from simpletuner_pl.metrics_file import read_logged

log = logging.getLogger(__name__)

RECORD = "sweep_job.json"
SUMMARY = "sweep_summary"  # .csv and .md
TRAIN_WINDOW = 10  # one step's loss depends on its random σ: the final train loss averages the last logged ones
METRICS = {"train_loss": "train loss", "eval_loss": "eval loss", "clip_score": "CLIP score", "step_s": "s/step"}


@dataclass(frozen=True)
class Refused:
    """What a multirun job returns when the startup checks refused its input (instead of exiting, which would end
    the whole sweep): the summary reports the message; it is no number, so Optuna marks the trial failed."""

    error: str

    def __str__(self) -> str:
        return f"refused: {self.error}"


def job_metrics(output_dir: str | os.PathLike) -> Dict[str, Optional[float]]:
    """Final train loss (mean of the last `TRAIN_WINDOW` logged), last eval loss and CLIP score, median s/step."""
    output_dir = Path(output_dir)
    logged = {key: [value for _, value in rows] for key, rows in
              read_logged(output_dir / "metrics.csv", "train/loss", "eval/loss", "eval/clip_score").items()}
    train = logged["train/loss"][-TRAIN_WINDOW:]
    evals, clips = logged["eval/loss"], logged["eval/clip_score"]
    timings = output_dir / "timings.json"
    step_s = json.loads(timings.read_text()).get("median_step_s") if timings.is_file() else None
    return {"train_loss": statistics.fmean(train) if train else None, "eval_loss": evals[-1] if evals else None,
            "clip_score": clips[-1] if clips else None, "step_s": step_s}


def objective(output_dir: str | os.PathLike) -> Optional[float]:
    """The number a sweeper minimises: the final eval loss (eval=loss), else the final train loss."""
    metrics = job_metrics(output_dir)
    value = metrics["eval_loss"] if metrics["eval_loss"] is not None else metrics["train_loss"]
    if value is None:
        log.warning("%s/metrics.csv has no eval/loss or train/loss to return to the sweeper: log them within the "
                    "run (train.log_every_n_steps <= train.max_steps)", output_dir)
    return value


def job_record(job_return: JobReturn, job_num: int) -> Dict[str, Any]:
    value = job_return._return_value  # the property re-raises a failed job's exception
    if job_return.status == JobStatus.FAILED:
        status, error = "crashed", f"{type(value).__name__}: {value}"
    elif isinstance(value, Refused):
        status, error = "refused", value.error
    else:
        status, error = "finished", ""
    return {"job": job_num, "overrides": list(job_return.overrides or []), "status": status, "error": error}


def summary_rows(sweep_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """One row per job record under `sweep_dir` (by job number): a column per swept key (an override not the same
    in every job), the metrics, status, error and the job's whole override list."""
    records = sorted((json.loads(p.read_text()) | {"dir": p.parent} for p in Path(sweep_dir).glob(f"*/{RECORD}")),
                     key=lambda r: r["job"])
    given = [dict(override.partition("=")[::2] for override in r["overrides"]) for r in records]
    common = set.intersection(*(set(g.items()) for g in given)) if given else set()
    swept = list(dict.fromkeys(key for g in given for key, value in g.items() if (key, value) not in common))
    return [{"job": r["job"], **{key: g.get(key, "") for key in swept}, **job_metrics(r["dir"]),
             "status": r["status"], "error": r["error"], "overrides": " ".join(r["overrides"])}
            for r, g in zip(records, given)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_summary(sweep_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """`sweep_summary.csv` (every column) and `sweep_summary.md` (a table of the swept keys and the results)."""
    sweep_dir = Path(sweep_dir)
    rows = summary_rows(sweep_dir)
    if not rows:
        return rows
    columns = list(rows[0])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / f"{SUMMARY}.csv", text.getvalue())
    shown = [c for c in columns if c != "overrides"]
    header = [METRICS.get(c, c) for c in shown]
    swept = columns[1:columns.index("train_loss")]
    common = [o for o in rows[0]["overrides"].split(" ") if o and o.partition("=")[0] not in swept]
    lines = [f"# Sweep summary: {sweep_dir}", "", f"{len(rows)} jobs, "
             f"{sum(r['status'] == 'finished' for r in rows)} finished. Train loss: mean of the last "
             f"{TRAIN_WINDOW} logged steps; eval loss and CLIP score: the last evaluation; s/step: the median.", "",
             f"Every job: `{' '.join(common)}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in shown) + " |" for row in rows]
    write_text(sweep_dir / f"{SUMMARY}.md", "\n".join(lines) + "\n")
    return rows


def _is_rank_zero() -> bool:
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


class SweepSummary(Callback):
    """Writes each multirun job's record and the sweep summary; does nothing in a single run."""

    def on_job_end(self, config, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        write_json(output_dir / RECORD, job_record(job_return, int(config.hydra.job.num)))
        write_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        unfinished = [f"job {r['job']} {r['status']}" for r in rows if r["status"] != "finished"]
        log.info("sweep: %d job(s) in %s", len(rows), sweep_dir / f"{SUMMARY}.md")
        if unfinished:
            log.warning("sweep: %s (the reason is in %s)", ", ".join(unfinished), f"{SUMMARY}.md")
