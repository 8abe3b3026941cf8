"""Radial kernel log-profiles ``f(r2) = log k(r)`` of the squared scaled distance ``r2``.

``r = ||x - y|| / scale``. Profiles are unnormalised (``k(0) = 1``); the models add the
normaliser of each kernel in D dimensions. Outside a compact kernel's support (r >= 1) the
profile is ``-inf``. ``d_log_profile`` is ``d f / d r2``, used by the blocked backward, with the
one-sided limit at ``r = 0`` where ``|x - y|`` is not differentiable (0 for the exponential and
linear kernels, a subgradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["KERNELS", "log_profile", "d_log_profile"]

KERNELS = ("gaussian", "tophat", "epanechnikov", "exponential", "linear", "cosine")


def log_profile(r2: Tensor, kernel: str) -> Tensor:
    """``log k(r)`` for ``r2 = r**2 >= 0``: gaussian ``-r2/2``, tophat ``0``, epanechnikov
    ``log(1 - r2)``, exponential ``-r``, linear ``log(1 - r)``, cosine ``log cos(pi r / 2)``."""
    if kernel == "gaussian":
        return r2.mul(-0.5)
    if kernel == "exponential":
        return r2.sqrt().neg_()
    inside = r2 < 1.0
    if kernel == "tophat":
        val = torch.zeros_like(r2)
    elif kernel == "epanechnikov":
        val = torch.log1p(-r2.clamp(max=1.0))
    elif kernel == "linear":
        val = torch.log1p(-r2.clamp(max=1.0).sqrt())
    elif kernel == "cosine":
        val = torch.cos(r2.clamp(max=1.0).sqrt() * (0.5 * math.pi)).log()
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return val.masked_fill_(~inside, -math.inf)


def d_log_profile(r2: Tensor, kernel: str) -> Tensor:
    """``d log k / d r2`` (finite wherever ``k > 0``; 0 outside compact supports)."""
    if kernel == "gaussian":
        return torch.full_like(r2, -0.5)
    if kernel == "tophat":
        return torch.zeros_like(r2)
    r = r2.sqrt()
    pos = r > 0
    if kernel == "exponential":
        return torch.where(pos, -0.5 / r.clamp_min(1e-300), torch.zeros_like(r))
    inside = r2 < 1.0
    if kernel == "epanechnikov":
        val = -1.0 / (1.0 - r2.clamp(max=1.0)).clamp_min(1e-300)
    elif kernel == "linear":
        rc = r.clamp(1e-300, 1.0)
        val = torch.where(pos, -0.5 / (rc * (1.0 - rc).clamp_min(1e-300)), torch.zeros_like(r))
    elif kernel == "cosine":
        half_pi = 0.5 * math.pi
        rc = r.clamp(1e-300, 1.0)
        val = torch.where(
            r > 1e-6,
            -0.5 * half_pi * torch.tan(half_pi * rc) / rc,
            torch.full_like(r, -(half_pi**2) / 2),
        )
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return torch.where(inside, val, torch.zeros_like(val))
