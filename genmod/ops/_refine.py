"""Adaptive precision: recompute in float64 the rows whose float32 result may miss 1e-4.

The GEMM expansion ``|x|^2 + |y|^2 - 2 x.y`` has an absolute rounding error of about
``eps (|x| + |y|)^2`` in ``|x - y|^2`` (``eps`` the dtype's machine epsilon), i.e.
``eps (|x| + |y|)^2 / (2 s^2)`` nats in a gaussian score. It only matters for rows whose
result is small in magnitude while their dominant reference points are far from the
centre relative to ``s``: a query within a few bandwidths of a reference point, with a
small bandwidth, in many dimensions. For such a row the dominant point ``y*`` satisfies
``|x - y*|^2 / (2 s^2) <= max(lw) - out + log M``, which bounds ``|y*|`` and so the error
estimate ``err_i = 2 c_D eps (|x_i| + |y*|)^2 / (2 s^2)`` (``c_D`` below). Rows with
``err_i > TOL * max(1, |out_i|)`` are recomputed (forward and backward) in float64.
Typical rows far from every reference point are never touched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genmod.ops._blocked import BlockedPairwiseLSE

__all__ = ["error_estimate", "refine_rows", "TOL"]

# Rows whose estimated error exceeds TOL * max(1, |out|) are recomputed. The estimate is at
# least 1.3x the largest error measured (tests/ops/test_refine.py), so TOL = 1e-4 / 2 keeps
# unflagged rows within 1e-4 with a margin of about 2.6.
TOL = 5e-5


def error_estimate(out: Tensor, x: Tensor, scale: Tensor, lw: Tensor | None, M: int) -> Tensor:
    """``[B, N]`` float64 estimate of each row's rounding error (nats) from the expansion,
    ``2 c_D eps (|x_i| + |y*|)^2 / (2 s^2)`` with ``|y*|`` bounded as in the module docstring
    and ``c_D = max(1, sqrt(D / 32))``; x and y centred as ``pairwise_logsumexp`` passes them.
    """
    with torch.no_grad():
        eps = torch.finfo(x.dtype).eps
        s2 = float(scale.detach()) ** 2
        o = out.detach().double()
        lw_max = 0.0 if lw is None else lw.detach().amax(dim=1, keepdim=True).double()
        reach = (lw_max - o + math.log(M)).clamp_min(0.0)
        x_norm = x.detach().double().norm(dim=-1)
        y_far = x_norm + (2.0 * s2 * reach).sqrt()
        # A dot product sums D rounded products: beyond 32 dimensions the measured error
        # grows like sqrt(D) (tests/ops/test_refine.py checks the estimate bounds it).
        dim_factor = max(1.0, math.sqrt(x.shape[-1] / 32.0))
        return 2.0 * dim_factor * eps * (x_norm + y_far).square() / (2.0 * s2)


def _flag_rows(out: Tensor, x: Tensor, scale: Tensor, lw: Tensor | None, M: int) -> Tensor:
    """``[B, N]`` mask of rows whose estimated rounding error exceeds the tolerance."""
    err = error_estimate(out, x, scale, lw, M)
    o = out.detach().double()
    # NaN and +inf only come from overflow (inputs are finite): |x|^2 / s^2 beyond the
    # dtype's range.
    overflow = o.isnan() | (o == math.inf)
    return overflow | (torch.isfinite(o) & (err > TOL * o.abs().clamp_min(1.0)))


def _recompute(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    lw: Tensor | None,
    exclude: Tensor | None,
    kernel: str,
    b: int,
    rows: Tensor,
    direct: bool,
) -> Tensor:
    """Rows ``rows`` of batch ``b`` in float64 ``[1, len(rows)]`` (differentiable), from the
    uncentred inputs: centring rounds each point by up to ``eps |x - c| / 2``, which no
    recomputation of the centred points undoes. The expansion centres again in float64;
    explicit differences (``direct``) need no centring at all."""
    yb = y[b].double()
    centre = torch.zeros_like(yb[0]) if direct else yb.detach().mean(dim=0)
    return BlockedPairwiseLSE.apply(
        (x[b, rows].double() - centre).unsqueeze(0),
        (yb - centre).unsqueeze(0),
        scale.double(),
        None if lw is None else lw[b].double().unsqueeze(0),
        None if exclude is None else exclude[b, rows].unsqueeze(0),
        kernel,
        direct,
    )


def refine_rows(
    out: Tensor,
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    lw: Tensor | None,
    exclude: Tensor | None,
    kernel: str,
    raw: tuple[Tensor, Tensor],
) -> Tensor:
    """Return ``out`` with flagged rows replaced by a float64 recomputation (differentiable
    too, so their gradients are float64-accurate as well).

    ``x``, ``y`` are the centred inputs the result was computed from (the estimate needs
    their norms), ``raw`` the same points before centring (``[B, N, D]``, ``[B, M, D]``),
    which flagged rows are recomputed from. A flagged float32 row is recomputed by the
    float64 expansion; where even that may miss the tolerance (bandwidths so small that
    ``eps_64 (|x| + |y*|)^2 / (2 s^2)`` matters), and for flagged float64 rows, by explicit
    differences, which have no cancellation at all.
    """
    flags = _flag_rows(out, x, scale, lw, y.shape[1])
    if not bool(flags.any()):
        return out
    out = out.clone()
    wide = x.dtype == torch.float64
    for b in flags.any(dim=1).nonzero(as_tuple=True)[0].tolist():
        rows = flags[b].nonzero(as_tuple=True)[0]
        ref = _recompute(*raw, scale, lw, exclude, kernel, b, rows, direct=wide)
        if not wide:
            x64 = x[b, rows].double().unsqueeze(0)
            lw64 = None if lw is None else lw[b].double().unsqueeze(0)
            again = _flag_rows(ref, x64, scale.double(), lw64, y.shape[1])[0]
            if bool(again.any()):
                ref = ref.clone()
                ref[0, again] = _recompute(
                    *raw, scale, lw, exclude, kernel, b, rows[again], direct=True
                )[0]
        out[b, rows] = ref[0].to(out.dtype)
    return out
