"""Kernel normalisers, variances and samplers against quadrature and scipy.

Also home of the float64 brute-force references the other ``test_kde_*`` files import.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from genmod.models.kernels import (
    KERNELS,
    kernel_variance,
    log_normalizer,
    sample_beta,
    sample_gamma,
    sample_kernel,
)

COMPACT = ("tophat", "epanechnikov", "linear", "cosine")

PROFILES = {
    "gaussian": lambda r: np.exp(-0.5 * r * r),
    "tophat": lambda r: np.where(r < 1, 1.0, 0.0),
    "epanechnikov": lambda r: np.where(r < 1, 1.0 - r * r, 0.0),
    "exponential": lambda r: np.exp(-r),
    "linear": lambda r: np.where(r < 1, 1.0 - r, 0.0),
    "cosine": lambda r: np.where(r < 1, np.cos(0.5 * np.pi * np.minimum(r, 1.0)), 0.0),
}


def _log_k(kernel: str, r: float) -> float:
    if kernel == "gaussian":
        return -0.5 * r * r
    if kernel == "exponential":
        return -r
    value = float(PROFILES[kernel](np.array(r)))
    return math.log(value) if value > 0 else -math.inf


def _radial_log_integral(kernel: str, power: int) -> float:
    """log int_0^inf k(r) r^power dr by adaptive quadrature, scaled to avoid overflow."""
    if kernel in COMPACT:
        upper, peak, shift = 1.0, 1.0, 0.0
    else:
        peak = max(math.sqrt(power) if kernel == "gaussian" else float(power), 1e-3)
        upper = peak + 60.0 + 10.0 * math.sqrt(power + 1.0)
        shift = _log_k(kernel, peak) + power * math.log(peak)

    def f(r: float) -> float:
        if r <= 0.0:
            return 0.0 if power > 0 else math.exp(_log_k(kernel, 0.0) - shift)
        return math.exp(_log_k(kernel, r) + power * math.log(r) - shift)

    points = [peak] if 0 < peak < upper else None
    value, _ = integrate.quad(f, 0.0, upper, points=points, limit=400, epsabs=0, epsrel=1e-12)
    return math.log(value) + shift


def radial_log_normalizer(kernel: str, dim: int) -> float:
    """log C_{k,D} = log(area of the unit sphere) + log int k(r) r^{D-1} dr, independently."""
    log_area = math.log(2.0) + 0.5 * dim * math.log(math.pi) - special.gammaln(0.5 * dim)
    return log_area + _radial_log_integral(kernel, dim - 1)


def log_profile(r: torch.Tensor, kernel: str) -> torch.Tensor:
    """log k(r) in float64 with -inf outside compact supports (plain formulas)."""
    inside = r < 1
    ninf = torch.full_like(r, -math.inf)
    rc = r.clamp(max=1.0)
    return {
        "gaussian": lambda: -0.5 * r * r,
        "exponential": lambda: -r,
        "tophat": lambda: torch.where(inside, torch.zeros_like(r), ninf),
        "epanechnikov": lambda: torch.where(inside, torch.log(1 - rc * rc), ninf),
        "linear": lambda: torch.where(inside, torch.log(1 - rc), ninf),
        "cosine": lambda: torch.where(inside, torch.log(torch.cos(0.5 * math.pi * rc)), ninf),
    }[kernel]()


def brute_log_density(x, data, h, kernel, weights=None, log_norm=None, leave_one_out=False):
    """float64 brute force: log sum_j w_j k(||(x_i - y_j) / h||) / (C prod h), broadcasting.

    With ``leave_one_out`` (x is data) the j = i term is dropped and the weights renormalised.
    """
    x, data = x.double(), data.double()
    h = torch.as_tensor(h, dtype=torch.float64)
    dim = data.shape[1]
    w = torch.ones(data.shape[0], dtype=torch.float64) if weights is None else weights.double()
    r = ((x[:, None, :] - data[None, :, :]) / h).pow(2).sum(-1).sqrt()
    terms = log_profile(r, kernel) + torch.log(w)[None, :]
    total = w.sum().expand(x.shape[0])
    if leave_one_out:
        terms = terms.masked_fill(torch.eye(x.shape[0], dtype=torch.bool), -math.inf)
        total = total - w
    log_det = h.log().sum() if h.dim() else dim * h.log()
    norm = radial_log_normalizer(kernel, dim) if log_norm is None else log_norm
    return torch.logsumexp(terms, dim=1) - torch.log(total) - norm - log_det


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("kernel", KERNELS)
def test_log_normalizer_matches_radial_quadrature(kernel, dim):
    assert log_normalizer(kernel, dim) == pytest.approx(
        radial_log_normalizer(kernel, dim), rel=1e-10, abs=1e-10
    )


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_cosine_normalizer_closed_forms(dim):
    # Independent closed forms of int_{R^D} cos(pi ||u|| / 2) [||u|| < 1] du.
    expected = {1: 4 / math.pi, 2: 4 * (math.pi - 2) / math.pi, 3: 8 - 64 / math.pi**2}
    sphere = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    moment, _ = integrate.quad(
        lambda r: math.cos(math.pi * r / 2) * r ** (dim - 1), 0, 1, epsrel=1e-13
    )
    assert math.exp(log_normalizer("cosine", dim)) == pytest.approx(sphere * moment, rel=1e-12)
    if dim in expected:
        assert math.exp(log_normalizer("cosine", dim)) == pytest.approx(expected[dim], rel=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_log_normalizer_large_dim_is_finite_and_consistent(kernel):
    for dim in (64, 512, 3072):
        value = log_normalizer(kernel, dim)
        assert math.isfinite(value)
    assert log_normalizer(kernel, 512) == pytest.approx(
        radial_log_normalizer(kernel, 512), rel=1e-9
    )


@pytest.mark.parametrize("dim", [1, 2, 5, 64])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_variance_matches_quadrature(kernel, dim):
    log_ratio = _radial_log_integral(kernel, dim + 1) - _radial_log_integral(kernel, dim - 1)
    assert kernel_variance(kernel, dim) == pytest.approx(math.exp(log_ratio) / dim, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5, 64.0])
def test_sample_gamma_matches_scipy(alpha):
    g = torch.Generator().manual_seed(1)
    draws = sample_gamma(20000, alpha, g).numpy()
    assert stats.kstest(draws, stats.gamma(alpha).cdf).pvalue > 1e-3
    assert draws.mean() == pytest.approx(alpha, rel=0.05)


@pytest.mark.parametrize(("a", "b"), [(0.5, 2.0), (32.0, 2.0), (2.0, 3.0)])
def test_sample_beta_matches_scipy(a, b):
    draws = sample_beta(20000, a, b, torch.Generator().manual_seed(2)).numpy()
    assert stats.kstest(draws, stats.beta(a, b).cdf).pvalue > 1e-3


def _radius_cdf(kernel: str, dim: int):
    total = math.exp(_radial_log_integral(kernel, dim - 1))

    def cdf(r):
        r = np.atleast_1d(r)
        out = [
            integrate.quad(lambda s: float(PROFILES[kernel](np.array(s))) * s ** (dim - 1), 0, v)[0]
            for v in r
        ]
        return np.array(out) / total

    return cdf


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_kernel_radius_distribution(kernel, dim):
    u = sample_kernel(kernel, 2000, dim, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert u.shape == (2000, dim) and u.dtype == torch.float64
    radius = u.norm(dim=1).numpy()
    assert stats.kstest(radius, _radius_cdf(kernel, dim)).pvalue > 1e-3
    if kernel in COMPACT:
        assert radius.max() <= 1.0


@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_kernel_covariance_and_symmetry(kernel):
    dim = 4
    u = sample_kernel(kernel, 40000, dim, torch.Generator().manual_seed(4), dtype=torch.float64)
    var = kernel_variance(kernel, dim)
    cov = torch.cov(u.T)
    assert torch.allclose(
        u.mean(0), torch.zeros(dim, dtype=torch.float64), atol=5 * math.sqrt(var / 40000) + 1e-12
    )
    assert torch.allclose(
        cov, var * torch.eye(dim, dtype=torch.float64), atol=6 * var * math.sqrt(2 / 40000)
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_sampling_is_seeded_and_uses_only_the_generator(kernel):
    a = sample_kernel(kernel, 50, 3, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global generator must not matter
    b = sample_kernel(kernel, 50, 3, torch.Generator().manual_seed(5))
    c = sample_kernel(kernel, 50, 3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_kernel(kernel, 0, 3).shape == (0, 3)


def test_kernel_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        log_normalizer("triangle", 2)
    with pytest.raises(ValueError, match="dim"):
        log_normalizer("gaussian", 0)
    with pytest.raises(ValueError, match="concentration"):
        sample_gamma(3, -1.0)
    with pytest.raises(ValueError, match="n must"):
        sample_kernel("gaussian", -1, 2)
