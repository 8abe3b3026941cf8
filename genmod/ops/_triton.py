"""Fused Triton backend of the Gaussian pairwise logsumexp (CUDA, or CPU under the interpreter).

Importing this module costs nothing: Triton and the kernels (``_triton_fwd``, ``_triton_bwd``)
are imported on first use. ``genmod.ops.pairwise_logsumexp`` dispatches here for CUDA inputs
with the Gaussian kernel, and when ``backend="triton"`` is forced.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from genmod.ops._triton_dispatch import DIRECT_MAX_DIM
from genmod.ops._triton_launch import backward_mode, interpreting, launch
from genmod.ops.profiles import KERNELS

__all__ = ["PRECISIONS", "triton_available", "triton_pairwise_lse"]

PRECISIONS = ("ieee", "tf32x3", "tf32", "fp16x3")
"""Float32 product modes: full fp32 on the FMA units, split 3xTF32 on the tensor cores (both
meet the accuracy bound of DESIGN.md; ``pairwise_logsumexp`` picks "tf32x3" for float32, see
``tests/ops/test_refine.py``), plain TF32 (about 11 significant bits in the dot product;
opt-in only), and split 3xFP16 after a power-of-two scaling (``_triton_split``: TF32x3's
accuracy at fp16's tensor-core rate, twice TF32's on Hopper; opt-in until measured on a GPU,
forward only: the backward recomputes its scores with "tf32x3")."""

MAX_DIM = 256
"""Largest data dimension D kept in one register tile; larger D is refused (ValueError) and
``pairwise_logsumexp`` uses its torch path."""

_LOG2E = 1.4426950408889634


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``.

    True when Triton is importable and either ``device`` is CUDA or ``TRITON_INTERPRET=1`` is set
    (Triton's CPU interpreter; the variable must be set before the kernels are first imported,
    because Triton reads it when it decorates them).
    """
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.device(device).type == "cuda" or interpreting()


def _prepare(x: Tensor, y: Tensor, scale: Tensor, log_weights: Tensor, direct: bool):
    """Per-point terms of the split exponent (base 2); see ``_triton_fwd``. With ``direct``
    the kernels form ``|x - y|^2`` themselves: ``cy = log2(e) w``, ``cx = 0``."""
    s = scale.detach().to(device=x.device, dtype=x.dtype).reshape(1)
    k = _LOG2E / (s * s)
    if direct:
        cy = _LOG2E * log_weights.detach()
        return k, cy, cy.contiguous(), x.new_zeros(x.shape[:2])
    yy = (y * y).sum(-1)
    cy = _LOG2E * log_weights.detach() - 0.5 * k * yy
    cx = -0.5 * k * (x * x).sum(-1)
    return k, yy.contiguous(), cy.contiguous(), cx.contiguous()


