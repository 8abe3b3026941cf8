"""KDE.log_prob against a float64 brute force, scikit-learn, scipy and quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.neighbors import KernelDensity

from genmod.models.bandwidth import rule_bandwidth
from genmod.models.kde import KDE
from genmod.models.kernels import KERNELS
from tests.models.test_kde_kernels import COMPACT, brute_log_density, radial_log_normalizer

BANDWIDTHS = [0.01, 0.1, 1.0, "scott", "silverman"]
_NORM = {(k, d): radial_log_normalizer(k, d) for k in KERNELS for d in (1, 2, 3, 64)}


def _problem(dim: int, weighted: bool, seed: int = 0, zero_weights: bool = True):
    g = torch.Generator().manual_seed(seed + dim)
    data = torch.randn(200, dim, generator=g, dtype=torch.float64) * 1.5 + 0.3
    weights = torch.rand(200, generator=g, dtype=torch.float64) if weighted else None
    if weighted and zero_weights:
        weights[:20] = 0.0  # zero-weight rows are allowed and must not count
    return data, weights, g


def _queries(data, h, g):
    """25 fresh points and 25 points within 0.5 h of a reference point (finite for every
    kernel)."""
    fresh = torch.randn(25, data.shape[1], generator=g, dtype=torch.float64) * 1.5
    step = torch.randn(25, data.shape[1], generator=g, dtype=torch.float64)
    step = step / step.norm(dim=1, keepdim=True) * 0.5 * h
    return torch.cat([fresh, data[30:55] + step])


def _assert_close(actual, expected, rtol):
    both_inf = torch.isneginf(actual) & torch.isneginf(expected)
    assert torch.equal(torch.isneginf(actual), torch.isneginf(expected))
    a, e = actual[~both_inf], expected[~both_inf]
    assert torch.all((a - e).abs() <= rtol * e.abs().clamp_min(1.0)), (a - e).abs().max()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 64])
@pytest.mark.parametrize("bandwidth", BANDWIDTHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_log_prob_matches_float64_brute_force(kernel, bandwidth, dim, weighted):
    data, weights, g = _problem(dim, weighted)
    model = KDE(data, bandwidth=bandwidth, kernel=kernel, weights=weights)
    h = float(model.bandwidth)
    if isinstance(bandwidth, str):
        w = None if weights is None else weights
        assert h == pytest.approx(float(rule_bandwidth(data, bandwidth, w)), rel=1e-12)
    x = _queries(data, h, g)
    expected = brute_log_density(x, data, h, kernel, weights, _NORM[(kernel, dim)])
    assert torch.isfinite(expected[25:]).all()
    out = model.log_prob(x)
    assert out.shape == (50,) and out.dtype == torch.float64
    _assert_close(out, expected, 1e-10)
    if dim <= 3:
        # float32 end to end stays within the op's 1e-4 relative accuracy.
        model32 = KDE(data.float(), bandwidth=h, kernel=kernel, weights=weights)
        _assert_close(model32.log_prob(x.float()).double(), expected, 1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_diagonal_bandwidth_matches_brute_force(kernel, weighted):
    data, weights, g = _problem(3, weighted)
    h = torch.tensor([0.4, 1.1, 2.5], dtype=torch.float64)
    model = KDE(data, bandwidth=h, kernel=kernel, weights=weights, bandwidth_type="diagonal")
    x = _queries(data, 0.4, g)
    expected = brute_log_density(x, data, h, kernel, weights, _NORM[(kernel, 3)])
    _assert_close(model.log_prob(x), expected, 1e-10)
    # Equal per-dimension bandwidths give the isotropic model.
    iso = KDE(data, bandwidth=0.7, kernel=kernel, weights=weights)
    diag = KDE(data, bandwidth=[0.7] * 3, kernel=kernel, weights=weights, bandwidth_type="diagonal")
    _assert_close(diag.log_prob(x), iso.log_prob(x), 1e-12)


def _sklearn_cosine_log_norm(dim: int) -> float:
    """scikit-learn's cosine constant (``_log_kernel_norm``). The exact radial moment obeys
    ``I_n = 1/a - n (n - 1) / a^2 I_{n-2}`` (``a = pi/2``), ending at ``I_0 = 1/a`` for odd D
    but at ``I_1 = 1/a - 1/a^2`` for even D; sklearn's sum ends at ``1/a`` for both, so its
    constant is wrong in even D (D = 2: ``4`` instead of ``4 (pi - 2) / pi``)."""
    factor, tmp = 0.0, 2.0 / math.pi
    for k in range(1, dim + 1, 2):
        factor += tmp
        tmp *= -(dim - k) * (dim - k - 1) * (2.0 / math.pi) ** 2
    log_sphere = math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)
    return math.log(factor) + log_sphere


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_scikit_learn_kernel_density(kernel, dim, weighted):
    data, weights, g = _problem(dim, weighted, seed=7)
    h = 0.8
    x = _queries(data, h, g)
    sk = KernelDensity(kernel=kernel, bandwidth=h, rtol=0.0, atol=0.0)
    sk.fit(data.numpy(), sample_weight=None if weights is None else weights.numpy())
    with np.errstate(divide="ignore"):
        expected = torch.from_numpy(sk.score_samples(x.numpy()))
    out = KDE(data, bandwidth=h, kernel=kernel, weights=weights).log_prob(x)
    # Where no kernel reaches, sklearn's tree returns log(round-off) (about -36) instead of
    # -inf; the brute force confirms that -inf is exact there.
    zero = torch.isneginf(out)
    brute = brute_log_density(x[zero], data, h, kernel, weights, _NORM[(kernel, dim)])
    assert torch.isneginf(brute).all() and (expected[zero] < -30).all()
    if kernel == "cosine" and dim % 2 == 0:
        offset = _sklearn_cosine_log_norm(dim) - _NORM[("cosine", dim)]
        assert abs(offset) > 0.5  # sklearn's constant is off; ours integrates to one (below)
        expected = expected + offset
    _assert_close(out[~zero], expected[~zero], 1e-8)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("h", [0.05, 0.3, 2.0])
def test_matches_scipy_gaussian_kde_in_one_dimension(h, weighted):
    data, weights, g = _problem(1, weighted, seed=3, zero_weights=False)  # scipy: w > 0
    x = _queries(data, h, g)
    w = None if weights is None else weights.numpy()
    ref = stats.gaussian_kde(data[:, 0].numpy(), bw_method=1.0, weights=w)
    ref.set_bandwidth(h / math.sqrt(float(ref.covariance[0, 0])))
    assert float(ref.covariance[0, 0]) == pytest.approx(h * h, rel=1e-12)
    expected = torch.from_numpy(ref.logpdf(x[:, 0].numpy()))
    _assert_close(KDE(data, bandwidth=h, weights=weights).log_prob(x), expected, 1e-9)


def test_matches_scipy_gaussian_kde_on_whitened_data_in_three_dimensions():
    g = torch.Generator().manual_seed(11)
    raw = torch.randn(300, 3, generator=g, dtype=torch.float64)
    centred = raw - raw.mean(0)
    # Whiten exactly so the sample covariance is I and scipy's kernel covariance is h^2 I.
    chol = torch.linalg.cholesky(torch.cov(centred.T))
    data = torch.linalg.solve_triangular(chol, centred.T, upper=False).T
    h = 0.45
    ref = stats.gaussian_kde(data.T.numpy(), bw_method=h)
    assert np.allclose(ref.covariance, h * h * np.eye(3), atol=1e-12)
    x = _queries(data, h, g)
    expected = torch.from_numpy(ref.logpdf(x.T.numpy()))
    _assert_close(KDE(data, bandwidth=h).log_prob(x), expected, 1e-9)


def _breakpoints(data_1d, h):
    return sorted({float(v) for c in data_1d for v in (c - h, c, c + h)})


@pytest.mark.parametrize("kernel", KERNELS)
def test_density_integrates_to_one_in_one_dimension(kernel):
    g = torch.Generator().manual_seed(5)
    data = torch.randn(12, 1, generator=g, dtype=torch.float64)
    weights = torch.rand(12, generator=g, dtype=torch.float64)
    model = KDE(data, bandwidth=0.3, kernel=kernel, weights=weights)

    def density(t: float) -> float:
        return math.exp(float(model.log_prob(torch.tensor([[t]], dtype=torch.float64))))

    reach = 0.3 * (60.0 if kernel == "exponential" else 12.0)
    lo, hi = float(data.min()) - reach, float(data.max()) + reach
    cuts = [lo, *_breakpoints(data[:, 0].tolist(), 0.3), hi]
    total = sum(
        integrate.quad(density, a, b, epsabs=1e-13)[0]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    )
    assert total == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_density_integrates_to_one_in_two_dimensions(kernel):
    g = torch.Generator().manual_seed(6)
    data = torch.randn(6, 2, generator=g, dtype=torch.float64) * 0.5
    h = 0.4
    model = KDE(data, bandwidth=h, kernel=kernel)
    reach = h * (40.0 if kernel == "exponential" else 8.0)
    n = 401
    axis = torch.linspace(-1.5 - reach, 1.5 + reach, n, dtype=torch.float64)
    step = float(axis[1] - axis[0])
    grid = torch.cartesian_prod(axis, axis)
    total = float(model.log_prob(grid).exp().sum()) * step * step
    # Midpoint sums converge at O(step) across the discontinuous tophat edge, O(step^2) else.
    tol = 2e-3 if kernel == "tophat" else 1e-4
    assert total == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("kernel", COMPACT)
def test_compact_kernels_give_minus_inf_outside_the_support(kernel):
    data = torch.zeros(3, 2, dtype=torch.float64)
    model = KDE(data, bandwidth=0.5, kernel=kernel)
    out = model.log_prob(torch.tensor([[0.0, 0.49], [0.0, 0.51], [3.0, 0.0]], dtype=torch.float64))
    assert math.isfinite(float(out[0])) and torch.isneginf(out[1:]).all()


def test_far_queries_are_finite_and_exact_for_the_gaussian_kernel():
    data = torch.randn(50, 2, dtype=torch.float64)
    model = KDE(data, bandwidth=0.1)
    x = torch.tensor([[60.0, -40.0]], dtype=torch.float64)
    expected = brute_log_density(x, data, 0.1, "gaussian", log_norm=_NORM[("gaussian", 2)])
    out = model.log_prob(x)
    assert torch.isfinite(out).all() and float(out) < -1e5
    _assert_close(out, expected, 1e-12)


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradient_wrt_log_bandwidth_matches_finite_differences(kernel, bandwidth_type):
    g = torch.Generator().manual_seed(9)
    data = torch.randn(40, 2, generator=g, dtype=torch.float64)
    h = 1.2 if bandwidth_type == "isotropic" else [1.0, 1.4]
    model = KDE(data, h, kernel, bandwidth_type=bandwidth_type, learn_bandwidth=True)
    x = data[:10] + 0.1
    model.log_prob(x).sum().backward()
    grad = model.log_bandwidth.grad.clone()
    base = model.log_bandwidth.detach().clone()
    for k in range(base.numel()):
        step = torch.zeros_like(base).reshape(-1)
        step[k] = 1e-6
        step = step.reshape(base.shape)
        with torch.no_grad():
            model.log_bandwidth.copy_(base + step)
            up = model.log_prob(x).sum()
            model.log_bandwidth.copy_(base - step)
            down = model.log_prob(x).sum()
        assert float(grad.reshape(-1)[k]) == pytest.approx(float(up - down) / 2e-6, rel=1e-5)
