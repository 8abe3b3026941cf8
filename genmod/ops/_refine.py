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

Explicit differences (the Triton kernels at D <= 8) have no cancellation: a score
``w - |x - y|^2 / (2 s^2)`` errs by about ``(D + 4) eps`` relative to itself (D + 1 roundings
in the sum of squared differences, the scale, the base-2 exponent and exp2/log2), and the
dominant terms' scores are bounded by ``|max(lw)| + reach``; only rows whose bound exceeds the
tolerance (huge weights or overflow) are recomputed.

All flagged rows are recomputed in one batched float64 call (rows gathered per batch element
and padded to the largest count), with a constant number of host synchronisations per call
whatever the number of rows or tiles.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genmod.ops._blocked import BlockedPairwiseLSE

__all__ = ["direct_rows_exact", "error_estimate", "refine_rows", "TOL"]

# Rows whose estimated error exceeds TOL * max(1, |out|) are recomputed. The estimate is at
# least 1.3x the largest error measured (tests/ops/test_refine.py), so TOL = 1e-4 / 2 keeps
# unflagged rows within 1e-4 with a margin of about 2.6.
TOL = 5e-5


def error_estimate(
    out: Tensor, x: Tensor, scale: Tensor, lw: Tensor | None, M: int, direct: bool = False
) -> Tensor:
    """``[B, N]`` float64 estimate of each row's rounding error (nats) from the expansion,
    ``2 c_D eps (|x_i| + |y*|)^2 / (2 s^2)`` with ``|y*|`` bounded as in the module docstring
    and ``c_D = max(1, sqrt(D / 32))``; x and y centred as ``pairwise_logsumexp`` passes them.
    With ``direct`` (explicit differences): ``(D + 4) eps (|max(lw)| + reach)``.
    """
    with torch.no_grad():
        eps = torch.finfo(x.dtype).eps
        s2 = scale.detach().double().square()
        o = out.detach().double()
        lw_max = 0.0 if lw is None else lw.detach().amax(dim=1, keepdim=True).double()
        reach = (lw_max - o + math.log(M)).clamp_min(0.0)
        if direct:
            lw_abs = 0.0 if lw is None else lw_max.abs()
            return (x.shape[-1] + 4) * eps * (reach + lw_abs)
        x_norm = x.detach().double().norm(dim=-1)
        y_far = x_norm + (2.0 * s2 * reach).sqrt()
        # A dot product sums D rounded products: beyond 32 dimensions the measured error
        # grows like sqrt(D) (tests/ops/test_refine.py checks the estimate bounds it).
        dim_factor = max(1.0, math.sqrt(x.shape[-1] / 32.0))
        return 2.0 * dim_factor * eps * (x_norm + y_far).square() / (2.0 * s2)


def direct_rows_exact(dim: int, M: int, dtype: torch.dtype) -> bool:
    """True when explicit differences without weights can flag no row, so refinement (and
    its host synchronisation) is skipped with no check at all.

    With ``lw = 0`` and finite inputs every score is ``<= 0`` and ``out <= log M``: no NaN
    or +inf, and ``reach = log M - out``. The estimate ``(D + 4) eps reach`` then exceeds
    ``TOL max(1, |out|)`` for no ``out`` once ``(D + 4) eps (log M + 1) <= TOL``: for
    ``out >= -1`` reach is at most ``log M + 1``, and for ``out < -1``
    ``log M + |out| <= (log M + 1) |out|``. In float32 at D = 8 that holds up to
    ``M = e^34``."""
    eps = torch.finfo(dtype).eps
    return (dim + 4) * eps * (math.log(max(M, 1)) + 1.0) <= TOL


