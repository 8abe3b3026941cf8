"""TEMPORARY brute-force body while the blocked kernel is written (same signature)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

KERNELS = ("gaussian", "tophat", "epanechnikov", "exponential", "linear", "cosine")


def _log_profile(r2: Tensor, kernel: str) -> Tensor:
    r = r2.clamp_min(0).sqrt()
    ninf = torch.full_like(r2, -math.inf)
    if kernel == "gaussian":
        return -0.5 * r2
    if kernel == "exponential":
        return -r
    inside = r < 1
    if kernel == "tophat":
        return torch.where(inside, torch.zeros_like(r2), ninf)
    if kernel == "epanechnikov":
        return torch.where(inside, torch.log1p(-r2.clamp(max=1)), ninf)
    if kernel == "linear":
        return torch.where(inside, torch.log1p(-r.clamp(max=1)), ninf)
    if kernel == "cosine":
        return torch.where(inside, torch.log(torch.cos(0.5 * math.pi * r.clamp(max=1))), ninf)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def pairwise_logsumexp(x, y, scale=1.0, log_weights=None, *, kernel="gaussian", exclude=None,
                       backend="auto"):
    d2 = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    s = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    a = _log_profile(d2 / s**2, kernel)
    if log_weights is not None:
        a = a + log_weights.unsqueeze(-2)
    if exclude is not None:
        m = torch.arange(y.shape[-2], device=x.device) == exclude.unsqueeze(-1)
        a = a.masked_fill(m, -math.inf)
    return torch.logsumexp(a, dim=-1)
