"""The adaptive-precision criterion: its error estimate bounds the float32 expansion's
actual error, so rows it leaves alone are within DESIGN.md's 1e-4 nats."""

from __future__ import annotations

import pytest
import torch

from genmod.ops import _refine, pairwise_logsumexp
from tests.conftest import brute_pairwise_logsumexp, nats_error


@pytest.mark.parametrize("dim", [5, 16, 64, 128])
@pytest.mark.parametrize("scale", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("std", [0.3, 3.0])
def test_estimate_bounds_the_unrefined_error(monkeypatch, dim, scale, std):
    g = torch.Generator().manual_seed(dim)
    y = std * torch.randn(1000, dim, generator=g) + 0.5
    # Typical queries, and queries a fraction of a bandwidth from a reference point (where
    # the result is small and the expansion's cancellation matters most).
    near = y[:60] + 0.3 * scale * torch.randn(60, dim, generator=g)
    x = torch.cat([std * torch.randn(60, dim, generator=g), near])
    ref = brute_pairwise_logsumexp(x, y, scale)
    monkeypatch.setattr(_refine, "TOL", float("inf"))  # the expansion alone
    raw = pairwise_logsumexp(x, y, scale)
    centre = y.mean(0)
    est = _refine.error_estimate(raw[None], (x - centre)[None], torch.tensor(scale), None, 1000)
    # Besides the expansion, exp / log / sum round at about eps * max(1, |out|).
    slack = 1e-6 * ref.abs().clamp_min(1.0)
    assert bool(((raw.double() - ref).abs() <= est[0] + slack).all())
    monkeypatch.setattr(_refine, "TOL", 5e-5)
    assert nats_error(pairwise_logsumexp(x, y, scale), ref) < 1e-4
