"""``pairwise_logsumexp``: the one reduction every genmod model runs on.

    out[..., i] = logsumexp_j ( log_weights[..., j]
                                + log k(||x[..., i, :] - y[..., j, :]||^2 / scale^2) )

For the gaussian kernel, ``log k = -||x - y||^2 / (2 scale^2)``: a Gaussian KDE with bandwidth
(standard deviation) ``scale`` is ``pairwise_logsumexp(x, y, h) - log M - (D/2) log(2 pi h^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genmod.ops import _blocked, _triton_dispatch
from genmod.ops._refine import direct_rows_exact, refine_rows
from genmod.ops._triton_dispatch import DIRECT_MAX_DIM as TRITON_DIRECT_MAX_DIM
from genmod.ops._validate import check_inputs
from genmod.ops.profiles import KERNELS

__all__ = ["KERNELS", "pairwise_logsumexp"]

BACKENDS = ("auto", "torch", "triton")
PRECISIONS = ("auto", "ieee", "tf32x3", "tf32", "fp16x3")


def _use_triton(backend: str, kernel: str, x: Tensor) -> bool:
    if backend == "torch":
        return False
    direct = x.shape[-1] <= _triton_dispatch.DIRECT_MAX_DIM
    ok = (kernel == "gaussian" or direct) and _triton_dispatch.available(x)
    if backend == "triton" and not ok:
        raise ValueError(
            "backend='triton' needs the gaussian kernel (any kernel at D <= "
            f"{_triton_dispatch.DIRECT_MAX_DIM}), float32 input and triton on a CUDA device "
            "(or TRITON_INTERPRET=1)"
        )
    return ok


def pairwise_logsumexp(
    x: Tensor,
    y: Tensor,
    scale: float | Tensor = 1.0,
    log_weights: Tensor | None = None,
    *,
    kernel: str = "gaussian",
    exclude: Tensor | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> Tensor:
    """Log of a (weighted) kernel sum over reference points, for every query point.

    Memory is O((N + M) D + tile) in forward and backward: tiles of scores are reduced
    on the fly with a running (max, rescaled sum), and the backward recomputes them. Far
    queries get finite, exact values (no underflow to ``-inf``). Reduced-precision inputs
    (float32) stay within 1e-4 nats of the exact result (relative to ``|out|``, absolute
    below 1): the few rows whose GEMM rounding error could exceed that (a query within a
    few small bandwidths of a reference point far from the centre) are recomputed in
    float64.

    Args:
        x: queries ``[..., N, D]`` (floating).
        y: reference points ``[..., M, D]``, ``M >= 1``; leading dims broadcast with x's.
        scale: kernel scale ``> 0`` (float or 0-d tensor, differentiable); for the gaussian
            kernel the standard deviation, in the units of x.
        log_weights: ``[..., M]`` log-weights added to each term (``-inf`` = weight 0), or
            None for all zeros.
        kernel: one of :data:`KERNELS`; ``log k`` of ``r = ||x - y|| / scale`` is gaussian
            ``-r^2/2``, tophat ``0``, epanechnikov ``log(1 - r^2)``, exponential ``-r``,
            linear ``log(1 - r)``, cosine ``log cos(pi r / 2)`` (compact ones ``-inf`` at
            ``r >= 1``; a row with no reference in reach is ``-inf``).
        exclude: ``[..., N]`` integer index of a reference point to leave out of each
            query's sum (``-1`` for none); leave-one-out densities use it.
        backend: ``"auto"`` (Triton on CUDA for float32, gaussian at any D <= 256 and every
            kernel at D <= 8; else blocked torch),
            ``"torch"`` or ``"triton"``.
        precision: matrix-unit precision of the Triton kernel (which takes float32):
            ``"auto"`` (``"tf32x3"``), ``"ieee"`` (full float32 on the FMA units),
            ``"tf32x3"`` (split product, three TF32 tensor-core passes: its products err by
            about 2^-21 relative, comparable to the rounding of the scores to float32, and
            the refinement's estimate bounds its error as it does full float32's, so the
            results meet the same 1e-4 bound), ``"tf32"`` (faster, about 1e-3 relative
            error in distances: opt-in only), or ``"fp16x3"`` (opt-in: x and y scaled by one
            power of two into fp16's range, each split into two fp16 parts, three fp16
            tensor-core products accumulated in float32; errs like tf32x3, which the same
            estimate bounds, at twice TF32's tensor-core rate on Hopper; the forward only, its
            backward recomputes with tf32x3). Only the expanded product (D > 8) uses it; the
            torch path always uses full precision.

    Returns:
        ``[..., N]`` in nats, dtype of x.

    Raises:
        ValueError: naming the argument, for mismatched D, dtypes or devices, ``scale <= 0``,
            NaN/Inf inputs, empty y, non-floating dtypes, bad shapes or names.

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(100, 3)
        >>> pairwise_logsumexp(x, y, 0.5).shape
        torch.Size([5])
    """
    scale_t = check_inputs(x, y, scale, log_weights, exclude)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    N, D = x.shape[-2:]
    M = y.shape[-2]
    shapes = [x.shape[:-2], y.shape[:-2]]
    if log_weights is not None:
        shapes.append(log_weights.shape[:-1])
    if exclude is not None:
        shapes.append(exclude.shape[:-1])
    try:
        batch = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(
            f"leading (batch) dims do not broadcast: x {tuple(x.shape)}, y {tuple(y.shape)}"
        ) from None
    B = batch.numel()
    if N == 0 or B == 0:
        return x.new_zeros((*batch, N))
    x3 = x.expand(*batch, N, D).reshape(B, N, D)
    y3 = y.expand(*batch, M, D).reshape(B, M, D)
    use_triton = _use_triton(backend, kernel, x3)
    # Explicit differences: the torch path at D <= 4, the Triton kernels at D <= 8 (see
    # _triton_dispatch.DIRECT_MAX_DIM); everything else expands |x|^2 + |y|^2 - 2 x.y.
    direct_max = TRITON_DIRECT_MAX_DIM if use_triton else _blocked.DIRECT_MAX_DIM
    expands = x3.shape[-1] > direct_max
    raw = (x3, y3)
    if expands:
        # Distances are translation invariant: centring on the (detached) mean of y keeps
        # the |x|^2 + |y|^2 - 2 x.y expansion accurate for data far from the origin. Explicit
        # differences need no centring, which would round each point by eps |x - c| / 2.
        centre = y3.detach().mean(dim=1, keepdim=True)
        x3, y3 = x3 - centre, y3 - centre
    x3, y3 = x3.contiguous(), y3.contiguous()
    lw = None
    if log_weights is not None:
        lw = log_weights.to(x.dtype).expand(*batch, M).reshape(B, M).contiguous()
    ex = None
    if exclude is not None:
        ex = exclude.to(torch.int64).expand(*batch, N).reshape(B, N).contiguous()
    if use_triton:
        from genmod.ops._triton import triton_pairwise_lse

        if lw is None:
            lw = x3.new_zeros(B, M)
        if precision == "auto":
            precision = "tf32x3" if x3.dtype == torch.float32 else "ieee"
        out = triton_pairwise_lse(x3, y3, scale_t, lw, ex, precision=precision, kernel=kernel)
    else:
        out = _blocked.BlockedPairwiseLSE.apply(x3, y3, scale_t, lw, ex, kernel)
    # Expanded rows are checked and refined (float64 rows too, for tiny bandwidths); the
    # Triton kernels' explicit differences are checked against their own, much smaller, error
    # estimate (and for overflow), so only rows that truly need it are recomputed; without
    # weights none can need it (direct_rows_exact), and the check and its sync are skipped.
    if expands:
        out = refine_rows(out, x3, y3, scale_t, lw, ex, kernel, raw)
    elif use_triton and (log_weights is not None or not direct_rows_exact(D, M, x3.dtype)):
        out = refine_rows(out, x3, y3, scale_t, lw, ex, kernel, raw, direct=True)
    return out.reshape(*batch, N)
