"""Evaluation under DDP counts every example once: Lightning's ``DistributedSampler`` pads
the ranks to equal length by repeating examples, and the module drops the repeats.

The sampler is the real one, built for each rank without starting processes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from genmod.training._distributed import keep_mask, real_count


@pytest.mark.parametrize(("n", "world", "batch"), [(7, 2, 3), (10, 3, 4), (2, 3, 5), (12, 4, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_kept_examples_cover_the_split_exactly_once(n, world, batch, shuffle):
    dataset = torch.arange(n)
    kept = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler)
        real, seen = real_count(loader), 0
        for indices in loader:
            kept.append(indices[keep_mask(seen, len(indices), real, indices.device)])
            seen += len(indices)
        assert seen == len(sampler)  # the padded length: every rank the same
    assert sorted(torch.cat(kept).tolist()) == list(range(n))


def test_without_a_distributed_sampler_nothing_is_dropped():
    loader = DataLoader(torch.arange(5), batch_size=2, sampler=SequentialSampler(range(5)))
    assert real_count(loader) is None
    assert bool(keep_mask(4, 2, None, torch.device("cpu")).all())


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 3), (2, 3)])
def test_ddp_training_batches_partition_the_one_process_batches(n, world):
    from genmod.data.batches import DistributedEpochShuffleSampler, EpochShuffleSampler

    one = EpochShuffleSampler(n, seed=4)
    one.set_epoch(3)
    order = list(one)
    ranks = [DistributedEpochShuffleSampler(n, 4, world, r) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(3)
    shares = [list(sampler) for sampler in ranks]
    assert len({len(share) for share in shares}) == 1  # equal length: DDP stays in step
    merged = [share[k] for k in range(len(shares[0])) for share in shares]
    assert merged[:n] == order  # rank-interleaved: one process's order, then the repeats
    assert set(merged[n:]) <= set(order)
