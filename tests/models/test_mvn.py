"""Normal box probabilities (genmod.models.mvn) against float64 numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from genmod.models.mvn import bvn_rectangle, mvn_box, normal_interval


def _quad_rectangle(a, b, r: float) -> float:
    """``int_{a1}^{b1} phi(x) [Phi((b2 - r x) / s) - Phi((a2 - r x) / s)] dx``, s^2 = 1 - r^2,
    by adaptive quadrature with breakpoints where the inner interval moves."""
    s = math.sqrt(1.0 - r * r)

    def f(x: float) -> float:
        inner = special.ndtr((b[1] - r * x) / s) - special.ndtr((a[1] - r * x) / s)
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * inner

    lo, hi = max(a[0], -12.0), min(b[0], 12.0)
    if lo >= hi:
        return 0.0
    breaks = [v / r for v in (a[1], b[1]) if r != 0 and math.isfinite(v) and lo < v / r < hi]
    return integrate.quad(f, lo, hi, points=breaks or None, epsabs=1e-15, epsrel=1e-13, limit=500)[
        0
    ]


def _dblquad_box(a, b, cov: np.ndarray) -> float:
    """A 3-D box probability: dblquad over (x1, x2) of the joint density times the exact
    conditional interval probability of x3."""
    c12 = cov[:2, :2]
    prec = np.linalg.inv(c12)
    beta = cov[2, :2] @ prec
    s = math.sqrt(cov[2, 2] - beta @ cov[:2, 2])
    norm = 2 * math.pi * math.sqrt(np.linalg.det(c12))

    def f(x2: float, x1: float) -> float:
        v = np.array([x1, x2])
        m = beta @ v
        inner = special.ndtr((b[2] - m) / s) - special.ndtr((a[2] - m) / s)
        return math.exp(-0.5 * v @ prec @ v) / norm * inner

    sd = np.sqrt(np.diag(cov))
    lo = [max(a[i], -12 * sd[i]) for i in range(2)]
    hi = [min(b[i], 12 * sd[i]) for i in range(2)]
    return integrate.dblquad(f, lo[0], hi[0], lo[1], hi[1], epsabs=1e-13, epsrel=1e-12)[0]


def test_normal_interval_keeps_precision_in_both_tails() -> None:
    a = torch.tensor([-40.0, 8.0, -9.0, 0.5], dtype=torch.float64)
    b = torch.tensor([-39.0, 9.0, -8.0, 0.5], dtype=torch.float64)
    ref = [
        special.ndtr(-39.0) - special.ndtr(-40.0),
        special.ndtr(-8.0) - special.ndtr(-9.0),
        special.ndtr(-8.0) - special.ndtr(-9.0),
        0.0,
    ]
    torch.testing.assert_close(
        normal_interval(a, b), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("r", [0.0, 0.25, -0.6, 0.9, -0.924, 0.93, -0.97, 0.995, -0.9999])
def test_bivariate_rectangle_matches_quadrature(r: float) -> None:
    rng = np.random.default_rng(int(abs(r) * 1e4))
    lows, highs = [], []
    for i in range(12):
        a = rng.normal(size=2) * 1.5
        b = a + rng.exponential(size=2) * 2
        if i % 4 == 1:
            a[0] = -np.inf
        if i % 4 == 2:
            b[1] = np.inf
        if i % 4 == 3:
            a, b = a + 4.0, b + 6.0  # the upper tail
        lows.append(a)
        highs.append(b)
    got = bvn_rectangle(torch.tensor(np.array(lows)), torch.tensor(np.array(highs)), r)
    ref = torch.tensor(
        [_quad_rectangle(a, b, r) for a, b in zip(lows, highs, strict=True)], dtype=torch.float64
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)


def test_bivariate_limits_and_empty_boxes() -> None:
    inf = math.inf
    low = torch.tensor([[-inf, -inf], [0.0, 0.0], [1.0, -inf], [2.0, 0.0]], dtype=torch.float64)
    high = torch.tensor([[inf, inf], [inf, inf], [inf, inf], [1.0, 1.0]], dtype=torch.float64)
    got = bvn_rectangle(low, high, 0.5)
    # P(X > 0, Y > 0) = 1/4 + asin(r) / (2 pi)
    ref = [1.0, 0.25 + math.asin(0.5) / (2 * math.pi), special.ndtr(-1.0), 0.0]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-15)


def test_trivariate_box_matches_dblquad_to_1e9() -> None:
    rng = np.random.default_rng(1)
    m = rng.normal(size=(3, 3))
    cov = m @ m.T + 0.3 * np.eye(3)
    tril = torch.tensor(np.linalg.cholesky(cov))
    for i in range(3):
        a = rng.normal(size=3)
        b = a + rng.exponential(size=3) * 2
        if i == 1:
            a[0], b[2] = -np.inf, np.inf
        p, err = mvn_box(torch.tensor(a)[None], torch.tensor(b)[None], tril)
        ref = _dblquad_box(a, b, cov)
        assert abs(float(p[0]) - ref) < 1e-9, (float(p[0]), ref)
        assert float(err[0]) < 1e-9


def test_four_dimensional_lattice_error_estimate_is_honest() -> None:
    """D = 4 by the shifted lattice: the result is within its error estimate of the value
    obtained by quadrature over the first coordinate of exact 3-D conditionals."""
    rng = np.random.default_rng(2)
    m = rng.normal(size=(4, 4))
    cov = m @ m.T + 0.5 * np.eye(4)
    low_tri = np.linalg.cholesky(cov)
    tril = torch.tensor(low_tri)
    a = rng.normal(size=4) - 0.5
    b = a + 1 + rng.exponential(size=4)

    def conditional(e: float) -> float:
        lo = torch.tensor(a[1:] - low_tri[1:, 0] * e)[None]
        hi = torch.tensor(b[1:] - low_tri[1:, 0] * e)[None]
        return float(mvn_box(lo, hi, tril[1:, 1:])[0][0])

    ref = integrate.quad(
        lambda e: math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi) * conditional(e),
        a[0] / low_tri[0, 0],
        b[0] / low_tri[0, 0],
        epsabs=1e-12,
        epsrel=1e-11,
    )[0]
    p, err = mvn_box(torch.tensor(a)[None], torch.tensor(b)[None], tril, atol=1e-6)
    assert float(err[0]) <= 1e-6
    assert abs(float(p[0]) - ref) <= max(float(err[0]), 1e-9)
