"""Adaptive precision: recompute in float64 the rows whose float32 result may miss 1e-4.

The GEMM expansion ``|x|^2 + |y|^2 - 2 x.y`` has an absolute rounding error of about
``eps (|x| + |y|)^2`` in ``|x - y|^2`` (``eps`` the dtype's machine epsilon), i.e.
``eps (|x| + |y|)^2 / (2 s^2)`` nats in a gaussian score. It only matters for rows whose
result is small in magnitude while their dominant reference points are far from the
centre relative to ``s``: a query within a few bandwidths of a reference point, with a
small bandwidth, in many dimensions. For such a row the dominant point ``y*`` satisfies
``|x - y*|^2 / (2 s^2) <= max(lw) - out + log M``, which bounds ``|y*|`` and so the error
estimate ``err_i = 2 eps (|x_i| + |y*|)^2 / (2 s^2)``. Rows with
``err_i > TOL * max(1, |out_i|)`` are recomputed (forward and backward) in float64.
Typical rows far from every reference point are never touched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genmod.ops._blocked import BlockedPairwiseLSE

__all__ = ["refine_rows", "TOL"]

TOL = 2e-5


def _flag_rows(out: Tensor, x: Tensor, scale: Tensor, lw: Tensor | None, M: int) -> Tensor:
    """``[B, N]`` mask of rows whose estimated rounding error exceeds the tolerance."""
    with torch.no_grad():
        eps = torch.finfo(x.dtype).eps
        s2 = float(scale.detach()) ** 2
        o = out.detach().double()
        lw_max = 0.0 if lw is None else lw.detach().amax(dim=1, keepdim=True).double()
        reach = (lw_max - o + math.log(M)).clamp_min(0.0)
        y_far = x.detach().double().norm(dim=-1) + (2.0 * s2 * reach).sqrt()
        x_norm = x.detach().double().norm(dim=-1)
        err = 2.0 * eps * (x_norm + y_far).square() / (2.0 * s2)
        return torch.isfinite(o) & (err > TOL * o.abs().clamp_min(1.0))


def refine_rows(
    out: Tensor,
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    lw: Tensor | None,
    exclude: Tensor | None,
    kernel: str,
) -> Tensor:
    """Return ``out`` with flagged rows replaced by their float64 recomputation (which is
    differentiable too, so their gradients are float64-accurate as well)."""
    flags = _flag_rows(out, x, scale, lw, y.shape[1])
    if not bool(flags.any()):
        return out
    out = out.clone()
    for b in flags.any(dim=1).nonzero(as_tuple=True)[0].tolist():
        rows = flags[b].nonzero(as_tuple=True)[0]
        ref = BlockedPairwiseLSE.apply(
            x[b, rows].double().unsqueeze(0),
            y[b].double().unsqueeze(0),
            scale.double(),
            None if lw is None else lw[b].double().unsqueeze(0),
            None if exclude is None else exclude[b, rows].unsqueeze(0),
            kernel,
        )
        out[b, rows] = ref[0].to(out.dtype)
    return out
