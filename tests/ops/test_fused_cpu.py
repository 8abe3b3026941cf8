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


@pytest.mark.parametrize("wrt", ["x", "y", "s", "lw", "ys"])
def test_fused_backward_for_each_subset_of_inputs(fused_everywhere, wrt):
    """The backward skips the GEMMs of gradients nobody asked for; what it returns is still
    the float64 brute force's gradient (batch dims, weights and exclusions included)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 70, 5, generator=g, dtype=torch.float64) + 2.0
    s = torch.tensor(0.8, dtype=torch.float64)
    lw = torch.randn(2, 70, generator=g, dtype=torch.float64)
    ex = torch.randint(-1, 70, (2, 30), generator=g)
    inputs = {"x": x, "y": y, "s": s, "lw": lw}
    names = ["y", "s"] if wrt == "ys" else [wrt]
    for name in names:
        inputs[name].requires_grad_(True)
    w = torch.randn(2, 30, generator=g, dtype=torch.float64)  # a non-uniform upstream grad
    grads = torch.autograd.grad(
        (pairwise_logsumexp(x, y, s, lw, exclude=ex) * w).sum(), [inputs[n] for n in names]
    )
    # The brute force with a differentiable scale (its helper takes a float).
    d2 = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    a = (lw.unsqueeze(-2) - d2 / (2 * s**2)).masked_fill(
        torch.arange(70) == ex.unsqueeze(-1), float("-inf")
    )
    refs = torch.autograd.grad((torch.logsumexp(a, -1) * w).sum(), [inputs[n] for n in names])
    for got, ref in zip(grads, refs, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
