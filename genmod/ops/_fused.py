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

# Arguments of the probe call of each compiled function, for a tile of n x m.
_PROBES = {
    "_epilogue": lambda n, m: (torch.zeros(n, m), torch.zeros(m), torch.zeros(n), torch.zeros(n)),
    "_backward_epilogue": lambda n, m: (
        torch.zeros(n, m), torch.zeros(m), torch.zeros(n), torch.zeros(m), torch.zeros(n),
        torch.zeros(n),
    ),
    "_scale_epilogue": lambda n, m: (
        torch.zeros(n, m), torch.zeros(m), torch.zeros(m), torch.zeros(n), torch.zeros(n),
        torch.zeros(n),
    ),
}  # fmt: skip


# log of the smallest weight of a backward tile, 2^-100 of its row's total (which is 1): it
# keeps the products p_ij y_j of the GEMMs that follow out of the subnormal range unless a
# coordinate is below 2^-26 in size (on x86 each subnormal result takes a microcode assist;
# they made the column GEMM about 2.5x slower). Speed only: results are the same.
LOG_MIN_WEIGHT = -100.0 * math.log(2.0)


def _exp_normal(t: Tensor) -> Tensor:
    """``exp(t)``, with 0 where it would be subnormal (``t`` within 0.5 of log of the
    smallest normal number, or below).

    Subnormal results (and operands of the GEMMs that follow) take a microcode assist on
    x86: with a small bandwidth most pairs' weights fall there (``scripts/bench_subnormal.py``
    measured the 20000 x 20000 x 64 forward at h = 0.5 about 10% slower with a plain exp).
    What is dropped is below 2e-38 (float32) of the largest term of each row's sum, 1."""
    low = math.log(torch.finfo(t.dtype).tiny) + 0.5
    return torch.where(t > low, torch.exp(t.clamp(min=low)), 0.0)


