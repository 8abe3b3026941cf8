"""Blocked, memory-bounded pairwise logsumexp in plain torch (CPU and CUDA).

Forward: for each tile of rows of x, stream tiles of y past it; each tile's scores come from
one batched GEMM and are folded into a running (max, rescaled sum) per row, so no N x M matrix
ever exists. Backward recomputes each tile's scores (as flash-attention does) and accumulates
the four gradients with two more GEMMs per tile. Memory: O((N + M) D + tile).

Gaussian tiles use the expansion ``-||x - y||^2 / (2 s^2) = x.y / s^2 - |y|^2/(2 s^2)
- |x|^2 / (2 s^2)``: the last term is constant along a row, so it is added after the
reduction and a tile costs one GEMM (with the column bias fused) plus one exp per pair.
The caller centres x and y on the mean of y so the expansion does not lose precision on data
far from the origin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genmod.ops import _fused, _lowd, _tiles
from genmod.ops.profiles import d_log_profile, log_profile

__all__ = ["BlockedPairwiseLSE", "DIRECT_MAX_DIM"]

# Up to this many dimensions tiles are built from explicit differences (D passes over the
# tile): the GEMM expansion's absolute error, about eps * (|x|^2 + |y|^2) / (2 s^2) nats,
# matters most in low dimensions, where neighbours are close and |out| is small.
DIRECT_MAX_DIM = 4


def _expanded(kernel: str, dim: int, direct: bool = False) -> bool:
    return kernel == "gaussian" and dim > DIRECT_MAX_DIM and not direct


def _tile_scores(
    xb: Tensor,
    yb: Tensor,
    bias: Tensor,
    x2: Tensor,
    y2: Tensor,
    inv_s2: Tensor,
    kernel: str,
    direct: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Scores of one tile ``[b, n, m]`` and, on the general path, ``r2 = |x - y|^2 / s^2``.

    On the expanded gaussian path (``_expanded``) the scores omit the row constant
    ``-|x|^2 / (2 s^2)`` and ``bias`` is ``lw - |y|^2 / (2 s^2)``; otherwise ``bias = lw``.
    ``direct`` builds ``r2`` from explicit differences at any D (D passes over the tile):
    exact to the dtype's relative precision, for the rows the expansion cannot resolve.
    """
    if _expanded(kernel, xb.shape[-1], direct):
        return torch.baddbmm(bias.unsqueeze(1), xb * inv_s2, yb.transpose(1, 2)), None
    if direct or xb.shape[-1] <= DIRECT_MAX_DIM:
        # Few dimensions: explicit differences are cheap and free of cancellation.
        r2 = (xb[..., 0].unsqueeze(2) - yb[..., 0].unsqueeze(1)).square_()
        for d in range(1, xb.shape[-1]):
            r2 += (xb[..., d].unsqueeze(2) - yb[..., d].unsqueeze(1)).square_()
    else:
        r2 = torch.baddbmm(x2.unsqueeze(2) + y2.unsqueeze(1), xb, yb.transpose(1, 2), alpha=-2.0)
        r2.clamp_min_(0.0)
    r2.mul_(inv_s2)
    return log_profile(r2, kernel).add_(bias.unsqueeze(1)), r2


def _mask_excluded(scores: Tensor, ex: Tensor | None, j0: int) -> None:
    """Set ``scores[b, i, ex[b, i] - j0] = -inf`` where that column lies in the tile.

    Without a host synchronisation (no ``.any()`` or ``.nonzero()``): every row writes one
    element, ``-inf`` where its excluded column is in the tile, else the value already there
    (at a clamped column). O(rows) work per tile.
    """
    if ex is None:
        return
    col = ex - j0
    hit = (col >= 0) & (col < scores.shape[2])
    idx = col.clamp(0, scores.shape[2] - 1).unsqueeze(2)
    kept = scores.gather(2, idx)
    scores.scatter_(2, idx, kept.masked_fill_(hit.unsqueeze(2), -math.inf))


