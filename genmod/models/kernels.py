"""Radial smoothing kernels in D dimensions: normalisation constants and sampling.

A kernel is a radial profile ``k(r)`` of ``r = ||u|| / h`` (``u`` the offset from a reference
point, ``h`` the bandwidth). The profiles are the ones :func:`genmod.ops.pairwise_logsumexp`
evaluates::

    gaussian      exp(-r^2 / 2)
    tophat        1               (r < 1)
    epanechnikov  1 - r^2         (r < 1)
    exponential   exp(-r)
    linear        1 - r           (r < 1)
    cosine        cos(pi r / 2)   (r < 1)

and the compact ones are zero for ``r >= 1``. The normalised kernel density in D dimensions
is ``K_h(u) = k(||u|| / h) / (C_{k,D} h^D)`` with ``C_{k,D} = int_{R^D} k(||u||) du``
(:func:`log_normalizer`). For the gaussian profile ``h`` is the kernel's standard deviation;
for the compact profiles it is the support radius (scikit-learn's convention).

All sampling here is driven by an optional ``torch.Generator`` and nothing else, so a seeded
generator gives the same draws every time (``torch.distributions.Gamma``/``Beta`` take no
generator, hence the samplers below).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genmod.ops import KERNELS

__all__ = [
    "KERNELS",
    "check_kernel",
    "log_normalizer",
    "kernel_variance",
    "sample_kernel",
    "sample_gamma",
    "sample_beta",
]

_HALF_PI = 0.5 * math.pi


def check_kernel(kernel: str) -> str:
    """Return ``kernel`` if it names a known profile, else raise ``ValueError`` naming it."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def _check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return dim


def _log_unit_ball_volume(dim: int) -> float:
    """``log V_D`` with ``V_D = pi^{D/2} / Gamma(D/2 + 1)``, the volume of the unit D-ball."""
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)


def _log_cosine_moment(n: int) -> float:
    """``log I_n`` with ``I_n = int_0^1 r^n cos(pi r / 2) dr``, exact in float64.

    Substituting ``s = 1 - r`` (so ``cos(pi r / 2) = sin(a s)``, ``a = pi / 2``), expanding the
    sine and integrating term by term with the Beta integral
    ``int_0^1 s^m (1 - s)^n ds = m! n! / (m + n + 1)!`` gives the series

        I_n = sum_{k >= 0} (-1)^k a^{2k+1} n! / (n + 2k + 2)!.

    Its terms shrink by ``a^2 / ((n + 2k + 3)(n + 2k + 4)) <= 0.21``, so the alternating sum
    converges in a few terms without cancellation. The result is ``t_0 * S`` with
    ``t_0 = a / ((n + 1)(n + 2))`` and ``S`` in ``(0.79, 1]``, summed in log space so
    ``n`` in the thousands neither overflows nor underflows.
    """
    a2 = _HALF_PI * _HALF_PI
    total, term, k = 1.0, 1.0, 0
    while abs(term) > 1e-18:
        term *= -a2 / ((n + 2 * k + 3) * (n + 2 * k + 4))
        total += term
        k += 1
    return math.log(_HALF_PI) - math.log(n + 1.0) - math.log(n + 2.0) + math.log(total)


def log_normalizer(kernel: str, dim: int) -> float:
    """``log C_{k,D}``: the log of ``int_{R^D} k(||u||) du`` for the unit-scale profile.

    With ``V_D`` the unit-ball volume and ``D V_D`` the area of the unit sphere, the radial
    integral ``D V_D int_0^inf k(r) r^{D-1} dr`` gives

    ============  ==========================================================
    gaussian      ``(2 pi)^{D/2}``
    tophat        ``V_D``
    epanechnikov  ``2 V_D / (D + 2)``
    exponential   ``D V_D Gamma(D)``
    linear        ``V_D / (D + 1)``
    cosine        ``D V_D I_{D-1}``, ``I_n = int_0^1 r^n cos(pi r / 2) dr``
    ============  ==========================================================

    computed with ``lgamma`` in float64, so D in the thousands is fine. ``I_n`` comes from an
    exact, rapidly converging series (see ``_log_cosine_moment``).

    Args:
        kernel: one of :data:`KERNELS`.
        dim: the dimension D >= 1.

    Returns:
        ``log C_{k,D}`` (a Python float, nats).
    """
    check_kernel(kernel)
    d = _check_dim(dim)
    log_v = _log_unit_ball_volume(d)
    if kernel == "gaussian":
        return 0.5 * d * math.log(2.0 * math.pi)
    if kernel == "tophat":
        return log_v
    if kernel == "epanechnikov":
        return math.log(2.0) + log_v - math.log(d + 2.0)
    if kernel == "exponential":
        return math.log(d) + log_v + math.lgamma(d)
    if kernel == "linear":
        return log_v - math.log(d + 1.0)
    return math.log(d) + log_v + _log_cosine_moment(d - 1)


def kernel_variance(kernel: str, dim: int) -> float:
    """Per-coordinate variance ``E[u_1^2] = E[r^2] / D`` of the normalised unit-scale kernel.

    A kernel with bandwidth ``h`` has covariance ``kernel_variance(kernel, D) * h^2 * I``. With
    the radius density proportional to ``k(r) r^{D-1}``: gaussian ``1``; tophat ``1 / (D + 2)``;
    epanechnikov ``1 / (D + 4)``; exponential ``D + 1``; linear
    ``(D + 1) / ((D + 2)(D + 3))``; cosine ``I_{D+1} / (D I_{D-1})``.
    """
    check_kernel(kernel)
    d = _check_dim(dim)
    if kernel == "gaussian":
        return 1.0
    if kernel == "tophat":
        return 1.0 / (d + 2.0)
    if kernel == "epanechnikov":
        return 1.0 / (d + 4.0)
    if kernel == "exponential":
        return d + 1.0
    if kernel == "linear":
        return (d + 1.0) / ((d + 2.0) * (d + 3.0))
    return math.exp(_log_cosine_moment(d + 1) - _log_cosine_moment(d - 1)) / d


