"""Bandwidth rules of thumb, and turning a bandwidth argument into a tensor (the likelihood
searches behind ``KDE.fit_bandwidth`` are in :mod:`genmod.models.search`).

Rules (scale-equivariant: multiplying the data by ``c`` multiplies the bandwidth by ``c``)::

    scott      h = sigma * n_eff^{-1 / (D + 4)}
    silverman  h = sigma * (n_eff (D + 2) / 4)^{-1 / (D + 4)}

with ``n_eff = (sum w)^2 / sum w^2`` the effective sample size (``n`` without weights) and
``sigma`` the weighted standard deviation with the unbiased reliability-weights correction
(``ddof=1`` without weights, as scipy's ``gaussian_kde``). A diagonal bandwidth uses each
dimension's ``sigma_d``; an isotropic one uses the root-mean-square ``sqrt(mean_d sigma_d^2)``;
a full one (``H = h^2 Sigma``, :mod:`genmod.models._kde_full`) is the factor alone
(``sigma = 1``), as scipy's ``gaussian_kde`` computes it.
The rules are normal-reference rules for a gaussian kernel's standard deviation; for the
compact kernels the same number is used as the scale parameter (as scikit-learn and
statsmodels do): a starting point that ``fit_bandwidth`` improves on.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RULES",
    "BANDWIDTH_TYPES",
    "effective_sample_size",
    "weighted_std",
    "rule_bandwidth",
    "resolve_bandwidth",
]

RULES = ("scott", "silverman")
BANDWIDTH_TYPES = ("isotropic", "diagonal", "full")


def effective_sample_size(weights: Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights."""
    w = weights.double()
    return float(w.sum() ** 2 / (w * w).sum())


def normalised_weights(x: Tensor, weights: Tensor | None) -> Tensor:
    """Weights ``[M]`` of the rows of ``x`` as float64 summing to one (``1 / M`` each
    without weights), on ``x``'s device."""
    if weights is None:
        n = x.shape[0]
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
    return weights.double() / weights.double().sum()


