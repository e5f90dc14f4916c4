"""`before_after.png` (beside `loss.png`): every validation image of the latest round beside its step-0 one.

The first thing a trainer should show is what training changed. Every round after the first rewrites the grid: one
row per prompt and resolution, the base model's image (step 0) on the left, the latest round's on the right. The
earlier images are read back from the earliest round on disk (`validation/step_0/`), so a resumed run still
compares with the base model; the grid also goes to the loggers that take images (`validation/before_after`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import lightning as L
from PIL import Image

from simpletuner_pl.callbacks.image_log import log_grid, make_grid

FILE = "before_after.png"


def earliest_round(root: Path) -> Optional[Tuple[int, Path]]:
    """(step, folder) of the earliest `validation/step_N/` on disk."""
    rounds = [(int(d.name[5:]), d) for d in root.glob("step_*") if d.is_dir() and d.name[5:].isdigit()]
    return min(rounds) if rounds else None


class BeforeAfterGrid(L.Callback):
    def __init__(self, output_dir: Path):
        self.root, self.path = Path(output_dir) / "validation", Path(output_dir) / FILE

    def on_validation_images(self, trainer: L.Trainer, module: L.LightningModule, step: int,
                             samples: List[dict]) -> None:
        first = earliest_round(self.root)
        if first is None or first[0] >= step:
            return
        first_step, folder = first
        rows = []
        for sample in samples:
            before = folder / Path(sample["path"]).name  # same prompt, same size, same seed
            if before.is_file():
                with Image.open(before) as image:
                    rows.append((f"{sample['nickname']} {sample['width']}x{sample['height']}: step {first_step} "
                                 f"| step {step}", [image.convert("RGB"), sample["image"]]))
        if rows:
            log_grid(trainer, make_grid(rows), self.path, step, key="validation/before_after")
