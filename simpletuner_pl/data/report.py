"""`output_dir/data/buckets.json`: what each dataset trains on and everything it left out, with the reason.

Written by global rank 0 at startup and again when caching dropped images, atomically (a reader never sees a
half-written file). Users read it to see their buckets and why a file was skipped; it is the full list behind the
log's first 20 warnings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List

from simpletuner_pl.data.catalog import DatasetIndex, prune


def bucket_report(catalog: Dict[str, DatasetIndex], steps_per_dataset: List[int], effective: int) -> dict:
    """Per dataset id: `buckets` ("WxH" → images trained on), `skipped` ([{path, reason}]) and the settings."""
    out = {}
    for steps, (name, index) in zip(steps_per_dataset, catalog.items()):
        ds, (kept, dropped) = index.config, prune(index, effective)
        too_small = [{"path": index.samples[i].path,
                      "reason": f"bucket {w}x{h} too small for one batch of {effective}: set "
                                f"data.datasets.{name}.repeats={dropped[(w, h)]} to keep it"}
                     for (w, h), members in index.buckets().items() if (w, h) in dropped for i in members]
        out[name] = {"buckets": {f"{w}x{h}": len(m) for (w, h), m in kept.items()},
                     "skipped": index.skipped + too_small,
                     "images": sum(len(m) for m in kept.values()), "steps_per_epoch": steps,
                     "repeats": ds.repeats, "probability": ds.probability, "resolution": ds.resolution,
                     "resolution_type": ds.resolution_type, "is_regularisation_data": ds.is_regularisation_data}
    return out


def write_json(target: Path, payload: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
