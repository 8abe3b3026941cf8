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

_compiled: dict[str, object] = {}


def _epilogue(scores: Tensor, bias: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    sc = scores + bias
    m_new = torch.maximum(m, sc.amax(dim=1))
    m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
    s_new = s * torch.exp(m - m_safe) + torch.exp(sc - m_safe.unsqueeze(1)).sum(dim=1)
    return m_new, s_new


def _backward_epilogue(
    scores: Tensor, bias: Tensor, ref: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:
    """Overwrite the tile with ``C_ij = -g_i p_ij / 2`` (``p = exp(score - out)``); return
    its row and column sums."""
    c = torch.exp(scores + bias - ref.unsqueeze(1)) * (-0.5 * g).unsqueeze(1)
    scores.copy_(c)
    return c.sum(dim=1), c.sum(dim=0)


def _get(fn):
    """``fn`` compiled once per process (dynamic shapes), or ``fn`` itself if that fails."""
    name = fn.__name__
    if name not in _compiled:
        _compiled[name] = fn
        if os.environ.get("GENMOD_COMPILE", "1") != "0":
            try:
                compiled = torch.compile(fn, dynamic=True)
                probe = (torch.zeros(2, 3), torch.zeros(3), torch.zeros(2), torch.zeros(2))
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the expanded gaussian reduction: recompute each tile's scores with one
    GEMM, turn them into ``C = -g p / 2`` in one fused pass, then two GEMMs.

    Returns ``(grad_x, grad_y, sum_ij C_ij |x_i - y_j|^2, grad_log_weights)``.
    """
    epilogue = _get(_backward_epilogue)
    B, N, _ = x.shape
    M = y.shape[1]
    _, tn, tm = _tiles.tile_shape(1, N, M, x.element_size(), x.device)
    buf = torch.empty(tn * tm, dtype=x.dtype, device=x.device)
    gx, gy = torch.zeros_like(x), torch.zeros_like(y)
    gw = torch.zeros(B, M, dtype=x.dtype)
    d2c = torch.zeros((), dtype=x.dtype)
    x2, y2 = x.square().sum(-1), y.square().sum(-1)
    for b in range(B):
        xs = x[b] * inv_s2
        yt = y[b].t()
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            ex = None if exclude is None else exclude[b, i0:i1]
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(xs[i0:i1], yt[:, j0:j1], out=tile)
                _mask(tile, ex, j0)
                row_c, col_c = epilogue(tile, bias[b, j0:j1], ref[b, i0:i1], g[b, i0:i1])
                cy = tile @ y[b, j0:j1]
                gx[b, i0:i1] += row_c.unsqueeze(1) * x[b, i0:i1] - cy
                gy[b, j0:j1] += torch.addmm(
                    col_c.unsqueeze(1) * y[b, j0:j1], tile.t(), x[b, i0:i1], alpha=-1.0
                )
                gw[b, j0:j1] += col_c
                d2c += (row_c * x2[b, i0:i1]).sum() + (col_c * y2[b, j0:j1]).sum()
                d2c -= 2.0 * (cy * x[b, i0:i1]).sum()
    scale = 2.0 * inv_s2
    return gx * scale, gy * scale, d2c, gw * -2.0
