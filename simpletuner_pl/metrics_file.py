"""Reading a run's `metrics.csv` back (the closing summary, the sweep summary): torch-free, one pass per file."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Tuple


def read_logged(metrics: str | os.PathLike, *keys: str) -> Dict[str, List[Tuple[int, float]]]:
    """(step, value) of every row holding each of `keys`, in file order; no file: nothing logged."""
    out: Dict[str, List[Tuple[int, float]]] = {key: [] for key in keys}
    path = Path(metrics)
    if not path.is_file():
        return out
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key in keys:
                if row.get(key):
                    out[key].append((int(row["step"]), float(row[key])))
    return out