def _forward_tiles(
    x: Tensor,
    y: Tensor,
    inv_s2: Tensor,
    bias: Tensor,
    x2: Tensor,
    y2: Tensor,
    exclude: Tensor | None,
    kernel: str,
    direct: bool = False,
) -> Tensor:
    """The eager tiled forward (any kernel, device and dtype)."""
    B, N, _ = x.shape
    M = y.shape[1]
    out = torch.empty(B, N, dtype=x.dtype, device=x.device)
    tb, tn, tm = _tiles.tile_shape(B, N, M, x.element_size(), x.device)
    for b0 in range(0, B, tb):
        b1 = min(B, b0 + tb)
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            ex = None if exclude is None else exclude[b0:b1, i0:i1]
            m = torch.full((b1 - b0, i1 - i0), -math.inf, dtype=x.dtype, device=x.device)
            s = torch.zeros_like(m)
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                sc, _ = _tile_scores(
                    x[b0:b1, i0:i1], y[b0:b1, j0:j1], bias[b0:b1, j0:j1],
                    x2[b0:b1, i0:i1], y2[b0:b1, j0:j1], inv_s2, kernel, direct,
                )  # fmt: skip
                _mask_excluded(sc, ex, j0)
                m, s = _tiles.online_lse_update(sc, m, s)
            out[b0:b1, i0:i1] = _tiles.finish_lse(m, s)
    return out