def _epilogue(scores: Tensor, bias: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    sc = scores + bias
    m_new = torch.maximum(m, sc.amax(dim=1))
    m_safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
    s_new = s * torch.exp(m - m_safe) + _exp_normal(sc - m_safe.unsqueeze(1)).sum(dim=1)
    return m_new, s_new


def _backward_epilogue(
    scores: Tensor, bias: Tensor, ref: Tensor, y2: Tensor, a: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Overwrite the tile with ``p_ij = exp(max(score_ij + bias_j - ref_i, LOG_MIN_WEIGHT))``
    and return the row sums ``a_i += sum_j p_ij`` and ``c_i += sum_j p_ij |y_j|^2``, in one
    pass: the GEMM ``P y`` that follows then has exactly D columns.

    Weights below ``2^-100`` of their row's total (1) are raised to it, masked pairs
    included; a clamp costs less than a select, and what it adds to a row, at most
    ``M 2^-100``, is far below the resolution of float32 (2^-24) or float64 (2^-53). Rows
    with no finite score are the caller's to zero."""
    p = torch.exp((scores + bias - ref.unsqueeze(1)).clamp(min=LOG_MIN_WEIGHT))
    scores.copy_(p)
    return a + p.sum(1), c + (p * y2).sum(1)


def _scale_epilogue(
    scores: Tensor, bias: Tensor, lw: Tensor, ref: Tensor, a: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """Row sums ``a_i += sum_j p_ij`` and ``b_i += sum_j p_ij (lw_j - t_ij)`` of one tile,
    ``t_ij = score_ij + bias_j - ref_i = log p_ij``, without writing the tile.

    Since ``t_ij = lw_j - |x_i - y_j|^2 / (2 s^2) - out_i``, these give the bandwidth's
    gradient without a GEMM: ``sum_j p_ij |x_i - y_j|^2 = 2 s^2 (b_i - out_i a_i)``."""
    t = scores + bias - ref.unsqueeze(1)
    p = _exp_normal(t)
    return a + p.sum(1), b + torch.where(p > 0, p * (lw - t), 0.0).sum(1)


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
                compiled(*_PROBES[name](n, m))
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


def _rows_gemm(acc: Tensor, p: Tensor, y: Tensor) -> None:
    """``acc += p @ y`` with the rows of ``p`` split into one batch per thread: each thread
    then runs a single-threaded GEMM on rows it has just written (about 30% faster than
    one multi-threaded GEMM of this shape, thin ``y``, measured)."""
    nb = torch.get_num_threads()
    n, m = p.shape
    if nb > 1 and n % nb == 0 and n >= 64 * nb:
        acc.view(nb, n // nb, -1).baddbmm_(p.view(nb, n // nb, m), y.expand(nb, *y.shape))
    else:
        acc.addmm_(p, y)


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
    lw: Tensor,
    out: Tensor,
    ref: Tensor,
    g: Tensor,
    exclude: Tensor | None,
    need: str = "xys",
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of the expanded gaussian reduction ``out_i = lse_j (lw_j - |x_i - y_j|^2 / 2s^2)``
    for upstream gradients ``g``, with ``p_ij = exp(score_ij + bias_j - ref_i)``.

    Each tile's scores are recomputed by one GEMM. ``need`` names the gradients wanted
    (``x``, ``y`` or ``w`` for the log-weights, ``s`` for the scale); only their work is done:

    - ``x``: the tile becomes ``P`` in place, its pass also sums ``sum_j p_ij`` and
      ``sum_j p_ij |y_j|^2`` by rows, and ``P y`` (``[N, D]``, a GEMM) is accumulated over the
      tiles; ``grad_x_i = (g_i / s^2) (sum_j p_ij y_j - x_i sum_j p_ij)``. With ``s``:
      ``sum_j p_ij |x_i - y_j|^2 = |x_i|^2 sum_j p_ij + sum_j p_ij |y_j|^2
      - 2 x_i . sum_j p_ij y_j``.
    - ``y`` / ``w``: ``[g x, g]^T P`` (``[D + 1, M]``, a GEMM, with g divided by its largest
      size and the result multiplied back);
      ``grad_y_j = (1 / s^2) (sum_i g_i p_ij x_i - y_j sum_i g_i p_ij)`` and
      ``grad_lw_j = sum_i g_i p_ij``.
      With ``s`` and without ``x`` the GEMM takes the column ``g |x|^2`` too, for the same
      expansion by columns.
    - ``s`` alone (a KDE's bandwidth): no GEMM, one fused pass of row sums,
      ``sum_j p_ij |x_i - y_j|^2 = 2 s^2 (sum_j p_ij (lw_j - log p_ij) - out_i sum_j p_ij)``.

    Returns ``(grad_x, grad_y, sum_ij g_i p_ij |x_i - y_j|^2, grad_lw)``, None where not needed.
    """
    need_x, need_s = "x" in need, "s" in need
    need_c = "y" in need or "w" in need
    stats = need_s and not need_x and not need_c
    cols_s = need_s and not need_x and need_c
    p_epi = _get(_backward_epilogue) if (need_x or need_c) else None
    s_epi = _get(_scale_epilogue) if stats else None
    B, N, D = x.shape
    M = y.shape[1]
    _, tn, tm = _tiles.tile_shape(1, N, M, x.element_size(), x.device)
    buf = torch.empty(tn * tm, dtype=x.dtype, device=x.device)
    gx = torch.empty_like(x) if need_x else None
    gy = torch.empty_like(y) if need_c else None
    gw = torch.empty(B, M, dtype=x.dtype) if need_c else None
    d2g = torch.zeros((), dtype=x.dtype) if need_s else None
    # Starting values of each row block's two sums: two tensors, as passing one tensor
    # twice would make the compiled epilogue specialise (and recompile) on the aliasing.
    zeros_a, zeros_b = x.new_zeros(tn), x.new_zeros(tn)
    for b in range(B):
        # Rows with no finite score have p = 0: their g is zeroed, since the tile's floor
        # (LOG_MIN_WEIGHT) would otherwise give them weights; the scale-only pass masks too.
        live = out[b] > -math.inf
        gb = torch.where(live, g[b], 0.0).unsqueeze(1)
        xb, yb = x[b], y[b]
        x2, y2 = xb.square().sum(-1, keepdim=True), yb.square().sum(-1)
        xs, yt = xb * inv_s2, yb.t()
        # Columns accumulate transposed, [k, M] += [k, n] @ P: MKL's fastest layout for it.
        # g is divided by its largest size: the products gn_i p_ij x_i are then about as
        # large as p_ij x_i, not |g| times smaller (g = 1/N made them subnormal).
        g_abs = gb.abs().max()
        g_max = torch.where(g_abs > 0, g_abs, 1.0)
        xa_t = None
        if need_c:
            gn = gb / g_max
            xcols = [xb * gn, gn] + ([x2 * gn] if cols_s else [])
            xa_t = torch.cat(xcols, 1).t().contiguous()
        acc_r = x.new_zeros(N, D) if need_x else None
        acc_c = x.new_zeros(xa_t.shape[0], M) if need_c else None
        row_a = x.new_zeros(N) if (stats or need_x) else None
        row_b = x.new_zeros(N) if (stats or need_x) else None
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            ex = None if exclude is None else exclude[b, i0:i1]
            xs_i, ref_i = xs[i0:i1], ref[b, i0:i1]
            acc_ri = None if acc_r is None else acc_r[i0:i1]
            xa_i = None if xa_t is None else xa_t[:, i0:i1]
            ra, rb = zeros_a[: i1 - i0], zeros_b[: i1 - i0]  # written back once
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                tile = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(xs_i, yt[:, j0:j1], out=tile)
                _mask(tile, ex, j0)
                if stats:
                    ra, rb = s_epi(tile, bias[b, j0:j1], lw[b, j0:j1], ref_i, ra, rb)
                    continue
                ra, rb = p_epi(tile, bias[b, j0:j1], ref_i, y2[j0:j1], ra, rb)
                if acc_ri is not None:
                    _rows_gemm(acc_ri, tile, yb[j0:j1])
                if acc_c is not None:
                    acc_c[:, j0:j1].addmm_(xa_i, tile)
            if row_a is not None:
                row_a[i0:i1], row_b[i0:i1] = ra, rb
        if acc_r is not None:
            gx[b] = (acc_r - row_a.unsqueeze(1) * xb) * (gb * inv_s2)
            if need_s:
                d2 = row_a * x2[:, 0] + row_b - 2.0 * (acc_r * xb).sum(1)
                d2g += (gb[:, 0] * d2).sum()
        if acc_c is not None:
            acc_c *= g_max
            gpx, col_g = acc_c[:D].t(), acc_c[D].unsqueeze(1)
            gy[b] = (gpx - col_g * yb) * inv_s2
            gw[b] = acc_c[D]
            if cols_s:
                d2 = acc_c[D] * y2 + acc_c[D + 1] - 2.0 * (gpx * yb).sum(1)
                d2g += d2.sum()
        if stats:
            d2 = (row_b - out[b].masked_fill(~live, 0.0) * row_a) * (2.0 / inv_s2)
            d2g += (gb[:, 0] * d2.masked_fill(~live, 0.0)).sum()
    return gx, gy, d2g, gw