def sample_gamma(
    n: int,
    concentration: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` draws from ``Gamma(concentration, rate=1)`` by Marsaglia & Tsang (2000).

    For ``alpha >= 1``: with ``d = alpha - 1/3``, ``c = 1 / sqrt(9 d)``, ``z ~ N(0, 1)``,
    ``v = (1 + c z)^3``, accept ``d v`` when ``v > 0`` and
    ``log U < z^2 / 2 + d - d v + d log v``. For ``alpha < 1`` a ``Gamma(alpha + 1)`` draw is
    multiplied by ``U^{1 / alpha}``. Candidates are drawn in vectorised rounds until ``n`` are
    accepted (acceptance >= 95 %); every draw uses ``generator``. Computed in float64.
    """
    if not (isinstance(concentration, (int, float)) and math.isfinite(concentration)) or not (
        concentration > 0
    ):
        raise ValueError(f"concentration must be a finite number > 0, got {concentration!r}")
    alpha = float(concentration)
    shape = alpha + 1.0 if alpha < 1.0 else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    kw = {"generator": generator, "dtype": torch.float64, "device": device}
    chunks: list[Tensor] = []
    have = 0
    while have < n:
        m = int(1.1 * (n - have)) + 16
        z = torch.randn(m, **kw)
        u = torch.rand(m, **kw)
        v = (1.0 + c * z) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
        ok = positive & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
        accepted = (d * v)[ok]
        chunks.append(accepted)
        have += accepted.numel()
    out = torch.cat(chunks)[:n] if chunks else torch.empty(0, dtype=torch.float64, device=device)
    if alpha < 1.0:
        out = out * torch.rand(n, **kw) ** (1.0 / alpha)
    return out.to(dtype)


def sample_beta(
    n: int,
    a: float,
    b: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` draws from ``Beta(a, b)`` as ``X / (X + Y)``, ``X ~ Gamma(a)``, ``Y ~ Gamma(b)``."""
    x = sample_gamma(n, a, generator, device=device)
    y = sample_gamma(n, b, generator, device=device)
    return (x / (x + y)).to(dtype)


def _sample_radius(
    kernel: str, n: int, dim: int, generator: torch.Generator | None, device
) -> Tensor:
    """Radii with density proportional to ``k(r) r^{D-1}`` (float64)."""
    kw = {"generator": generator, "device": device}
    if kernel == "tophat":
        return torch.rand(n, dtype=torch.float64, **kw) ** (1.0 / dim)
    if kernel == "epanechnikov":
        return sample_beta(n, 0.5 * dim, 2.0, **kw).sqrt()
    if kernel == "linear":
        return sample_beta(n, float(dim), 2.0, **kw)
    if kernel == "exponential":
        return sample_gamma(n, float(dim), **kw)
    # cosine: s = 1 - r has density ∝ sin(pi s / 2) (1 - s)^{D-1}. Propose s ~ Beta(2, D)
    # (∝ s (1 - s)^{D-1}) and accept with sin(pi s / 2) / (pi s / 2) = sinc(s / 2) in
    # [2 / pi, 1], since sin(x) <= x.
    chunks: list[Tensor] = []
    have = 0
    while have < n:
        m = int(1.6 * (n - have)) + 16
        s = sample_beta(m, 2.0, float(dim), **kw)
        u = torch.rand(m, dtype=torch.float64, **kw)
        accepted = 1.0 - s[u < torch.sinc(0.5 * s)]
        chunks.append(accepted)
        have += accepted.numel()
    return torch.cat(chunks)[:n] if chunks else torch.empty(0, dtype=torch.float64, device=device)


def sample_kernel(
    kernel: str,
    n: int,
    dim: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` draws ``[n, dim]`` from the normalised unit-scale kernel ``k(||u||) / C_{k,D}``.

    Gaussian: ``N(0, I)``. The others are radial: a direction uniform on the sphere (a
    normalised standard normal) times a radius with density ``∝ k(r) r^{D-1}``: tophat
    ``U^{1/D}``; epanechnikov ``sqrt(Beta(D/2, 2))``; linear ``Beta(D, 2)``; exponential
    ``Gamma(D, 1)``; cosine by rejection from ``1 - Beta(2, D)``. Multiply by ``h`` for
    bandwidth ``h``.

    Args:
        kernel: one of :data:`KERNELS`.
        n: number of draws (>= 0).
        dim: dimension D >= 1.
        generator: drives every random draw; ``None`` uses torch's global generator.
        dtype: floating dtype of the result.
        device: device of the result (must match the generator's).
    """
    check_kernel(kernel)
    d = _check_dim(dim)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    direction = torch.randn(n, d, generator=generator, dtype=torch.float64, device=device)
    if kernel == "gaussian":
        return direction.to(dtype)
    norm = direction.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    radius = _sample_radius(kernel, n, d, generator, device)
    return (direction / norm * radius.unsqueeze(1)).to(dtype)
