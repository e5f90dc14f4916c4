"""The closing summary of a run: where its results are, what training did to the loss, and how to use the adapter.

`train.run` calls `summarise` on global rank 0 once `fit` returns: it draws `loss.png` from `metrics.csv` and
prints a few lines a newcomer can act on (plain, on stdout; also into the run's log file, the CLI's `cli.log`).
Diffusion losses jump with the σ drawn for each step, so "first -> last" compares the means of the first and last
tenth of the logged values.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from simpletuner_pl.callbacks.before_after import FILE as BEFORE_AFTER
from simpletuner_pl.callbacks.plot import plot_loss
from simpletuner_pl.metrics_file import read_logged
from simpletuner_pl.progress import log_to_files

log = logging.getLogger(__name__)
LOSS_KEY = "train/loss"


def loss_line(values: Sequence[float]) -> str:
    tenth = max(1, len(values) // 10)
    first, last = sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth
    span = f"mean of the first and last {tenth} logged values" if tenth > 1 else "first and last logged value"
    change = f"; {100 * (last - first) / first:+.1f}%" if first else ""
    return f"{LOSS_KEY} {first:.4f} -> {last:.4f} ({span}{change})"


def speed_line(timings: Path) -> Optional[str]:
    if not timings.is_file():
        return None
    record = json.loads(timings.read_text())
    return f"speed: {record['median_step_s']:.4f} s/step (median of {record['batches_timed']} batches)"


def validation_line(validation: Path, before_after: Path) -> Optional[str]:
    rounds = sorted(validation.glob("step_*/grid.png"), key=lambda p: int(p.parent.name[5:]))
    if not rounds:
        return None
    shown = f"{before_after} (step 0 | last step, per prompt)" if before_after.is_file() else str(rounds[-1])
    return f"validation images: {validation}/step_N/ ({len(rounds)} rounds); compare: {shown}"


def summary_lines(trainer, output_dir: Path) -> List[str]:
    out = Path(output_dir)
    lines = [f"done: {trainer.global_step} steps -> {out}"]
    adapter = out / "adapter"
    weights = sorted(adapter.glob("*.safetensors"))
    if weights:
        lines.append(f"adapter: {', '.join(str(w) for w in weights)} (model card: {adapter / 'README.md'})")
    losses = read_logged(out / "metrics.csv", LOSS_KEY)[LOSS_KEY]
    if losses:
        plot_loss([s for s, _ in losses], [v for _, v in losses], out / "loss.png")
        lines.append(f"{loss_line([v for _, v in losses])}; plot: {out / 'loss.png'}")
    else:
        lines.append(f"{LOSS_KEY}: none logged yet (every train.log_every_n_steps={trainer.log_every_n_steps} steps)")
    lines += [line for line in (speed_line(out / "timings.json"),
                                validation_line(out / "validation", out / BEFORE_AFTER)) if line]
    lines.append(f"metrics: {out / 'metrics.csv'}; checkpoints: {out / 'checkpoints'} (a rerun resumes)")
    module = trainer.lightning_module
    if weights and hasattr(module, "pipeline_loading_code"):
        lines.append("load it with diffusers (adapter/README.md has the snippet that reproduces the validation "
                     "images):")
        lines += ["    import torch"] + [f"    {code}" for code in module.pipeline_loading_code(str(adapter)) if code]
    return lines


def summarise(trainer, output_dir: Path) -> List[str]:
    """Draw `loss.png` and print the summary (global rank 0); returns its lines."""
    if not trainer.is_global_zero:
        return []
    try:
        lines = summary_lines(trainer, output_dir)
    except Exception as err:  # the run itself succeeded and is saved: a summary that fails must not hide that
        log.warning("the closing summary failed (%s: %s); the run is saved in %s", type(err).__name__, err, output_dir)
        return []
    print("\n".join(lines), flush=True)  # plain lines on the console (or in the notebook)
    for line in lines:
        log_to_files(log, line)  # and in the run's log file (the CLI's cli.log)
    return lines
