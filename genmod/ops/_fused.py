"""The CPU fast path of the gaussian forward: a GEMM into a reused tile buffer, then one
fused pass (bias, running max, exp, sum) compiled by ``torch.compile``.

This reaches the floor of the problem, one GEMM plus one ``exp`` per pair, without tile-sized
temporaries. The epilogue is compiled once per process with dynamic shapes (every tile shape
shares one kernel; Inductor's on-disk cache makes later processes start fast). Where
compilation is unavailable (no C++ compiler, unsupported platform, ``GENMOD_COMPILE=0``) the
same loop runs eagerly.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from torch import Tensor

from genmod.ops import _tiles

__all__ = ["fused_gaussian_forward", "fused_gaussian_backward", "use_fused"]

# Below this many pairs the compiled path is not worth its one-off start-up cost.
MIN_PAIRS = 1 << 24

# The shape of the probe call that triggers compilation: a typical CPU tile.
PROBE_TILE = (512, 1024)

_compiled: dict[str, object] = {}


def _epilogue(scores: Tensor, bias: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    sc = scores + bias
    m_new = torch.maximum(m, sc.amax(dim=1))
    m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
    s_new = s * torch.exp(m - m_safe) + torch.exp(sc - m_safe.unsqueeze(1)).sum(dim=1)
    return m_new, s_new


def _backward_epilogue(scores: Tensor, bias: Tensor, ref: Tensor, coef: Tensor) -> None:
    """Overwrite the tile with ``C_ij = coef_i exp(score_ij + bias_j - ref_i)`` in one pass
    (``coef = -g / 2``: ``C_ij = -g_i p_ij / 2``)."""
    scores.copy_(torch.exp(scores + bias - ref.unsqueeze(1)) * coef.unsqueeze(1))


def _get(fn):
    """``fn`` compiled once per process (dynamic shapes), or ``fn`` itself if that fails."""
    name = fn.__name__
    if name not in _compiled:
        _compiled[name] = fn
        if os.environ.get("GENMOD_COMPILE", "1") != "0":
            try:
                compiled = torch.compile(fn, dynamic=True)
                # Inductor sizes its loops (and decides to parallelise them) from the first
                # call's shapes: probe with a tile of typical size, not a toy one.
                n, m = PROBE_TILE
                probe = (torch.zeros(n, m), torch.zeros(m), torch.zeros(n), torch.zeros(n))
                compiled(*probe)
                _compiled[name] = compiled
            except Exception as err:  # pragma: no cover - depends on the toolchain
                warnings.warn(
                    f"torch.compile unavailable ({type(err).__name__}); genmod's CPU kernel "
                    "runs eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _compiled[name]


def use_fused(x: Tensor, pairs: int) -> bool:
    """True for large float CPU problems when compilation is not switched off."""
    return x.device.type == "cpu" and pairs >= MIN_PAIRS and os.environ.get("GENMOD_COMPILE") != "0"


def _mask(tile: Tensor, ex: Tensor | None, j0: int) -> None:
    if ex is not None:
        col = ex - j0
        hit = ((col >= 0) & (col < tile.shape[1])).nonzero(as_tuple=True)[0]
        tile[hit, col[hit]] = -math.inf


def fused_gaussian_forward(
    x: Tensor, y: Tensor, inv_s2: Tensor, bias: Tensor, exclude: Tensor | None
) -> Tensor:
    """``lse_j (x_i . y_j / s^2 + bias_j)`` for ``x`` [B, N, D], ``y`` [B, M, D] -> [B, N]."""
    epilogue = _get(_epilogue)
    B, N, _ = x.shape
    M = y.shape[1]
    _, tn, tm = _tiles.tile_shape(1, N, M, x.element_size(), x.device)
    buf = torch.empty(tn * tm, dtype=x.dtype, device=x.device)
    out = torch.empty(B, N, dtype=x.dtype, device=x.device)
    for b in range(B):
        xs = x[b] * inv_s2
        yt = y[b].t()
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            m = torch.full((i1 - i0,), -math.inf, dtype=x.dtype)
            s = torch.zeros(i1 - i0, dtype=x.dtype)
            ex = None if exclude is None else exclude[b, i0:i1]
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(xs[i0:i1], yt[:, j0:j1], out=tile)
                _mask(tile, ex, j0)
                m, s = epilogue(tile, bias[b, j0:j1], m, s)
            out[b, i0:i1] = _tiles.finish_lse(m, s)
    return out


def fused_gaussian_backward(
    x: Tensor,
    y: Tensor,
    inv_s2: Tensor,
    bias: Tensor,
    ref: Tensor,
    g: Tensor,
    exclude: Tensor | None,
    need_rows: bool = True,
    need_cols: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of the expanded gaussian reduction, with ``C_ij = -g_i p_ij / 2``.

    Each tile's scores are recomputed by one GEMM and turned into ``C`` in place by one fused
    elementwise pass; then at most two GEMMs per tile accumulate, over all tiles,
    ``C [y, 1, |y|^2]`` (``[N, D + 2]``: the row sums ``sum_j C_ij y_j``, ``sum_j C_ij`` and
    ``sum_j C_ij |y_j|^2``) when ``need_rows`` (gradients of x or the scale) and
    ``C^T [x, 1]`` (``[M, D + 1]``) when ``need_cols`` (gradients of y or the log-weights).
    The gradients are assembled once at the end:

        grad_x_i = (2 / s^2) (x_i sum_j C_ij - sum_j C_ij y_j)
        grad_y_j = (2 / s^2) (y_j sum_i C_ij - sum_i C_ij x_i)
        sum_ij C_ij |x_i - y_j|^2 = sum_i (|x_i|^2 sum_j C_ij + sum_j C_ij |y_j|^2
                                           - 2 x_i . sum_j C_ij y_j)
        grad_lw_j = sum_i g_i p_ij = -2 sum_i C_ij

    Returns ``(grad_x, grad_y, sum_ij C_ij |x_i - y_j|^2, grad_log_weights)``, the first
    and third None without ``need_rows``, the second and fourth None without ``need_cols``.
    """
    epilogue = _get(_backward_epilogue)
    B, N, D = x.shape
    M = y.shape[1]
    _, tn, tm = _tiles.tile_shape(1, N, M, x.element_size(), x.device)
    buf = torch.empty(tn * tm, dtype=x.dtype, device=x.device)
    coef = -0.5 * g
    gx = torch.empty_like(x) if need_rows else None
    gy = torch.empty_like(y) if need_cols else None
    gw = torch.empty(B, M, dtype=x.dtype) if need_cols else None
    d2c = torch.zeros((), dtype=x.dtype) if need_rows else None
    for b in range(B):
        xb, yb = x[b], y[b]
        x2, y2 = xb.square().sum(-1, keepdim=True), yb.square().sum(-1, keepdim=True)
        xs, yt = xb * inv_s2, yb.t()
        ya = torch.cat([yb, torch.ones_like(y2), y2], 1) if need_rows else None
        xa = torch.cat([xb, torch.ones_like(x2)], 1) if need_cols else None
        acc_r = x.new_zeros(N, D + 2) if need_rows else None
        acc_c = x.new_zeros(M, D + 1) if need_cols else None
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            ex = None if exclude is None else exclude[b, i0:i1]
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(xs[i0:i1], yt[:, j0:j1], out=tile)
                _mask(tile, ex, j0)
                epilogue(tile, bias[b, j0:j1], ref[b, i0:i1], coef[b, i0:i1])
                if acc_r is not None:
                    acc_r[i0:i1].addmm_(tile, ya[j0:j1])
                if acc_c is not None:
                    acc_c[j0:j1].addmm_(tile.t(), xa[i0:i1])
        if acc_r is not None:
            cy, row_c = acc_r[:, :D], acc_r[:, D : D + 1]
            gx[b] = (row_c * xb - cy) * (2.0 * inv_s2)
            d2c += (row_c * x2).sum() + acc_r[:, D + 1].sum() - 2.0 * (cy * xb).sum()
        if acc_c is not None:
            cx, col_c = acc_c[:, :D], acc_c[:, D : D + 1]
            gy[b] = (col_c * yb - cx) * (2.0 * inv_s2)
            gw[b] = col_c.squeeze(1) * -2.0
    return gx, gy, d2c, gw
