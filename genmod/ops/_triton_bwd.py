"""Triton backward kernels of the Gaussian pairwise logsumexp (flash-attention style recompute).

With scores a_ij = w_j - ||x_i - y_j||^2 / (2 s^2) (minus -inf for excluded pairs), forward
output out_i = logsumexp_j a_ij, incoming gradient g_i and p_ij = exp(a_ij - out_i), let
P_ij = g_i p_ij. Then

    dL/dw_j = sum_i P_ij
    dL/dx_i = -(1 / s^2) (x_i sum_j P_ij - sum_j P_ij y_j)
    dL/dy_j =  (1 / s^2) (sum_i P_ij x_i - y_j sum_i P_ij)
    dL/ds   =  (1 / s^3) sum_ij P_ij ||x_i - y_j||^2

Neither kernel stores P: each recomputes the block scores from x, y and the saved base-2
logsumexp ``lse`` (``+inf`` where a row had no admissible term, which makes its p_ij zero).
``lse_bwd_x_kernel`` streams y past a block of x (row sums: dL/dx and the per-row part of
dL/ds); ``lse_bwd_y_kernel`` streams x past a block of y (column sums: dL/dy and dL/dw). Each
output element is written by exactly one program, so the result is deterministic. (When all
of them are wanted, ``_triton_bwd_fused`` does both sides from one score pass per tile, with
atomic row sums: opt-in, ``GENMOD_TRITON_BWD=fused``.)

With ``DIRECT`` (``D = DIM <= 8``) the kernels form ``x_i - y_j`` per dimension, as the forward
does: the scores from explicit differences, and the gradients as ``sum_j P_ij (x_i - y_j)``
instead of ``x_i sum_j P_ij - sum_j P_ij y_j``, which cancels when the neighbours of ``x_i``
lie within a few bandwidths of it and far from the origin.
"""

from __future__ import annotations

import triton
import triton.language as tl

from genmod.ops._triton_profiles import direct_d2, log2_profile, neg2_dlog_profile

__all__ = ["lse_bwd_x_kernel", "lse_bwd_y_kernel"]


