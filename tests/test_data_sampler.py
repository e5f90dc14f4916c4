"""The bucket batch sampler: one bucket per batch, DDP shards, repeats, dataset weights, resumable order."""

from collections import Counter

import numpy as np
import pytest

from simpletuner_pl.data.sampler import BucketBatchSampler, WeightedDataset


def layout(*datasets):
    """Bucket sizes per dataset → global indices, consecutive across buckets and datasets."""
    out, start = [], 0
    for sizes in datasets:
        buckets = []
        for size in sizes:
            buckets.append(list(range(start, start + size)))
            start += size
        out.append(buckets)
    return out


def make_sampler(buckets, repeats, probabilities, **kwargs) -> BucketBatchSampler:
    datasets = [WeightedDataset(b, r, p) for b, r, p in zip(buckets, repeats, probabilities)]
    return BucketBatchSampler(datasets, **kwargs)


def bucket_of(buckets):
    return {i: (d, b) for d, ds in enumerate(buckets) for b, members in enumerate(ds) for i in members}


def test_every_batch_is_one_bucket_of_one_dataset():
    buckets = layout([5, 9, 3], [4, 4])
    where = bucket_of(buckets)
    sampler = make_sampler(buckets, [0, 1], [1.0, 1.0], batch_size=2, seed=0)
    requests = list(sampler)
    assert len(requests) == len(sampler) == (3 + 5 + 2) + 2 * (2 + 2)
    for request in requests:
        assert len(request.indices) == 2
        homes = {where[i] for i in request.indices}
        assert len(homes) == 1 and next(iter(homes))[0] == request.dataset
    assert [r.position for r in requests] == list(range(len(requests)))


def test_rank_shards_are_disjoint_cover_every_bucket_and_stay_in_step():
    buckets = layout([7, 12, 30], [2])
    where = bucket_of(buckets)
    samplers = [make_sampler(buckets, [0, 3], [1.0, 1.0], batch_size=2, seed=5, rank=r, world_size=3)
                for r in range(3)]
    epochs = [list(s) for s in samplers]
    assert len({len(e) for e in epochs}) == 1, "every rank makes the same number of steps"
    for step in zip(*epochs):
        assert len({(r.dataset, where[r.indices[0]]) for r in step}) == 1, "ranks train the same bucket each step"
    seen = [{i for r in e for i in r.indices if r.dataset == 0} for e in epochs]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert set().union(*seen) == set(range(49))
    small = [{i for r in e for i in r.indices if r.dataset == 1} for e in epochs]
    assert set().union(*small) == {49, 50}, "a bucket smaller than the rank count is shared, not lost"


def test_repeats_are_extra_passes():
    sampler = make_sampler(layout([10]), [2], [1.0], batch_size=2, seed=1)
    requests = list(sampler)
    assert len(requests) == 15
    assert Counter(i for r in requests for i in r.indices) == {i: 3 for i in range(10)}
    passes = [sorted(i for r in requests[k:k + 5] for i in r.indices) for k in (0, 5, 10)]
    assert passes == [list(range(10))] * 3, "each pass sees every image once"


def test_dataset_weights_are_probability_times_length():
    def share_of_b(sizes_a, sizes_b, p_b):
        sampler = make_sampler(layout(sizes_a, sizes_b), [0, 0], [1.0, p_b], batch_size=1, seed=3)
        order = sampler.dataset_order(0)
        both_active = order[: int(np.nonzero(order == 1)[0][-1].clip(max=np.nonzero(order == 0)[0][-1]))]
        return float(np.mean(both_active == 1))

    assert share_of_b([400], [400], 1.0) == pytest.approx(0.5, abs=0.05)
    assert share_of_b([600], [200], 1.0) == pytest.approx(0.25, abs=0.05)  # auto-weighting by length
    assert share_of_b([400], [400], 0.25) == pytest.approx(0.2, abs=0.05)  # 0.25 × 400 / (400 + 0.25 × 400)
    never = make_sampler(layout([4], [4]), [0, 0], [1.0, 0.0], batch_size=1, seed=3)
    assert {r.dataset for r in never} == {0} and len(never) == 4


def test_order_is_deterministic_per_epoch_and_resumable():
    buckets = layout([6, 5], [3])
    first = make_sampler(buckets, [1, 0], [1.0, 1.0], batch_size=2, seed=9)
    epoch0, epoch1 = list(first), list(first)
    assert [r.epoch for r in epoch1] == [1] * len(epoch1) and epoch0 != epoch1
    resumed = make_sampler(buckets, [1, 0], [1.0, 1.0], batch_size=2, seed=9)
    resumed.set_start(0, 4)
    assert list(resumed) == epoch0[4:], "a resume continues the epoch instead of replaying it"
    assert list(resumed) == epoch1
    wrapped = make_sampler(buckets, [1, 0], [1.0, 1.0], batch_size=2, seed=9)
    wrapped.set_start(0, len(epoch0))
    assert list(wrapped) == epoch1
    other_seed = list(make_sampler(buckets, [1, 0], [1.0, 1.0], batch_size=2, seed=10))
    assert other_seed != epoch0
