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
