"""The CPU fast path in few dimensions (D <= 4): explicit differences, the kernel's profile
and the online (max, sum) of a tile in one compiled pass, for every kernel.

In one to three dimensions a GEMM has nothing to do (D multiply-adds per pair) and the eager
tile loop is bound by memory: each of its ~10 elementwise steps (D differences, square, scale,
profile, bias, max, subtract, exp, sum) reads and writes a tile-sized temporary. Here
``torch.compile`` fuses a tile into two loops over its pairs that keep everything in
registers: one for the row maxima and one for the sum of ``exp``, recomputing the few flops of
the differences instead of storing them. The backward is fused the same way: each tile's
weights ``p_ij = g_i exp(score_ij - out_i)`` are recomputed, never stored, and reduced by rows
(the gradients of x and of the scale) and by columns (of y and of the log-weights).

Explicit differences have no cancellation, so these results are as accurate as the eager
path's (the refinement of the GEMM expansion does not apply). Like ``_fused``, each function is
compiled once per process and dtype (Inductor's on-disk cache makes later processes start
fast); without a compiler, or with ``GENMOD_COMPILE=0``, the eager path runs instead.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from genmod.ops import _tiles
from genmod.ops.profiles import d_log_profile, log_profile

__all__ = ["MAX_DIM", "lowd_backward", "lowd_forward", "use_lowd"]

MAX_DIM = 4
"""Explicit differences up to this D (as ``_blocked.DIRECT_MAX_DIM``)."""

MIN_PAIRS = 1 << 20
"""Below this many pairs (1M) a call always runs the eager loop."""

COMPILE_PAIRS = 1 << 28
"""A call of this many pairs (268M: about 2 s eager) switches the process to the compiled
path at once."""

COMPILE_AFTER_PAIRS = 3 << 30
"""Eager pairs (forward and backward calls of at least :data:`MIN_PAIRS`) after which the
process switches to the compiled path: about 20 s of eager work on two cores."""

_state = {"active": False, "eager_pairs": 0}
"""Whether this process uses the compiled path, and the eager pairs counted so far."""

_TILE = (256, 8192)
"""Rows x columns of a tile: nothing tile-sized is stored, so tiles are large (few calls)."""

_compiled: dict[tuple, object] = {}
_failed = False


def _scores(x: Tensor, yt: Tensor, bias: Tensor, inv_s2: Tensor, ex: Tensor | None, kernel: str):
    """``(scores [n, m], r2 [n, m])`` of a tile, ``r2 = |x_i - y_j|^2 / s^2`` by explicit
    differences; ``ex`` (tile column to leave out per row, or outside the tile) masks."""
    r2 = (x[:, 0:1] - yt[0:1, :]).square()
    for d in range(1, x.shape[1]):
        r2 = r2 + (x[:, d : d + 1] - yt[d : d + 1, :]).square()
    r2 = r2 * inv_s2
    sc = log_profile(r2, kernel) + bias
    if ex is not None:
        cols = torch.arange(yt.shape[1], device=x.device)
        sc = torch.where(cols.unsqueeze(0) == ex.unsqueeze(1), -math.inf, sc)
    return sc, r2


def _exp_normal(t: Tensor) -> Tensor:
    """``exp(t)``, 0 where it would be subnormal (a microcode assist per result on x86)."""
    low = math.log(torch.finfo(t.dtype).tiny) + 0.5
    return torch.where(t > low, torch.exp(t.clamp(min=low)), 0.0)


def _sum_tile(x, yt, bias, inv_s2, ex, s, kernel: str):
    """One pass: ``s_i += sum_j exp(score_ij)`` with scores already shifted by their upper
    bound (every profile is <= 0, so ``score_ij <= lw_j``: the caller subtracts max lw)."""
    sc, _ = _scores(x, yt, bias, inv_s2, ex, kernel)
    return s + _exp_normal(sc).sum(dim=1)


def _forward_tile(x, yt, bias, inv_s2, ex, m, s, kernel: str):
    sc, _ = _scores(x, yt, bias, inv_s2, ex, kernel)
    m_new = torch.maximum(m, sc.amax(dim=1))
    m_safe = torch.where(m_new == -math.inf, 0.0, m_new)
    s_new = s * torch.exp(m - m_safe) + torch.exp(sc - m_safe.unsqueeze(1)).sum(dim=1)
    return m_new, s_new


def _backward_tile(x, yt, bias, inv_s2, ex, ref, g, kernel: str, want: str):
    """Row sums ``[n, k]`` and column sums ``[k', m]`` of a tile's gradient terms, with
    ``p_ij = g_i exp(score_ij - ref_i)`` (0 where subnormal, below 1e-38 of the row's total)
    and ``C_ij = p_ij d log k / d r2``: by rows
    ``sum_j C_ij (x_i - y_j)`` per dim (``x`` in ``want``) and ``sum_j C_ij r2_ij`` (``s``);
    by columns ``sum_i C_ij (x_i - y_j)`` per dim (``y``) and ``sum_i p_ij`` (``w``)."""
    sc, r2 = _scores(x, yt, bias, inv_s2, ex, kernel)
    # Row sums take g_i after the sum; column sums need it per pair.
    p = _exp_normal(sc - ref.unsqueeze(1))
    if kernel == "gaussian":
        c = p * -0.5
    else:
        c = (p * d_log_profile(r2, kernel)).nan_to_num(0.0, 0.0, 0.0)
    dims = range(x.shape[1])
    gcol = g.unsqueeze(1)
    rows = [(c * (x[:, d : d + 1] - yt[d : d + 1, :])).sum(1) * g for d in dims if "x" in want]
    cols = [(gcol * c * (x[:, d : d + 1] - yt[d : d + 1, :])).sum(0) for d in dims if "y" in want]
    if "s" in want:
        rows.append((c * r2).sum(1) * g)
    if "w" in want:
        cols.append((gcol * p).sum(0))
    empty = x.new_zeros(0)
    return (
        torch.stack(rows, 1) if rows else empty,
        torch.stack(cols, 0) if cols else empty,
    )


def _get(fn, key: tuple):
    """``fn`` compiled once per process and ``key`` (dynamic shapes), or None."""
    global _failed
    key = (fn.__name__, *key)
    if key not in _compiled:
        # Each kernel, mask, dtype and gradient set is a graph of the same function: allow
        # them all (torch's default stops compiling after 8 and silently runs eagerly).
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 128)
        # GENMOD_COMPILE_BACKEND=eager traces the same graphs without generating C++ (the
        # tests use it to cover every kernel, D and dtype in seconds).
        backend = os.environ.get("GENMOD_COMPILE_BACKEND", "inductor")
        try:
            _compiled[key] = torch.compile(fn, dynamic=True, backend=backend)
        except Exception as err:  # pragma: no cover - depends on the toolchain
            _failed = True
            warnings.warn(
                f"torch.compile unavailable ({type(err).__name__}); genmod's low-dimensional "
                "CPU kernel runs eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
    return _compiled[key]


def use_lowd(x: Tensor, pairs: int, direct: bool = False) -> bool:
    """Whether a CPU call with D <= :data:`MAX_DIM` takes the compiled path.

    Compiling costs a fixed ~8 to 10 s per process on two cores (importing TorchDynamo and
    Inductor, tracing, loading the cached C++), after which a pair costs about 5x less. So
    the path is rented before it is bought: a process runs the eager loop until one call
    reaches :data:`COMPILE_PAIRS` or its eager calls add up to :data:`COMPILE_AFTER_PAIRS`
    (the eager work then done is about twice the compile cost), and compiled from then on.
    A short run (the default ``genmod-train`` on two moons) never pays the compile cost; a
    long one pays it once. ``GENMOD_COMPILE=0`` never compiles.
    """
    if (
        x.device.type != "cpu"
        or x.shape[-1] > MAX_DIM
        or direct
        or pairs < MIN_PAIRS
        or _failed
        or os.environ.get("GENMOD_COMPILE", "1") == "0"
    ):
        return False
    if not _state["active"]:
        _state["eager_pairs"] += pairs
        _state["active"] = pairs >= COMPILE_PAIRS or _state["eager_pairs"] >= COMPILE_AFTER_PAIRS
    return _state["active"]


def _guard(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run``, returning None after a compilation failure (no C++ compiler, an unsupported
    platform): torch compiles at the first call, so that is where a failure shows. The
    process then stays on the eager path, with one warning."""

    @functools.wraps(run)
    def guarded(*args: Any) -> Any:
        global _failed
        try:
            return run(*args)
        except Exception as err:  # torch raises many types for a failed compilation
            if not _compiled:
                raise
            _failed = True
            warnings.warn(
                f"genmod's compiled low-dimensional CPU kernel failed ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:200]}); running eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    return guarded


def _tile_ex(exclude: Tensor, j0: int, j1: int) -> Tensor:
    """Each row's excluded column relative to the tile ``[j0, j1)`` (-1 when outside it)."""
    col = exclude - j0
    return torch.where((col >= 0) & (col < j1 - j0), col, -1)


def _two_pass(step, x, yt, lw, inv_s2, exclude, kernel: str, tm: int) -> Tensor:
    """The online (max, sum) over column tiles for rows ``x`` ``[n, D]`` (one row block)."""
    n, M = x.shape[0], yt.shape[1]
    m = torch.full((n,), -math.inf, dtype=x.dtype)
    s = torch.zeros(n, dtype=x.dtype)
    for j0 in range(0, M, tm):
        j1 = min(M, j0 + tm)
        ex = None if exclude is None else _tile_ex(exclude, j0, j1)
        m, s = step(x, yt[:, j0:j1], lw[j0:j1], inv_s2, ex, m, s, kernel)
    return _tiles.finish_lse(m, s)


@_guard
def lowd_forward(
    x: Tensor, y: Tensor, inv_s2: Tensor, lw: Tensor, exclude: Tensor | None, kernel: str
) -> Tensor | None:
    """``lse_j (lw_j + log k(|x_i - y_j|^2 / s^2))`` for x ``[B, N, D]`` -> ``[B, N]``, or
    None when compilation is unavailable (the caller runs the eager loop).

    Every profile is at most 0, so ``c = max_j lw_j`` bounds every score: one pass sums
    ``exp(score_ij - c)`` with no running max. A row whose sum is below ``sqrt(tiny)`` (a
    query more than about 9 (float32) or 26 (float64) bandwidths from every point, where
    terms may have underflowed) is recomputed by the exact two-pass online reduction, so far
    queries keep their exact finite values.
    """
    masked = exclude is not None
    one = _get(_sum_tile, (kernel, masked))
    two = _get(_forward_tile, (kernel, masked))
    if one is None or two is None:
        return None
    B, N, _ = x.shape
    M = y.shape[1]
    tn, tm = min(N, _TILE[0]), min(M, _TILE[1])
    floor = torch.finfo(x.dtype).tiny ** 0.5
    out = torch.empty(B, N, dtype=x.dtype)
    for b in range(B):
        yt = y[b].t().contiguous()
        top = lw[b].amax()
        shift = torch.where(top > -math.inf, top, 0.0)
        bias = lw[b] - shift
        ex_b = None if exclude is None else exclude[b]
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            s = torch.zeros(i1 - i0, dtype=x.dtype)
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                ex = None if ex_b is None else _tile_ex(ex_b[i0:i1], j0, j1)
                s = one(x[b, i0:i1], yt[:, j0:j1], bias[j0:j1], inv_s2, ex, s, kernel)
            out[b, i0:i1] = shift + s.log()
            far = (s < floor).nonzero(as_tuple=True)[0]
            if far.numel():
                rows = i0 + far
                ex_rows = None if ex_b is None else ex_b[rows]
                out[b, rows] = _two_pass(two, x[b, rows], yt, lw[b], inv_s2, ex_rows, kernel, tm)
    return out


@_guard
def lowd_backward(
    x: Tensor,
    y: Tensor,
    inv_s2: Tensor,
    lw: Tensor,
    exclude: Tensor | None,
    ref: Tensor,
    g: Tensor,
    kernel: str,
    want: str,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None] | None:
    """``(grad_x, grad_y, sum_ij C_ij r2_ij, grad_lw)`` of the reduction for upstream ``g``
    ``[B, N]`` (``ref``: ``out`` with ``+inf`` on rows without mass), None for what ``want``
    (a subset of ``"xysw"``) leaves out, with ``C_ij = g_i p_ij d log k / d r2`` and
    ``r2 = |x_i - y_j|^2 / s^2``: ``grad_x_i = 2 / s^2 sum_j C_ij (x_i - y_j)``,
    ``grad_y_j = -2 / s^2 sum_i C_ij (x_i - y_j)``, ``grad_lw_j = sum_i g_i p_ij``.
    Returns None when compilation is unavailable."""
    step = _get(_backward_tile, (kernel, exclude is not None, want))
    if step is None:
        return None
    B, N, D = x.shape
    M = y.shape[1]
    tn, tm = min(N, _TILE[0]), min(M, _TILE[1])
    nx, ny = D * ("x" in want), D * ("y" in want)
    rows = torch.zeros(B, N, nx + ("s" in want), dtype=x.dtype)
    cols = torch.zeros(B, ny + ("w" in want), M, dtype=x.dtype)
    for b in range(B):
        yt = y[b].t().contiguous()
        for i0 in range(0, N, tn):
            i1 = min(N, i0 + tn)
            for j0 in range(0, M, tm):
                j1 = min(M, j0 + tm)
                ex = None if exclude is None else _tile_ex(exclude[b, i0:i1], j0, j1)
                r, c = step(x[b, i0:i1], yt[:, j0:j1], lw[b, j0:j1], inv_s2, ex,
                            ref[b, i0:i1], g[b, i0:i1], kernel, want)  # fmt: skip
                if r.numel():
                    rows[b, i0:i1] += r
                if c.numel():
                    cols[b, :, j0:j1] += c
    two = 2.0 * inv_s2
    gx = rows[..., :D] * two if nx else None
    cr2 = rows[..., nx].sum() if "s" in want else None
    gy = cols[:, :D].transpose(1, 2) * -two if ny else None
    gw = cols[:, ny] if "w" in want else None
    return gx, gy, cr2, gw