class _PairwiseLSE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        y: Tensor,
        scale: Tensor,
        log_weights: Tensor,
        exclude: Tensor | None,
        precision: str,
        profile: int,
    ) -> Tensor:
        from genmod.ops._triton_fwd import lse_fwd_kernel

        batch, n, dim = x.shape
        m = y.shape[1]
        direct = dim <= DIRECT_MAX_DIM
        k, yy, cy, cx = _prepare(x, y, scale, log_weights, direct)
        k_dot = k
        if precision == "fp16x3" and not direct:
            from genmod.ops._triton_split import split_coefficients

            k_dot = split_coefficients(x, y, k)  # [k s^-2, s]: the operands' scaling folded in
        out = torch.empty(batch, n, dtype=x.dtype, device=x.device)
        lse = torch.empty_like(out)
        if batch * n > 0:
            launch(
                lse_fwd_kernel, "fwd", precision, x, n, "BLOCK_N",
                (x, y, cx, cy, k_dot, exclude if exclude is not None else out, out, lse,
                 n, m, dim, x.stride(0), x.stride(1), y.stride(0), y.stride(1)),
                DIRECT=direct, DIM=dim, PROFILE=profile, HAS_EXCLUDE=exclude is not None,
                PRECISION=precision,
            )  # fmt: skip
        ctx.save_for_backward(x, y, scale, yy, cy, lse, exclude)
        # The backward kernels have no fp16x3: they recompute the scores at tf32x3's accuracy,
        # which agrees with the forward's within the refinement's bound (tests/ops/test_refine.py).
        ctx.precision = "tf32x3" if precision == "fp16x3" else precision
        ctx.direct = direct
        ctx.profile = profile
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):
        from genmod.ops._triton_bwd import lse_bwd_x_kernel, lse_bwd_y_kernel

        x, y, scale, yy, cy, lse, exclude = ctx.saved_tensors
        need_x, need_y, need_s, need_w = ctx.needs_input_grad[:4]
        # GENMOD_TRITON_BWD=fused: one score pass for both sides (expanded path only, and only
        # when both sides are wanted; otherwise a split kernel alone does the work).
        fused = backward_mode() == "fused" and not ctx.direct and need_x and (need_y or need_w)
        batch, n, dim = x.shape
        m = y.shape[1]
        g = grad_out.to(x.dtype).contiguous()
        s = scale.detach().to(device=x.device, dtype=x.dtype).reshape(1)
        k = _LOG2E / (s * s)
        inv_s2 = 1.0 / (s * s)
        # Rows with no admissible term have lse = -inf; +inf makes every p_ij = 2^-inf = 0.
        lse = lse.masked_fill(lse == -math.inf, math.inf)
        excl = exclude if exclude is not None else lse
        flags = dict(DIRECT=ctx.direct, DIM=dim, PROFILE=ctx.profile,
                     HAS_EXCLUDE=exclude is not None, PRECISION=ctx.precision)  # fmt: skip
        args = (n, m, dim, x.stride(0), x.stride(1), y.stride(0), y.stride(1))
        grad_x = grad_y = grad_s = grad_w = None
        if fused:
            return (*_fused_backward(x, y, yy, cy, lse, g, k, inv_s2, excl, s, scale, need_y,
                                     need_s, need_w, flags, args), None, None, None)  # fmt: skip
        if need_x or need_s:
            # Without need_x the kernel skips the P @ y product (and uses the forward's tiles):
            # a bandwidth step pays only for the recomputed scores.
            gx = torch.empty_like(x) if need_x else x
            sd = torch.empty(batch, n, dtype=x.dtype, device=x.device)
            if batch * n * m > 0:
                launch(
                    lse_bwd_x_kernel, "bwd_x" if need_x else "fwd", ctx.precision, x, n,
                    "BLOCK_N", (x, y, yy, cy, lse, g, k, inv_s2, excl, gx, sd, *args),
                    NEED_GRAD=need_x, **flags,
                )  # fmt: skip
            else:
                gx, sd = gx.zero_() if need_x else gx, sd.zero_()
            grad_x = gx if need_x else None
            if need_s:
                grad_s = (sd.sum() * inv_s2 / s).reshape(scale.shape).to(scale)
        if need_y or need_w:
            gy = torch.empty_like(y) if need_y else y
            gw = torch.empty(batch, m, dtype=y.dtype, device=y.device)
            if batch * n * m > 0:
                launch(
                    lse_bwd_y_kernel, "bwd_y", ctx.precision, x, m, "BLOCK_M",
                    (x, y, cy, lse, g, k, inv_s2, excl, gy, gw, *args),
                    NEED_GRAD=need_y, **flags,
                )  # fmt: skip
            else:
                gy, gw = gy.zero_() if need_y else gy, gw.zero_()
            grad_y = gy if need_y else None
            grad_w = gw if need_w else None
        return grad_x, grad_y, grad_s, grad_w, None, None, None


def _fused_backward(x, y, yy, cy, lse, g, k, inv_s2, excl, s, scale, need_y, need_s, need_w,
                    flags, args):  # fmt: skip
    """Gradients of x, y, scale and log_weights from ``lse_bwd_fused_kernel`` (one score pass;
    non-deterministic in the last bits of dL/dx and dL/ds, which it adds up atomically)."""
    from genmod.ops._triton_bwd_fused import lse_bwd_fused_kernel

    batch, n, _ = x.shape
    m = y.shape[1]
    acc = torch.zeros_like(x)  # sum_j P_ij (y_j - x_i), added to atomically
    sd = x.new_zeros(batch, n)  # sum_j P_ij |x_i - y_j|^2
    gy = torch.empty_like(y) if need_y else y
    gw = y.new_zeros(batch, m)
    if batch * n * m > 0:
        launch(
            lse_bwd_fused_kernel, "bwd_fused", flags["PRECISION"], x, m, "BLOCK_M",
            (x, y, yy, cy, lse, g, k, inv_s2, excl, acc, sd, gy, gw, *args),
            NEED_Y=need_y, NEED_SD=need_s, HAS_EXCLUDE=flags["HAS_EXCLUDE"],
            PRECISION=flags["PRECISION"],
        )  # fmt: skip
    elif need_y:
        gy = gy.zero_()
    grad_s = (sd.sum() * inv_s2 / s).reshape(scale.shape).to(scale) if need_s else None
    return acc.mul_(inv_s2), gy if need_y else None, grad_s, gw if need_w else None


