"""The bucket plan: which buckets of each dataset can make full batches, computed once per run (per world size).

A bucket needs count × (repeats + 1) images for one batch on every rank in every accumulation step; smaller buckets
are dropped (with the repeats that would keep them, for the warning and `buckets.json`). A dataset with no bucket
left is a `DataError`. The warning is logged when the plan is made, so each dropped bucket is reported once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

from simpletuner_pl.config.schema import TrainConfig
from simpletuner_pl.errors import DataError

log = logging.getLogger(__name__)
Bucket = Tuple[int, int]
Buckets = Dict[Bucket, List[int]]  # bucket (W, H) → indices into the dataset's samples


@dataclass(frozen=True)
class EffectiveBatch:
    size: int  # images one optimizer step consumes across ranks and accumulation
    world: int
    spelled: str  # the same, spelled out for messages

    @classmethod
    def of(cls, train: TrainConfig, world: int) -> "EffectiveBatch":
        size = train.batch_size * world * train.gradient_accumulation_steps
        return cls(size, world, f"train.batch_size × ranks × gradient_accumulation_steps = {train.batch_size} × "
                                f"{world} × {train.gradient_accumulation_steps} = {size}")


@dataclass
class DatasetPlan:
    kept: Dict[Bucket, List[int]]  # bucket (W, H) → indices into the dataset's samples
    dropped: Dict[Bucket, int] = field(default_factory=dict)  # bucket → repeats that would keep it


@dataclass
class BucketPlan:
    batch: EffectiveBatch
    datasets: Dict[str, DatasetPlan]


def repeats_needed(count: int, effective_batch: int) -> int:
    return max(0, math.ceil(effective_batch / count) - 1)


def plan_dataset(name: str, buckets: Buckets, repeats: int, batch: EffectiveBatch) -> DatasetPlan:
    if not buckets:
        raise DataError(f"no images detected in dataset {name}: none of its images is usable "
                        f"(every one is listed with its reason in <output_dir>/data/buckets.json)")
    plan = DatasetPlan({})
    for bucket, members in buckets.items():
        if len(members) * (repeats + 1) >= batch.size:
            plan.kept[bucket] = members
        else:
            plan.dropped[bucket] = repeats_needed(len(members), batch.size)
    if not plan.kept:
        usable = sum(len(m) for m in buckets.values())
        raise DataError(f"no images detected in dataset {name} ({usable} usable): "
                        + describe_dropped(name, buckets, plan.dropped, batch))
    if plan.dropped:
        log.warning("dataset %s: %s — they are not trained on", name,
                    describe_dropped(name, buckets, plan.dropped, batch))
    return plan


def plan_buckets(datasets: Mapping[str, Tuple[Buckets, int]], batch: EffectiveBatch) -> BucketPlan:
    """`datasets`: id → (its buckets, its repeats)."""
    return BucketPlan(batch, {name: plan_dataset(name, buckets, repeats, batch)
                              for name, (buckets, repeats) in datasets.items()})


def describe_dropped(name: str, buckets: Buckets, dropped: Dict[Bucket, int], batch: EffectiveBatch) -> str:
    sizes = {b: len(m) for b, m in buckets.items()}
    listed = ", ".join(f"{w}x{h} ({sizes[(w, h)]} image{'s' * (sizes[(w, h)] != 1)})" for w, h in dropped)
    return (f"bucket(s) {listed} have fewer images × (repeats + 1) than {batch.spelled}; set "
            f"data.datasets.{name}.repeats={max(dropped.values())} to keep them (or lower train.batch_size)")
