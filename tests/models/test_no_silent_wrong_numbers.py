"""Extreme inputs give the float64 brute-force value or a clear error, never NaN or a
silently wrong number: tiny bandwidths, data far from the origin, rank-deficient data,
numpy scalars as bandwidths, meta tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genmod import KDE, Gaussian
from genmod.models.kernels import KERNELS
from genmod.ops import min_scale, pairwise_logsumexp
from tests.conftest import brute_pairwise_logsumexp, nats_error
from tests.models.test_kde_kernels import brute_log_density


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_bandwidth_below_float32s_range_is_a_clear_error(kernel, gen):
    data = torch.randn(100, 2, generator=gen)
    with pytest.raises(ValueError, match=r"bandwidth 1e-20 is below the smallest float32"):
        KDE(data, bandwidth=1e-20, kernel=kernel).log_prob(data[:1])
    with pytest.raises(ValueError, match=r"scale=1e-30 is below the smallest float32"):
        pairwise_logsumexp(data[:3], data, scale=1e-30, kernel=kernel)
    model = KDE(data.double(), bandwidth=1e-20, kernel=kernel)  # float64 computes it
    expected = brute_log_density(data[:1], data, 1e-20, kernel)
    torch.testing.assert_close(model.log_prob(data[:1].double()), expected, rtol=1e-12, atol=0)
    assert 1e-19 < min_scale(torch.float32) < 2e-19 and min_scale(torch.float64) < 1e-150


@pytest.mark.parametrize("dim", [2, 16, 64])
@pytest.mark.parametrize("spread", [1.0, 1e4])
@pytest.mark.parametrize("scale", [1e-7, 1e-15, 2e-19])
def test_tiny_scales_match_brute_force_in_both_dtypes(dim, spread, scale, gen):
    """The GEMM expansion |x|^2 + |y|^2 - 2 x.y cancels to garbage (even in float64: +-4e15
    at D = 16, h = 1e-15) and overflows to NaN in float32: such rows are recomputed."""
    y = torch.randn(150, dim, generator=gen, dtype=torch.float64) * spread
    x = torch.cat([y[:4], y[4:8] + scale * torch.randn(4, dim, generator=gen, dtype=y.dtype)])
    for dtype in (torch.float64, torch.float32):
        xd, yd = x.to(dtype), y.to(dtype)
        expected = brute_pairwise_logsumexp(xd, yd, scale)  # of the rounded points
        out = pairwise_logsumexp(xd, yd, scale)
        # float64: the result's own conditioning, eps |x| / s, allows ~1e-9 at s = 1e-7.
        assert nats_error(out, expected) < (1e-6 if dtype == torch.float64 else 1e-4), dtype


def test_tiny_scale_gradients_are_finite(gen):
    y = torch.randn(100, 16, generator=gen) * 1e4
    x = y[:5].clone().requires_grad_(True)
    scale = torch.tensor(1e-15, requires_grad=True)
    pairwise_logsumexp(x, y, scale).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(scale.grad)


def test_gaussian_refuses_a_mean_its_dtype_cannot_hold(gen):
    x = torch.randn(1000, 2, generator=gen, dtype=torch.float64) + 1e8 + 3
    with pytest.raises(ValueError, match=r"mean of dimension \d .* float32 parameters"):
        Gaussian(2).fit(x)
    model = Gaussian(2).double().fit(x)
    centred = x - x.mean(0)
    reference = Gaussian(2).double().fit(centred).nll(centred)
    assert float(model.nll(x).detach()) == pytest.approx(float(reference.detach()), rel=1e-9)
    near = torch.randn(1000, 2, generator=gen) + 100.0  # float32 holds that mean: fits
    assert float(Gaussian(2).fit(near).nll(near).detach()) == pytest.approx(2.84, abs=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_deficient_data_is_detected_in_both_dtypes(dtype, gen):
    x = torch.randn(1000, 2, generator=gen, dtype=dtype)
    x = torch.cat([x, x[:, :1] + x[:, 1:]], dim=1)
    with pytest.raises(ValueError, match="singular covariance"):
        Gaussian(3, "full").to(dtype).fit(x)
    nearly = x + 1e-3 * torch.randn(1000, 3, generator=gen, dtype=dtype)  # real spread: fits
    Gaussian(3, "full").to(dtype).fit(nearly)
    Gaussian(3, "full", min_variance=1e-4).to(dtype).fit(x)  # a floor: fits


@pytest.mark.parametrize(
    "bandwidth",
    [np.float32(0.5), np.float64(0.5), np.int32(2), np.int64(2), np.array(0.5), 2,
     torch.tensor(0.5), torch.tensor(2)],
    ids=lambda b: f"{type(b).__module__}.{type(b).__name__}",
)  # fmt: skip
def test_every_real_number_is_a_bandwidth(bandwidth, gen):
    data = torch.randn(50, 2, generator=gen)
    model = KDE(data, bandwidth=bandwidth)
    assert float(model.bandwidth) == pytest.approx(float(bandwidth), rel=1e-6)


@pytest.mark.parametrize("bad", [True, np.bool_(True), torch.tensor(True), "wide"])
def test_non_numbers_are_not_bandwidths(bad, gen):
    with pytest.raises(ValueError, match="bandwidth"):
        KDE(torch.randn(50, 2, generator=gen), bandwidth=bad)


def test_meta_tensors_are_a_clear_error(gen):
    data = torch.randn(50, 2, generator=gen)
    meta = torch.empty(3, 2, device="meta")
    for call in (KDE(data, 0.5).log_prob, Gaussian(2).log_prob):
        with pytest.raises(ValueError, match="x is on the meta device"):
            call(meta)
    with pytest.raises(ValueError, match="x is on the meta device"):
        pairwise_logsumexp(meta, data)