@triton.jit
def lse_bwd_x_kernel(
    x_ptr,
    y_ptr,
    yy_ptr,
    cy_ptr,
    lse_ptr,
    g_ptr,
    k_ptr,
    inv_s2_ptr,
    excl_ptr,
    gx_ptr,
    sd_ptr,
    N,
    M,
    D,
    stride_xb,
    stride_xn,
    stride_yb,
    stride_ym,
    num_n_blocks,
    DIRECT: tl.constexpr,
    DIM: tl.constexpr,
    PROFILE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """sd[b, i] = g_i sum_j p_ij ||x_i - y_j||^2, and gx[b, i] = dL/dx_i if NEED_GRAD.

    Grid: (B * num_n_blocks,).
    """
    pid = tl.program_id(0)
    b = (pid // num_n_blocks).to(tl.int64)
    offs_n = (pid % num_n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    mask_x = mask_n[:, None] & mask_d[None, :]
    dtype = x_ptr.dtype.element_ty

    x_rows = x_ptr + b * stride_xb + offs_n.to(tl.int64) * stride_xn
    x = tl.load(x_rows[:, None] + offs_d[None, :], mask=mask_x, other=0.0)
    xx = tl.sum(x * x, axis=1)
    lse = tl.load(lse_ptr + b * N + offs_n, mask=mask_n, other=float("inf"))
    k = tl.load(k_ptr)
    k_ln2 = k * 0.6931471805599453  # 1 / s^2 as the forward forms it
    inv_s2 = tl.load(inv_s2_ptr)
    if HAS_EXCLUDE:
        excl = tl.load(excl_ptr + b * N + offs_n, mask=mask_n, other=-1)

    y_base = y_ptr + b * stride_yb
    row_sum = tl.zeros([BLOCK_N], dtype)
    row_d2 = tl.zeros([BLOCK_N], dtype)
    py = tl.zeros([BLOCK_N, BLOCK_D], dtype)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        y_rows = y_base + offs_m.to(tl.int64) * stride_ym
        cy = tl.load(cy_ptr + b * M + offs_m, mask=mask_m, other=float("-inf"))
        if DIRECT:
            d2 = direct_d2(x_rows, y_rows, mask_n, mask_m, DIM)
            if PROFILE == 0:
                t = cy[None, :] - (0.5 * k) * d2 - lse[:, None]
            else:
                t = cy[None, :] + log2_profile(d2 * k_ln2, PROFILE) - lse[:, None]
        else:
            y = tl.load(y_rows[:, None] + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                        other=0.0)  # fmt: skip
            yy = tl.load(yy_ptr + b * M + offs_m, mask=mask_m, other=0.0)
            xy = tl.dot(x, tl.trans(y), input_precision=PRECISION, out_dtype=dtype)
            t = cy[None, :] + k * xy - lse[:, None]
            d2 = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)
        if HAS_EXCLUDE:
            t = tl.where(offs_m[None, :] == excl[:, None], float("-inf"), t)
        p = tl.exp2(t)
        row_sum += tl.sum(p, axis=1)
        if DIRECT and PROFILE != 0:  # q_ij = p_ij (-2 f'(r2_ij)); the gaussian's factor is 1
            p = p * neg2_dlog_profile(d2 * k_ln2, PROFILE)
        row_d2 += tl.sum(p * d2, axis=1)
        if NEED_GRAD:
            if DIRECT:
                # py accumulates sum_j p_ij (x_i - y_j), one column of the tile per dimension.
                for d in tl.static_range(DIM):
                    xd = tl.load(x_rows + d, mask=mask_n, other=0.0)
                    yd = tl.load(y_rows + d, mask=mask_m, other=0.0)
                    pd = tl.sum(p * (xd[:, None] - yd[None, :]), axis=1)
                    py += tl.where(offs_d[None, :] == d, pd[:, None], 0.0)
            else:
                py = tl.dot(p.to(dtype), tl.load(y_rows[:, None] + offs_d[None, :],
                            mask=mask_m[:, None] & mask_d[None, :], other=0.0), py,
                            input_precision=PRECISION, out_dtype=dtype)  # fmt: skip

    g = tl.load(g_ptr + b * N + offs_n, mask=mask_n, other=0.0)
    if NEED_GRAD:
        if DIRECT:
            gx = (-g * inv_s2)[:, None] * py
        else:
            gx = (-g * inv_s2)[:, None] * (x * row_sum[:, None] - py)
        gx_ptrs = gx_ptr + b * stride_xb + offs_n[:, None].to(tl.int64) * stride_xn
        tl.store(gx_ptrs + offs_d[None, :], gx, mask=mask_x)
    tl.store(sd_ptr + b * N + offs_n, g * row_d2, mask=mask_n)


@triton.jit
def lse_bwd_y_kernel(
    x_ptr,
    y_ptr,
    cy_ptr,
    lse_ptr,
    g_ptr,
    k_ptr,
    inv_s2_ptr,
    excl_ptr,
    gy_ptr,
    gw_ptr,
    N,
    M,
    D,
    stride_xb,
    stride_xn,
    stride_yb,
    stride_ym,
    num_m_blocks,
    DIRECT: tl.constexpr,
    DIM: tl.constexpr,
    PROFILE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """gw[b, j] = dL/dw_j, and gy[b, j] = dL/dy_j if NEED_GRAD. Grid: (B * num_m_blocks,)."""
    pid = tl.program_id(0)
    b = (pid // num_m_blocks).to(tl.int64)
    offs_m = (pid % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    mask_y = mask_m[:, None] & mask_d[None, :]
    dtype = y_ptr.dtype.element_ty

    y_rows = y_ptr + b * stride_yb + offs_m.to(tl.int64) * stride_ym
    y = tl.load(y_rows[:, None] + offs_d[None, :], mask=mask_y, other=0.0)
    cy = tl.load(cy_ptr + b * M + offs_m, mask=mask_m, other=float("-inf"))
    k = tl.load(k_ptr)
    k_ln2 = k * 0.6931471805599453  # 1 / s^2 as the forward forms it
    inv_s2 = tl.load(inv_s2_ptr)

    x_base = x_ptr + b * stride_xb
    col_sum = tl.zeros([BLOCK_M], dtype)
    px = tl.zeros([BLOCK_M, BLOCK_D], dtype)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        x_rows = x_base + offs_n.to(tl.int64) * stride_xn
        lse = tl.load(lse_ptr + b * N + offs_n, mask=mask_n, other=float("inf"))
        g = tl.load(g_ptr + b * N + offs_n, mask=mask_n, other=0.0)
        if DIRECT:
            d2 = direct_d2(y_rows, x_rows, mask_m, mask_n, DIM)
            if PROFILE == 0:
                t = cy[:, None] - (0.5 * k) * d2 - lse[None, :]
            else:
                t = cy[:, None] + log2_profile(d2 * k_ln2, PROFILE) - lse[None, :]
        else:
            x = tl.load(x_rows[:, None] + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                        other=0.0)  # fmt: skip
            yx = tl.dot(y, tl.trans(x), input_precision=PRECISION, out_dtype=dtype)
            t = cy[:, None] + k * yx - lse[None, :]
        if HAS_EXCLUDE:
            excl = tl.load(excl_ptr + b * N + offs_n, mask=mask_n, other=-1)
            t = tl.where(offs_m[:, None] == excl[None, :], float("-inf"), t)
        p = tl.exp2(t) * g[None, :]
        col_sum += tl.sum(p, axis=1)
        if NEED_GRAD:
            if DIRECT:
                if PROFILE != 0:
                    p = p * neg2_dlog_profile(d2 * k_ln2, PROFILE)
                # px accumulates sum_i P_ij (x_i - y_j), one column of the tile per dimension.
                for d in tl.static_range(DIM):
                    yd = tl.load(y_rows + d, mask=mask_m, other=0.0)
                    xd = tl.load(x_rows + d, mask=mask_n, other=0.0)
                    pd = tl.sum(p * (xd[None, :] - yd[:, None]), axis=1)
                    px += tl.where(offs_d[None, :] == d, pd[:, None], 0.0)
            else:
                px = tl.dot(p.to(dtype), x, px, input_precision=PRECISION, out_dtype=dtype)

    if NEED_GRAD:
        gy = inv_s2 * px if DIRECT else inv_s2 * (px - y * col_sum[:, None])
        gy_ptrs = gy_ptr + b * stride_yb + offs_m[:, None].to(tl.int64) * stride_ym
        tl.store(gy_ptrs + offs_d[None, :], gy, mask=mask_y)
    tl.store(gw_ptr + b * M + offs_m, col_sum, mask=mask_m)