def weighted_std(data: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per-dimension standard deviation ``[D]`` (float64) with the unbiased correction.

    ``var_d = sum_i w_i (x_id - mu_d)^2 / (1 - sum_i w_i^2)`` for weights normalised to sum to
    one (``mu`` the weighted mean); without weights this is the ``ddof=1`` variance. Returns
    NaN where fewer than two effective points make it undefined.
    """
    x = data.double()
    w = normalised_weights(x, weights)
    mean = w @ x
    denom = 1.0 - (w * w).sum()
    std = ((w @ (x - mean) ** 2) / denom).clamp_min(0.0).sqrt()
    # Spread at the level of float64 round-off of the values themselves counts as none.
    floor = 64 * torch.finfo(torch.float64).eps * x.abs().amax(dim=0)
    std = torch.where(std > floor, std, torch.zeros_like(std))
    return torch.where(denom > 0, std, torch.nan)


def rule_bandwidth(
    data: Tensor, rule: str, weights: Tensor | None = None, bandwidth_type: str = "isotropic"
) -> Tensor:
    """The ``"scott"`` or ``"silverman"`` bandwidth of ``data`` ``[M, D]`` (float64).

    Returns a 0-d tensor for ``bandwidth_type="isotropic"`` (from the RMS per-dimension std)
    or ``"full"`` (the dimensionless factor), or ``[D]`` for ``"diagonal"``.

    Raises:
        ValueError: naming ``bandwidth`` for an unknown rule, or when the data have zero (or
            undefined) spread so the rule gives no positive bandwidth.
    """
    if rule not in RULES:
        raise ValueError(f"bandwidth must be a positive number or one of {RULES}, got {rule!r}")
    n, dim = data.shape
    n_eff = float(n) if weights is None else effective_sample_size(weights)
    if rule == "scott":
        factor = n_eff ** (-1.0 / (dim + 4))
    else:
        factor = (n_eff * (dim + 2) / 4.0) ** (-1.0 / (dim + 4))
    sigma = weighted_std(data, weights)
    if bandwidth_type == "full":
        sigma = torch.where(torch.isfinite(sigma.sum()), 1.0, torch.nan).double()
    elif bandwidth_type == "isotropic":
        sigma = sigma.pow(2).mean().sqrt()
    h = factor * sigma
    bad = ~(torch.isfinite(h) & (h > 0))
    if bool(bad.any()):
        where = "" if h.dim() == 0 else f" (dimension {int(bad.nonzero()[0, 0])})"
        raise ValueError(
            f"bandwidth rule {rule!r} needs data with positive spread{where} and at least two "
            "effective points; pass a numeric bandwidth instead"
        )
    return h


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_array(value: Any) -> Any:
    """A real number or array-like as something :func:`torch.as_tensor` takes (numpy
    scalars and 0-d arrays included); booleans are left for the caller to reject."""
    if isinstance(value, numbers.Real) and not hasattr(value, "__array__"):
        return float(value)
    import numpy as np  # only reached with a numpy value, so numpy is installed

    array = np.asarray(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"bandwidth must be numeric, got {value!r}")
    return array.astype(np.float64)


def resolve_bandwidth(
    bandwidth: float | str | Tensor | list[float],
    data: Tensor,
    weights: Tensor | None = None,
    bandwidth_type: str = "isotropic",
) -> Tensor:
    """Turn a bandwidth argument into a validated float64 tensor (``[]`` or ``[D]``).

    Accepts a rule name (:data:`RULES`), a positive number (broadcast over dimensions for a
    diagonal bandwidth), or for ``"diagonal"`` a tensor / sequence of ``D`` positive numbers.

    Raises:
        ValueError: naming ``bandwidth`` (or ``bandwidth_type``) when it is unknown, of the
            wrong shape, non-finite or not positive.
    """
    if bandwidth_type not in BANDWIDTH_TYPES:
        raise ValueError(f"bandwidth_type must be one of {BANDWIDTH_TYPES}, got {bandwidth_type!r}")
    if isinstance(bandwidth, str):
        return rule_bandwidth(data, bandwidth, weights, bandwidth_type)
    if not isinstance(bandwidth, bool | Tensor | list | tuple) and (
        isinstance(bandwidth, numbers.Real) or hasattr(bandwidth, "__array__")
    ):
        bandwidth = torch.as_tensor(_as_array(bandwidth), dtype=torch.float64)  # numpy too
    if isinstance(bandwidth, Tensor) and not (
        bandwidth.is_floating_point() or bandwidth.dtype in _INT_DTYPES
    ):
        raise ValueError(f"bandwidth must be a real number, got a {bandwidth.dtype} tensor")
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float, Tensor, list, tuple)):
        raise ValueError(
            f"bandwidth must be a positive number, a sequence of them or one of {RULES}, "
            f"got {bandwidth!r}"
        )
    try:
        h = torch.as_tensor(
            bandwidth.detach() if isinstance(bandwidth, Tensor) else bandwidth,
            dtype=torch.float64,
        ).cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"bandwidth must be numeric, got {bandwidth!r}") from err
    dim = data.shape[1]
    if h.numel() == 1:
        h = h.reshape(()) if bandwidth_type != "diagonal" else h.reshape(1).expand(dim)
    elif bandwidth_type == "diagonal" and h.numel() == dim:
        h = h.reshape(dim)
    else:
        wanted = "one value" if bandwidth_type != "diagonal" else f"1 or {dim} values"
        raise ValueError(
            f"bandwidth for bandwidth_type={bandwidth_type!r} must hold {wanted}, "
            f"got shape {tuple(h.shape)}"
        )
    if not bool((torch.isfinite(h) & (h > 0)).all()):
        raise ValueError(f"bandwidth must be finite and > 0, got {h.tolist()}")
    return h.to(data.device).clone()
