"""scipy's ``gaussian_kde`` features on :class:`genmod.models.kde.KDE`: the full-covariance
bandwidth, marginals and box probabilities.

Full bandwidth (``bandwidth_type="full"``): the kernel's bandwidth matrix is
``H = h^2 Sigma`` with ``Sigma = L L^T`` the weighted data covariance (scipy's: reliability
weights, unbiased, ``np.cov(data.T, aweights=w)``) and ``h`` a dimensionless factor, so

    K_H(u) = k(||L^{-1} u|| / h) / (C_{k,D} h^D |det L|).

The density is the isotropic KDE of the whitened points ``L^{-1} y_j`` at ``L^{-1} x`` with
bandwidth ``h``, minus ``log |det L|``: the op :func:`genmod.ops.pairwise_logsumexp` does the
work unchanged, exactly and differentiably in ``log h``. Because ``Sigma`` moves with the
data, the estimate is equivariant under any invertible affine map of the data (scale and
rotation included). The rules give scipy's factors with the effective sample size
``n_eff = (sum w)^2 / sum w^2``: ``scott = n_eff^{-1/(D+4)}`` and
``silverman = (n_eff (D + 2) / 4)^{-1/(D+4)}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genmod.models.bandwidth import normalised_weights
from genmod.models.mvn import mvn_box, normal_interval

if TYPE_CHECKING:
    from genmod.models.kde import KDE

__all__ = [
    "bandwidth_matrix",
    "data_scale_tril",
    "integrate_box",
    "log_abs_det",
    "marginal",
    "weighted_covariance",
    "whiten",
]


def weighted_covariance(data: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Sigma = sum_i w_i (y_i - mu)(y_i - mu)^T / (1 - sum_i w_i^2)`` ``[D, D]`` (float64),
    ``w`` normalised to sum to one (``1 / M`` without weights: the ``ddof=1`` covariance)."""
    x = data.double()
    w = normalised_weights(x, weights)
    centred = x - w @ x
    cov = (centred * w.unsqueeze(1)).mT @ centred / (1.0 - (w * w).sum())
    return 0.5 * (cov + cov.mT)


def data_scale_tril(data: Tensor, weights: Tensor | None = None) -> Tensor:
    """The Cholesky factor ``L`` (float64) of :func:`weighted_covariance`.

    Raises:
        ValueError: naming ``data`` when the covariance is not positive definite (fewer
            effective points than dimensions, a constant or linearly dependent column).
    """
    cov = weighted_covariance(data, weights)
    tril, info = torch.linalg.cholesky_ex(cov)
    ok = int(info) == 0 and bool(torch.isfinite(tril).all())
    if ok:
        diag = tril.diagonal()
        ok = bool((diag > 1e-7 * cov.diagonal().sqrt()).all())
    if not ok:
        raise ValueError(
            "data: bandwidth_type='full' needs a positive-definite data covariance (more "
            "effective points than dimensions, no constant or linearly dependent columns)"
        )
    return tril


def whiten(x: Tensor, tril: Tensor) -> Tensor:
    """``L^{-1} x`` for each row of ``x`` ``[n, D]`` (a triangular solve, in ``x``'s dtype)."""
    return torch.linalg.solve_triangular(tril.to(x.dtype), x.mT, upper=False).mT


def log_abs_det(tril: Tensor) -> Tensor:
    """``log |det L|`` of a lower-triangular ``L`` (0-d)."""
    return tril.diagonal().abs().log().sum()


def bandwidth_matrix(kde: KDE) -> Tensor:
    """The bandwidth matrix ``H`` ``[D, D]``: ``h^2 I``, ``diag(h_d^2)`` or ``h^2 Sigma``."""
    h = kde.bandwidth
    if kde.bandwidth_type == "full":
        tril = kde.data_scale_tril.to(h.dtype)
        return h.square() * (tril @ tril.mT)
    return torch.diag_embed(h.square().expand(kde.dim))


def _require_gaussian(kde: KDE, what: str) -> None:
    if kde.kernel != "gaussian":
        raise ValueError(f"{what} needs kernel='gaussian', got kernel={kde.kernel!r}")


