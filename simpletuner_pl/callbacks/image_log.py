"""One labelled grid per validation round (rows: prompts, columns: resolutions), saved and sent to the loggers.

Loggers that take images get it directly (W&B, Neptune, ... via `log_image`; TensorBoard via `add_image`); the
CSV logger cannot hold images, so for it the grid is the `validation/step_N/grid.png` file beside the images.
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
    array = np.asarray(grid)
    for logger in trainer.loggers:
        try:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[grid], step=step)
            elif type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image(key, array, global_step=step, dataformats="HWC")
        except Exception as err:  # a logger failing to take an image must not stop training
            log.warning("could not log the validation grid to %s: %s", type(logger).__name__, err)


def rows_by_prompt(samples: List[dict]) -> List[Tuple[str, List[Image.Image]]]:
    rows: dict = {}
    for sample in samples:
        rows.setdefault(sample["nickname"], []).append(sample["image"])
    return list(rows.items())