def _flag_rows(
    out: Tensor, x: Tensor, scale: Tensor, lw: Tensor | None, M: int, direct: bool = False
) -> Tensor:
    """``[B, N]`` mask of rows whose estimated rounding error exceeds the tolerance."""
    err = error_estimate(out, x, scale, lw, M, direct)
    o = out.detach().double()
    # NaN and +inf only come from overflow (inputs are finite): |x|^2 / s^2 beyond the
    # dtype's range.
    overflow = o.isnan() | (o == math.inf)
    return overflow | (torch.isfinite(o) & (err > TOL * o.abs().clamp_min(1.0)))


def _gather(flags: Tensor) -> tuple[Tensor, Tensor] | None:
    """Row indices ``[B, K]`` with each batch element's flagged rows first (K the largest
    count; one host synchronisation) and the ``[B, K]`` mask of the real ones; None if none."""
    counts = flags.sum(dim=1)
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        return None
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=flags.device) < counts.unsqueeze(1)
    return order, valid


def _recompute(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    lw: Tensor | None,
    exclude: Tensor | None,
    kernel: str,
    rows: Tensor,
    direct: bool,
) -> Tensor:
    """Rows ``rows`` (``[B, K]``) in float64 ``[B, K]`` (differentiable), from the uncentred
    inputs, in one call: centring rounds each point by up to ``eps |x - c| / 2``, which no
    recomputation of the centred points undoes. The expansion centres again in float64;
    explicit differences (``direct``) need no centring at all."""
    y64 = y.double()
    xs = x.gather(1, rows.unsqueeze(2).expand(-1, -1, x.shape[2])).double()
    if not direct:
        centre = y64.detach().mean(dim=1, keepdim=True)
        xs, y64 = xs - centre, y64 - centre
    return BlockedPairwiseLSE.apply(
        xs,
        y64,
        scale.double(),
        None if lw is None else lw.double(),
        None if exclude is None else exclude.gather(1, rows),
        kernel,
        direct,
    )


def _replace(out: Tensor, rows: Tensor, valid: Tensor, new: Tensor) -> Tensor:
    """``out`` with ``out[b, rows[b, k]] = new[b, k]`` where ``valid[b, k]`` (differentiable)."""
    kept = out.gather(1, rows)
    return out.scatter(1, rows, torch.where(valid, new.to(out.dtype), kept))


def refine_rows(
    out: Tensor,
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    lw: Tensor | None,
    exclude: Tensor | None,
    kernel: str,
    raw: tuple[Tensor, Tensor],
    direct: bool = False,
) -> Tensor:
    """Return ``out`` with flagged rows replaced by a float64 recomputation (differentiable
    too, so their gradients are float64-accurate as well).

    ``x``, ``y`` are the centred inputs the result was computed from (the estimate needs
    their norms), ``raw`` the same points before centring (``[B, N, D]``, ``[B, M, D]``),
    which flagged rows are recomputed from. A flagged float32 row is recomputed by the
    float64 expansion; where even that may miss the tolerance (bandwidths so small that
    ``eps_64 (|x| + |y*|)^2 / (2 s^2)`` matters), and for flagged float64 rows, by explicit
    differences, which have no cancellation at all. ``direct``: ``out`` came from explicit
    differences (see the module docstring); its flagged rows are recomputed the same way.
    """
    picked = _gather(_flag_rows(out, x, scale, lw, y.shape[1], direct))
    if picked is None:
        return out
    rows, valid = picked
    wide = direct or x.dtype == torch.float64
    ref = _recompute(*raw, scale, lw, exclude, kernel, rows, direct=wide)
    if not wide:
        x64 = x.gather(1, rows.unsqueeze(2).expand(-1, -1, x.shape[2])).double()
        lw64 = None if lw is None else lw.double()
        again = _gather(_flag_rows(ref, x64, scale.double(), lw64, y.shape[1]) & valid)
        if again is not None:
            sub, sub_valid = again
            sub_rows = rows.gather(1, sub)
            exact = _recompute(*raw, scale, lw, exclude, kernel, sub_rows, direct=True)
            ref = _replace(ref, sub, sub_valid, exact)
    return _replace(out, rows, valid, ref)
