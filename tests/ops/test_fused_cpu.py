"""The compiled CPU fast path gives the same numbers as the float64 brute force."""

from __future__ import annotations

import pytest
import torch

from genmod.ops import _fused, pairwise_logsumexp, set_tile_budget
from tests.conftest import brute_pairwise_logsumexp, nats_error


@pytest.fixture
def fused_everywhere(monkeypatch):
    monkeypatch.setattr(_fused, "MIN_PAIRS", 0)
    set_tile_budget(64 * 1024)  # several tiles per row at these sizes
    yield
    set_tile_budget(None)


def test_fused_forward_matches_brute_force_across_tile_shapes(fused_everywhere):
    g = torch.Generator().manual_seed(3)
    for n, m, d in [(300, 1000, 16), (77, 513, 64), (5, 9, 8)]:
        x = torch.randn(2, n, d, generator=g)
        y = torch.randn(2, m, d, generator=g) + 3.0
        lw = torch.randn(2, m, generator=g)
        ex = torch.randint(-1, m, (2, n), generator=g)
        assert _fused.use_fused(x, n * m)
        out = pairwise_logsumexp(x, y, 0.6, lw, exclude=ex)
        ref = brute_pairwise_logsumexp(x, y, 0.6, lw, exclude=ex)
        assert nats_error(out, ref) < 1e-4


def test_fused_path_backward_still_exact(fused_everywhere):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    lw = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    ex = torch.randint(-1, 50, (40,), generator=g)

    def f(x, y, s, lw):
        return pairwise_logsumexp(x, y, s, lw, exclude=ex)

    assert torch.autograd.gradcheck(f, (x, y, s, lw))
