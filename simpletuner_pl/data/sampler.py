"""Which images form each batch: one bucket of one dataset per batch, datasets interleaved by weight.

Epoch: every enabled dataset makes `repeats + 1` passes; in a pass every image of its rank's shard is seen once
(a bucket's last batch is topped up with random images of the same bucket). Steps per epoch = sum over datasets
of passes × batches per pass. Datasets are interleaved so that, while several still have batches left, each
step draws dataset d with probability ∝ probability_d × batches_d (SimpleTuner's auto-weighting); a dataset
drops out when its passes are used up. The whole order is a pure function of (seed, epoch), so a resume restarts
at the saved (epoch, position) instead of replaying the epoch, and every rank takes the same dataset and bucket
at every step.

DDP: each bucket is shuffled once by (seed, dataset, bucket) and dealt round-robin to ranks — shards are disjoint
and cover the bucket — and every rank makes the same number of batches, so no rank waits on another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class WeightedDataset:
    """One dataset as the sampler sees it: its buckets (lists of global sample indices), repeats and weight."""

    buckets: Sequence[Sequence[int]]
    repeats: int = 0
    probability: float = 1.0


@dataclass(frozen=True)
class BatchRequest:
    indices: Tuple[int, ...]  # global sample indices, all in one bucket of one dataset
    dataset: int
    epoch: int
    position: int  # step within the epoch


class BucketBatchSampler(DistributedSampler):
    """Yields `BatchRequest`s. A `DistributedSampler` subclass only so Lightning does not wrap it in another
    (it leaves DistributedSampler instances alone); the sharding is done here."""

    def __init__(self, datasets: Sequence[WeightedDataset], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.num_replicas, self.rank, self.seed, self.shuffle, self.drop_last = world_size, rank, seed, True, False
        self.batch_size = batch_size
        self.repeats, self.probabilities = [d.repeats for d in datasets], [d.probability for d in datasets]
        self.shards: List[List[np.ndarray]] = []
        self.batches_per_pass: List[List[int]] = []
        for d, dataset in enumerate(datasets):
            shards, counts = [], []
            for b, members in enumerate(dataset.buckets):
                order = np.random.default_rng([seed, d, b]).permutation(np.asarray(members, dtype=np.int64))
                shards.append(order[rank::world_size] if len(order) >= world_size else order[[rank % len(order)]])
                counts.append(max(1, math.ceil(len(order) / (world_size * batch_size))))
            self.shards.append(shards)
            self.batches_per_pass.append(counts)
        self.epoch, self.position = 0, 0
        self._orders: Dict[int, np.ndarray] = {}

    def steps_per_dataset(self) -> List[int]:
        return [(r + 1) * sum(c) if p > 0 else 0
                for r, c, p in zip(self.repeats, self.batches_per_pass, self.probabilities)]

    def __len__(self) -> int:
        return sum(self.steps_per_dataset())

    def dataset_order(self, epoch: int) -> np.ndarray:
        """Dataset number for each step of `epoch`: a weighted random interleave (see module docstring)."""
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch, 1])
            labels, keys = [], []
            for d, (steps, p) in enumerate(zip(self.steps_per_dataset(), self.probabilities)):
                if steps:
                    labels.append(np.full(steps, d, dtype=np.int32))
                    keys.append((np.arange(steps) + rng.random(steps)) / (steps * p))
            order = np.concatenate(labels)[np.argsort(np.concatenate(keys), kind="stable")] if labels else []
            self._orders = {epoch: np.asarray(order, dtype=np.int32)}
        return self._orders[epoch]

    def pass_batches(self, dataset: int, epoch: int, pass_number: int) -> List[np.ndarray]:
        """This rank's batches for one pass over `dataset`, in training order."""
        mine = np.random.default_rng([self.seed, epoch, dataset, pass_number, self.rank])
        shared = np.random.default_rng([self.seed, epoch, dataset, pass_number])
        batches = []
        for shard, count in zip(self.shards[dataset], self.batches_per_pass[dataset]):
            need = count * self.batch_size
            items = mine.permutation(shard)
            if len(items) < need:
                items = np.concatenate([items, mine.choice(shard, need - len(items))])
            batches.extend(np.split(items[:need], count))
        return [batches[i] for i in shared.permutation(len(batches))]

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, start = self.epoch, self.position
        order = self.dataset_order(epoch)
        done = np.bincount(order[:start], minlength=len(self.shards)).tolist()
        per_pass = [sum(c) for c in self.batches_per_pass]
        current: Dict[int, Tuple[int, List[np.ndarray]]] = {}
        for position in range(start, len(order)):
            d = int(order[position])
            pass_number, k = divmod(done[d], per_pass[d])
            if current.get(d, (None,))[0] != pass_number:
                current[d] = (pass_number, self.pass_batches(d, epoch, pass_number))
            done[d] += 1
            yield BatchRequest(tuple(int(i) for i in current[d][1][k]), d, epoch, position)
        self.epoch, self.position = epoch + 1, 0

    def set_start(self, epoch: int, position: int) -> None:
        """Continue from `position` of `epoch` (what a checkpoint saved as consumed)."""
        if position >= len(self):
            epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch; the sampler counts its own epochs (they survive a resume)."""