def _check_dims(dims: Any, dim: int) -> list[int]:
    seq = [dims] if isinstance(dims, int) or hasattr(dims, "__index__") else dims
    try:
        out = [int(d.__index__()) for d in seq]
    except (AttributeError, TypeError) as err:
        raise ValueError(f"dims must be an int or a sequence of ints, got {dims!r}") from err
    if not out:
        raise ValueError("dims must name at least one dimension")
    bad = [d for d in out if not -dim <= d < dim]
    if bad:
        raise ValueError(f"dims: {bad[0]} is out of range for data of dimension {dim}")
    out = [d % dim for d in out]
    if len(set(out)) != len(out):
        raise ValueError(f"dims must not repeat a dimension, got {dims!r}")
    return out


def marginal(kde: KDE, dims: Any) -> KDE:
    """The marginal KDE of the dimensions ``dims`` (gaussian kernel): the same weights and
    reference points restricted to ``dims``, with bandwidth ``h`` (isotropic), ``h[dims]``
    (diagonal) or the same factor ``h`` (full: ``H[dims, dims] = h^2 Sigma[dims, dims]``, and
    ``Sigma[dims, dims]`` is the covariance of the restricted data), as scipy does."""
    from genmod.models.kde import KDE

    _require_gaussian(kde, "marginal")
    index = _check_dims(dims, kde.dim)
    h = kde.bandwidth.detach().double()
    if kde.bandwidth_type == "diagonal":
        h = h[index]
    return KDE(
        kde.data[:, index],
        bandwidth=h,
        kernel="gaussian",
        weights=kde._weights(),
        bandwidth_type=kde.bandwidth_type,
        learn_bandwidth=kde.learn_bandwidth,
    )


def _bound(value: Any, name: str, dim: int, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be {dim} numbers, got {value!r}") from err
    if t.numel() != dim:
        raise ValueError(f"{name} must hold {dim} values (one per dimension), got {t.numel()}")
    if bool(t.isnan().any()):
        raise ValueError(f"{name} contains NaN (dimension {int(t.isnan().nonzero()[0, 0])})")
    return t.to(device)


def integrate_box(
    kde: KDE, low: Any, high: Any, *, atol: float = 1e-8, max_points: int = 2**16
) -> Tensor:
    """``P(low < X < high) = sum_j w_j P(low - y_j < Z < high - y_j)``, ``Z ~ N(0, H)``
    (gaussian kernel), a 0-d float64 tensor; an empty box gives 0.

    Isotropic and diagonal: products of 1-D normal intervals (exact). Full: the box
    probability of each kernel by :func:`genmod.models.mvn.mvn_box` (exact for D <= 2,
    Gauss-Legendre with an exact bivariate inner integral for D = 3, Genz's lattice method
    for D >= 4, to ``atol`` per kernel).
    """
    _require_gaussian(kde, "integrate_box")
    if not (isinstance(atol, int | float) and atol > 0):
        raise ValueError(f"atol must be a number > 0, got {atol!r}")
    device = kde.data.device
    lo = _bound(low, "low", kde.dim, device)
    hi = _bound(high, "high", kde.dim, device)
    y = kde.data.detach().double()
    w = kde._weights()
    if w is None:
        w = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64, device=device)
    w = w / w.sum()
    h = kde.bandwidth.detach().double()
    with torch.no_grad():
        if kde.bandwidth_type == "full":
            tril = h * kde.data_scale_tril.double()
            keep = w > 0
            p, _ = mvn_box(lo - y[keep], hi - y[keep], tril, atol=atol, max_points=max_points)
            return (w[keep] * p).sum()
        p = normal_interval((lo - y) / h, (hi - y) / h).prod(-1)
        return (w * p).sum().clamp(0.0, 1.0)


def integrate_box_1d(kde: KDE, low: float, high: float) -> Tensor:
    """``P(low < X < high)`` of a one-dimensional KDE (gaussian kernel), exact."""
    if kde.dim != 1:
        raise ValueError(f"integrate_box_1d needs one-dimensional data, got D = {kde.dim}")
    return integrate_box(kde, [low], [high])