def _check(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    log_weights: Tensor,
    exclude: Tensor | None,
    precision: str,
    kernel: str,
) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "gaussian" and x.shape[-1] > DIRECT_MAX_DIM:
        raise ValueError(
            f"kernel={kernel!r} needs D <= {DIRECT_MAX_DIM} for the Triton backend (the "
            f"explicit-difference kernels), got D={x.shape[-1]}"
        )
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64 for the Triton backend, got {x.dtype}")
    if y.dtype != x.dtype or log_weights.dtype != x.dtype:
        raise ValueError(
            f"y and log_weights must have x's dtype {x.dtype}, got {y.dtype} and "
            f"{log_weights.dtype}"
        )
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"x and y must be [B, N, D] and [B, M, D], got {x.shape} and {y.shape}")
    batch, _, dim = x.shape
    if y.shape[0] != batch or y.shape[2] != dim:
        raise ValueError(f"y must be [{batch}, M, {dim}] to match x {tuple(x.shape)}, got "
                         f"{tuple(y.shape)}")  # fmt: skip
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"x must have 1 <= D <= {MAX_DIM} for the Triton backend, got D={dim}")
    if tuple(log_weights.shape) != (batch, y.shape[1]):
        raise ValueError(
            f"log_weights must be [{batch}, {y.shape[1]}], got {tuple(log_weights.shape)}"
        )
    if scale.dim() != 0:
        raise ValueError(f"scale must be a 0-d tensor, got shape {tuple(scale.shape)}")
    if exclude is not None and (
        exclude.dtype != torch.int64 or tuple(exclude.shape) != (batch, x.shape[1])
    ):
        raise ValueError(
            f"exclude must be int64 [{batch}, {x.shape[1]}], got {exclude.dtype} "
            f"{tuple(exclude.shape)}"
        )
    devices = {t.device for t in (x, y, log_weights)}
    if exclude is not None:
        devices.add(exclude.device)
    if len(devices) != 1:
        raise ValueError(f"x, y, log_weights and exclude must share one device, got "
                         f"{sorted(map(str, devices))}")  # fmt: skip
    if not triton_available(x.device):
        raise ValueError(
            f"the Triton backend needs triton and a CUDA device (or TRITON_INTERPRET=1); "
            f"x is on {x.device}"
        )


def triton_pairwise_lse(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    log_weights: Tensor,
    exclude: Tensor | None = None,
    precision: str = "ieee",
    kernel: str = "gaussian",
) -> Tensor:
    """Fused pairwise logsumexp on CUDA with Triton (Gaussian; any kernel at D <= 8).

    ``out[b, i] = logsumexp_{j != exclude[b, i]} (log_weights[b, j]
    - ||x[b, i] - y[b, j]||^2 / (2 scale^2))``, in nats, computed blockwise with a running
    maximum and a rescaled sum, so far-tail queries stay finite and exact and a row with no
    admissible term is ``-inf`` (with zero gradients), never NaN. Memory is O((N + M) D) in
    forward and backward; the backward recomputes the block scores.

    Above ``D = DIRECT_MAX_DIM`` (8) the squared distance is expanded as
    ``|x|^2 + |y|^2 - 2 x.y`` with the product on the matrix units, so the caller should centre
    x and y there (``genmod.ops.pairwise_logsumexp`` does); at ``D <= 8`` the kernels form
    explicit differences, which need no centring and lose no accuracy to cancellation.

    The backward runs one deterministic kernel per side (rows: dL/dx, dL/ds; columns: dL/dy,
    dL/dw), each recomputing the scores. With ``GENMOD_TRITON_BWD=fused`` (read at each
    backward; above D = 8, when dL/dx and dL/dy or dL/dw are all needed) one kernel computes
    each tile's scores once for both sides, adding the row sums atomically: dL/dx and dL/ds
    then vary in their last bits from run to run (see ``_triton_bwd_fused``).

    Args:
        x: Queries ``[B, N, D]``, float32 or float64, 1 <= D <= 256.
        y: Reference points ``[B, M, D]``, same dtype and device.
        scale: Kernel standard deviation, a 0-d tensor > 0 (may require grad).
        log_weights: ``[B, M]`` log weights (zeros for none; may hold -inf; may require grad).
        exclude: Optional int64 ``[B, N]``: index of the y left out for each query, -1 for none.
        precision: Float32 product mode: ``"ieee"`` (full fp32), ``"tf32x3"`` (split 3xTF32),
            ``"tf32"`` (fast, about 1e-3 relative error in the distances; opt-in) or
            ``"fp16x3"`` (split 3xFP16 of the operands scaled by a power of two, about 2^-21
            relative to ``|x| |y|`` like tf32x3; forward only, the backward uses tf32x3;
            opt-in). Float64 inputs always use full precision; the explicit-difference
            kernels use no product.
        kernel: one of :data:`genmod.ops.profiles.KERNELS` (``log k`` of ``|x - y| / scale``
            replaces the gaussian's ``-|x - y|^2 / (2 scale^2)``); other than the gaussian only
            at ``D <= 8``.

    Returns:
        ``[B, N]`` log-sum-exp values, differentiable w.r.t. x, y, scale and log_weights.

    Raises:
        ValueError: if shapes, dtypes, devices or ``precision`` are unsupported (callers fall
            back to the torch path), naming the argument; from the backward, if
            ``GENMOD_TRITON_BWD`` is set to anything but "split" or "fused".
    """
    _check(x, y, scale, log_weights, exclude, precision, kernel)
    if x.dtype == torch.float64:
        precision = "ieee"
    x, y, log_weights = x.contiguous(), y.contiguous(), log_weights.contiguous()
    if exclude is not None:
        exclude = exclude.contiguous()
    return _PairwiseLSE.apply(x, y, scale, log_weights, exclude, precision, KERNELS.index(kernel))
