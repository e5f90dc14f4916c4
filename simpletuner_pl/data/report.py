"""`output_dir/data/buckets.json`: what each dataset trains on and everything it left out, with the reason.

Written by global rank 0 at startup and again when caching dropped images, atomically (a reader never sees a
half-written file). Users read it to see their buckets and why a file was skipped; it is the full list behind the
log's first 20 warnings.
"""

from __future__ import annotations

from typing import List

from simpletuner_pl.data.catalog import Catalog
from simpletuner_pl.data.plan import BucketPlan


def bucket_report(catalog: Catalog, plan: BucketPlan, steps_per_dataset: List[int]) -> dict:
    """Per dataset id: `buckets` ("WxH" → images trained on), `skipped` ([{path, reason}]) and the settings."""
    out = {}
    effective = plan.batch.size
    for steps, (name, index) in zip(steps_per_dataset, catalog.items()):
        ds, dataset_plan = index.config, plan.datasets[name]
        too_small = [{"path": index.samples[i].path,
                      "reason": f"bucket {w}x{h} too small for one batch of {effective}: set "
                                f"data.datasets.{name}.repeats={repeats} to keep it"}
                     for (w, h), repeats in dataset_plan.dropped.items() for i in index.buckets()[(w, h)]]
        out[name] = {"buckets": {f"{w}x{h}": len(m) for (w, h), m in dataset_plan.kept.items()},
                     "skipped": index.skipped + too_small,
                     "images": sum(len(m) for m in dataset_plan.kept.values()), "steps_per_epoch": steps,
                     "repeats": ds.repeats, "probability": ds.probability, "resolution": ds.resolution,
                     "resolution_type": ds.resolution_type, "is_regularisation_data": ds.is_regularisation_data}
    return out
