"""One labelled grid per validation round (rows: prompts, columns: resolutions), saved and sent to the loggers.

Loggers that take images get it directly (W&B, Neptune, ... via `log_image`; TensorBoard via `add_image`; MLflow
via `MlflowClient.log_image`); the CSV logger cannot hold images, so for it the grid is the
`validation/step_N/grid.png` file beside the images. `log_image` sends any other image (the eval plots) the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from simpletuner_pl.io import save_image

log = logging.getLogger(__name__)
LABEL_HEIGHT = 14


def make_grid(rows: Sequence[Tuple[str, Sequence[Image.Image]]], max_cell: int = 256) -> Image.Image:
    """Cells as large as the largest image, at most `max_cell`, aspect kept; the nickname above each row."""
    columns = max(len(images) for _, images in rows)
    images = [image for _, row in rows for image in row]
    scale = min(1.0, max_cell / max(max(i.width for i in images), max(i.height for i in images)))
    cell = (round(max(i.width for i in images) * scale), round(max(i.height for i in images) * scale))
    grid = Image.new("RGB", (columns * cell[0], len(rows) * (cell[1] + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        top = r * (cell[1] + LABEL_HEIGHT)
        draw.text((2, top + 1), label, fill="black")
        for c, image in enumerate(images):
            thumb = image.copy()
            thumb.thumbnail(cell)
            grid.paste(thumb, (c * cell[0], top + LABEL_HEIGHT))
    return grid


def log_grid(trainer, grid: Image.Image, path: Path, step: int, key: str = "validation/grid") -> None:
    save_image(grid, path)
    log_image(trainer, grid, key, step)


def log_image(trainer, image: Image.Image | Path, key: str, step: int) -> None:
    """`image` (or the image file) to every logger of `trainer` that takes images, under `key` at `step`."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    for logger in trainer.loggers:
        try:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[image], step=step)
            elif type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image(key, np.asarray(image), global_step=step, dataformats="HWC")
            elif type(logger).__name__ == "MLFlowLogger":
                logger.experiment.log_image(logger.run_id, image, key=key, step=step)
        except Exception as err:  # a logger failing to take an image must not stop training
            log.warning("could not log %s to %s: %s", key, type(logger).__name__, err)


def rows_by_prompt(samples: List[dict]) -> List[Tuple[str, List[Image.Image]]]:
    rows: dict = {}
    for sample in samples:
        rows.setdefault(sample["nickname"], []).append(sample["image"])
    return list(rows.items())