class BlockedPairwiseLSE(torch.autograd.Function):
    """``out[b, i] = logsumexp_j (lw[b, j] + log k(|x[b,i] - y[b,j]|^2 / s^2))`` in tiles;
    ``direct=True`` uses explicit differences at every D (see :func:`_tile_scores`)."""

    @staticmethod
    def forward(ctx, x, y, scale, lw, exclude, kernel, direct=False):  # noqa: D102
        B, N, _ = x.shape
        M = y.shape[1]
        inv_s2 = scale.reciprocal().square()
        x2 = x.square().sum(-1)
        y2 = y.square().sum(-1)
        lw_ = torch.zeros(B, M, dtype=x.dtype, device=x.device) if lw is None else lw
        expanded = _expanded(kernel, x.shape[-1], direct)
        bias = lw_ - 0.5 * inv_s2 * y2 if expanded else lw_
        out = None
        if expanded and _fused.use_fused(x, B * N * M):
            out = _fused.fused_gaussian_forward(x, y, inv_s2, bias, exclude)
        elif not expanded and _lowd.use_lowd(x, B * N * M, direct):
            out = _lowd.lowd_forward(x, y, inv_s2, lw_, exclude, kernel)
        if out is None:
            out = _forward_tiles(x, y, inv_s2, bias, x2, y2, exclude, kernel, direct)
        if expanded:
            out -= 0.5 * inv_s2 * x2
        ctx.save_for_backward(x, y, scale, lw, exclude, out)
        ctx.kernel = kernel
        ctx.direct = direct
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, y, scale, lw, exclude, out = ctx.saved_tensors
        kernel, direct = ctx.kernel, ctx.direct
        need_x, need_y, need_s, need_w = ctx.needs_input_grad[:4]
        B, N, _ = x.shape
        M = y.shape[1]
        inv_s2 = scale.reciprocal().square()
        x2 = x.square().sum(-1)
        y2 = y.square().sum(-1)
        lw_ = torch.zeros(B, M, dtype=x.dtype, device=x.device) if lw is None else lw
        expanded = _expanded(kernel, x.shape[-1], direct)
        bias = lw_ - 0.5 * inv_s2 * y2 if expanded else lw_
        # Reference for p = exp(score - out): +inf where out = -inf so that p = 0 there.
        ref = out + 0.5 * inv_s2 * x2 if expanded else out
        # Rows that overflowed (NaN or +inf; the refinement replaced them, so no gradient
        # comes in) are left out: their p is set to 0, never inf * 0, in the tile loop.
        # Only the expansion overflows (|x|^2 beyond the dtype): explicit differences of
        # finite points give scores <= max(lw) < inf. On CUDA the check would synchronise
        # with the host: the tiles clean p unconditionally (one cheap pass) instead.
        overflowed = expanded and (
            x.device.type != "cpu" or bool((out.isnan() | (out == math.inf)).any())
        )
        ref = ref.masked_fill((out == -math.inf) | out.isnan(), math.inf)
        g = grad_out.to(x.dtype)
        if expanded and not overflowed and _fused.use_fused(x, B * N * M):
            flags = (need_x, need_y, need_s, need_w)
            need = "".join(k for k, on in zip("xysw", flags, strict=True) if on)
            gx, gy, d2g, gw = _fused.fused_gaussian_backward(
                x, y, inv_s2, bias, lw_, out, ref, g.contiguous(), exclude, need
            )
            # d/ds of -|x - y|^2 / (2 s^2) is |x - y|^2 / s^3.
            grad_s = (d2g * inv_s2 / scale).reshape(scale.shape) if need_s else None
            return gx, gy, grad_s, gw if need_w else None, None, None, None
        if not expanded and _lowd.use_lowd(x, B * N * M, direct):
            flags = (need_x, need_y, need_s, need_w)
            want = "".join(k for k, on in zip("xysw", flags, strict=True) if on)
            fused = _lowd.lowd_backward(x, y, inv_s2, lw_, exclude, ref, g, kernel, want)
            if fused is not None:
                gx, gy, cr2, gw = fused
                # d r2 / d s = -2 r2 / s, with r2 = |x - y|^2 / s^2 here.
                grad_s = (-2.0 * cr2 / scale).reshape(scale.shape) if need_s else None
                return gx, gy, grad_s, gw, None, None, None
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gw = torch.zeros(B, M, dtype=x.dtype, device=x.device) if need_w else None
        gs = torch.zeros((), dtype=x.dtype, device=x.device)
        tb, tn, tm = _tiles.tile_shape(B, N, M, x.element_size(), x.device, backward=True)
        for b0 in range(0, B, tb):
            b1 = min(B, b0 + tb)
            for i0 in range(0, N, tn):
                i1 = min(N, i0 + tn)
                xb = x[b0:b1, i0:i1]
                ex = None if exclude is None else exclude[b0:b1, i0:i1]
                for j0 in range(0, M, tm):
                    j1 = min(M, j0 + tm)
                    yb = y[b0:b1, j0:j1]
                    sc, r2 = _tile_scores(
                        xb, yb, bias[b0:b1, j0:j1], x2[b0:b1, i0:i1], y2[b0:b1, j0:j1],
                        inv_s2, kernel, direct,
                    )  # fmt: skip
                    _mask_excluded(sc, ex, j0)
                    # P[b, i, j] = g_i * p_ij: the weight of pair (i, j) in every gradient.
                    # exp_normal_: 0 where p would be subnormal (slow on x86) or NaN.
                    p = _tiles.exp_normal_(sc.sub_(ref[b0:b1, i0:i1].unsqueeze(2)))
                    if overflowed:
                        p.nan_to_num_(0.0, 0.0, 0.0)
                    p.mul_(g[b0:b1, i0:i1].unsqueeze(2))
                    if gw is not None:
                        gw[b0:b1, j0:j1] += p.sum(1)
                    if not (need_x or need_y or need_s):
                        continue
                    # C = P * d log k / d r2; d r2 / d x_i = 2 (x_i - y_j) / s^2.
                    if kernel == "gaussian":
                        c = p.mul_(-0.5)
                    else:
                        c = p.mul_(d_log_profile(r2, kernel)).nan_to_num_(0.0, 0.0, 0.0)
                    row_c = c.sum(2)
                    col_c = c.sum(1)
                    cy = torch.bmm(c, yb)
                    if gx is not None:
                        gx[b0:b1, i0:i1] += (2.0 * inv_s2) * (row_c.unsqueeze(2) * xb - cy)
                    if gy is not None:
                        cx = torch.bmm(c.transpose(1, 2), xb)
                        gy[b0:b1, j0:j1] += (2.0 * inv_s2) * (col_c.unsqueeze(2) * yb - cx)
                    if need_s and r2 is not None:
                        gs += (c * r2).sum() / inv_s2
                    elif need_s:
                        # sum_ij C_ij |x_i - y_j|^2, expanded so the tile is not re-read.
                        d2c = (
                            (row_c * x2[b0:b1, i0:i1]).sum()
                            + (col_c * y2[b0:b1, j0:j1]).sum()
                            - 2.0 * (cy * xb).sum()
                        )
                        gs += d2c
        # d r2 / d s = -2 r2 / s  =>  grad_s = sum_ij C_ij * (-2 |x_i - y_j|^2 / s^3).
        grad_s = (-2.0 * gs * inv_s2 / scale).reshape(scale.shape) if need_s else None
        return gx, gy, grad_s, gw, None, None, None
