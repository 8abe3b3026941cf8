"""One-pass Triton backward of the Gaussian pairwise logsumexp (expanded path, D > 8; opt-in).

The default backward (``_triton_bwd``) runs two kernels, each recomputing every score: the
x-side one streams y past a block of x (row sums), the y-side one streams x past a block of y
(column sums). With the split 3xTF32 product a score costs three tensor-core passes and an
``exp2``, and each kernel adds one more product (three passes) for its gradient, so an
all-inputs backward pays 12 passes and 2 exps per pair against the forward's 3 and 1.

``lse_bwd_fused_kernel`` computes each (y-block, x-block) tile's scores once and uses them for
both sides, as FlashAttention-2's backward does for dK, dV and dQ: one program owns a block of
``BLOCK_M`` reference points and streams x past it, keeping the column sums in registers
(``dL/dy``, ``dL/dw``, written once at the end as ``lse_bwd_y_kernel`` does), while each
tile's row sums (the ``dL/dx`` partials and the per-row part of ``dL/ds``) are added into
zeroed ``[B, N, D]`` and ``[B, N]`` buffers with ``tl.atomic_add``. Per tile: the score product
``X Y^T``, one ``exp2`` per pair, then ``P^T X`` (if ``dL/dy`` is wanted) and ``P Y``: 9 passes
and 1 exp per pair with tf32x3 instead of 12 and 2, plus ``BLOCK_N * (D + 1)`` atomic adds.

The atomics make ``dL/dx`` and ``dL/ds`` non-deterministic in their last bits (the order in
which the y-blocks' partials land varies from run to run); ``dL/dy`` and ``dL/dw`` are
deterministic. Hence it is opt-in: ``GENMOD_TRITON_BWD=fused`` (see
``_triton_launch.backward_mode``), taken only on the expanded path and only when dL/dx and
dL/dy or dL/dw are all needed (otherwise one of the split kernels alone does the work).

Notation and formulas as in ``_triton_bwd``, with ``P_ij = g_i p_ij``::

    dL/dx_i = (1 / s^2) sum_j P_ij (y_j - x_i),   dL/dy_j = (1 / s^2) sum_i P_ij (x_i - y_j).

Each tile contributes ``P_tile Y_tile - x * rowsum_tile`` to the x buffer (and
``P_tile^T X_tile - y * colsum_tile`` to the y accumulator) rather than the raw products with the
subtraction at the end: the running sums then hold ``sum_j P_ij (y_j - x_i)``, which is small
where a point's neighbours surround it, so the float32 additions over thousands of tiles round
at that small magnitude instead of at ``|x_i| sum_j P_ij``. The caller forms
``dL/dx = acc / s^2`` and ``dL/ds = sum(sd) / s^3``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["lse_bwd_fused_kernel"]


@triton.jit
def lse_bwd_fused_kernel(
    x_ptr,
    y_ptr,
    yy_ptr,
    cy_ptr,
    lse_ptr,
    g_ptr,
    k_ptr,
    inv_s2_ptr,
    excl_ptr,
    accx_ptr,
    sd_ptr,
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
    NEED_Y: tl.constexpr,
    NEED_SD: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """gw[b, j] = dL/dw_j and, if NEED_Y, gy[b, j] = dL/dy_j (stored); accx[b, i] +=
    sum_j P_ij (y_j - x_i) and, if NEED_SD, sd[b, i] += sum_j P_ij ||x_i - y_j||^2 (atomic;
    both buffers zeroed by the caller, laid out with x's strides). Grid: (B * num_m_blocks,).
    """
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
    # Out-of-range columns get cy = -inf, so their p is 0 without a per-pair mask.
    cy = tl.load(cy_ptr + b * M + offs_m, mask=mask_m, other=float("-inf"))
    if NEED_SD:
        yy = tl.load(yy_ptr + b * M + offs_m, mask=mask_m, other=0.0)
    k = tl.load(k_ptr)
    inv_s2 = tl.load(inv_s2_ptr)

    x_base = x_ptr + b * stride_xb
    acc_base = accx_ptr + b * stride_xb
    col_sum = tl.zeros([BLOCK_M], dtype)
    px = tl.zeros([BLOCK_M, BLOCK_D], dtype)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_x = mask_n[:, None] & mask_d[None, :]
        x_off = offs_n.to(tl.int64)[:, None] * stride_xn + offs_d[None, :]
        x = tl.load(x_base + x_off, mask=mask_x, other=0.0)
        # Out-of-range rows get lse = +inf and g = 0: their p is 0.
        lse = tl.load(lse_ptr + b * N + offs_n, mask=mask_n, other=float("inf"))
        g = tl.load(g_ptr + b * N + offs_n, mask=mask_n, other=0.0)
        # The scores in the forward's orientation (x rows, y columns), so that each row's p
        # sums to 1 as the forward's lse rounded it.
        xy = tl.dot(x, tl.trans(y), input_precision=PRECISION, out_dtype=dtype)
        t = cy[None, :] + k * xy - lse[:, None]
        if HAS_EXCLUDE:
            excl = tl.load(excl_ptr + b * N + offs_n, mask=mask_n, other=-1)
            t = tl.where(offs_m[None, :] == excl[:, None], float("-inf"), t)
        p = tl.exp2(t) * g[:, None]  # P of the tile: [BLOCK_N, BLOCK_M]
        c = tl.sum(p, axis=0)
        col_sum += c
        pc = p.to(dtype)
        if NEED_Y:
            px += (
                tl.dot(tl.trans(pc), x, input_precision=PRECISION, out_dtype=dtype)
                - y * (c[:, None])
            )
        r = tl.sum(p, axis=1)
        dx = tl.dot(pc, y, input_precision=PRECISION, out_dtype=dtype) - x * r[:, None]
        tl.atomic_add(acc_base + x_off, dx, mask=mask_x, sem="relaxed")
        if NEED_SD:
            xx = tl.sum(x * x, axis=1)
            d2 = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)
            sd = tl.sum(p * d2, axis=1)
            tl.atomic_add(sd_ptr + b * N + offs_n, sd, mask=mask_n, sem="relaxed")

    if NEED_Y:
        gy_ptrs = gy_ptr + b * stride_yb + offs_m[:, None].to(tl.int64) * stride_ym
        tl.store(gy_ptrs + offs_d[None, :], inv_s2 * px, mask=mask_y)
    tl.store(gw_ptr + b * M + offs_m, col_sum, mask=mask_m)
