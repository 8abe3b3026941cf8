"""Triton forward kernel of the Gaussian pairwise logsumexp (imported only when Triton is used).

One program owns a block of ``BLOCK_N`` queries of one batch element and streams every
``BLOCK_M`` reference points past it, keeping a running maximum and a rescaled sum per query
(the online softmax of flash-attention without the value matmul). Nothing of size N x M is
written anywhere. The exponent is split as

    -||x_i - y_j||^2 / (2 s^2) + w_j = cx_i + (cy_j + k * <x_i, y_j>) / log2(e)

with ``cx_i = -log2(e) |x_i|^2 / (2 s^2)``, ``cy_j = log2(e) (w_j - |y_j|^2 / (2 s^2))`` and
``k = log2(e) / s^2`` precomputed by the caller, so each pair costs one fused multiply-add on top
of the tensor-core product, and the reduction runs in base 2 (``exp2``/``log2``).

With ``DIRECT`` (low dimensions, ``D = DIM <= 8``; see ``_triton_dispatch.DIRECT_MAX_DIM``) the
kernel forms ``||x_i - y_j||^2`` from explicit differences, one pass per dimension over the tile,
and the exponent is ``cy_j - (k / 2) ||x_i - y_j||^2`` with ``cy_j = log2(e) w_j`` and
``cx_i = 0``: no cancellation, so each score is exact to a few float32 roundings of itself.
The direct kernels also serve the other kernel profiles (``PROFILE``, see ``_triton_profiles``):
the exponent is then ``cy_j + log2 k(|x_i - y_j| / s)``.

``PRECISION`` is the product mode of ``tl.dot`` ("ieee", "tf32x3", "tf32"), or "fp16x3": the
split-fp16 product of ``_triton_split``, for which ``k_ptr`` holds ``[k s^-2, s]`` (the dot
coefficient with the scaling folded in, then the power of two ``s`` the operands are scaled
by before the split).
"""

from __future__ import annotations

import triton
import triton.language as tl

from genmod.ops._triton_profiles import direct_d2, log2_profile
from genmod.ops._triton_split import dot_fp16x3, fp16_split

__all__ = ["lse_fwd_kernel"]


@triton.jit
def lse_fwd_kernel(
    x_ptr,
    y_ptr,
    cx_ptr,
    cy_ptr,
    k_ptr,
    excl_ptr,
    out_ptr,
    lse_ptr,
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
    HAS_EXCLUDE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, i] = ln2 * (cx[b, i] + log2 sum_j 2^(cy[b, j] + k <x_i, y_j>)), j != excl[b, i].

    Also stores the inner base-2 logsumexp ``lse[b, i]`` (without ``cx``), which the backward
    kernels use to recompute the normalised weights p_ij. Grid: (B * num_n_blocks,).
    """
    pid = tl.program_id(0)
    b = (pid // num_n_blocks).to(tl.int64)
    offs_n = (pid % num_n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    dtype = x_ptr.dtype.element_ty

    x_rows = x_ptr + b * stride_xb + offs_n.to(tl.int64) * stride_xn
    if not DIRECT:
        x = tl.load(x_rows[:, None] + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                    other=0.0)  # fmt: skip
        if PRECISION == "fp16x3":  # x's split once per program, y's per tile
            split_scale = tl.load(k_ptr + 1)
            x_hi, x_lo = fp16_split(x, split_scale)
    k = tl.load(k_ptr)
    if HAS_EXCLUDE:
        excl = tl.load(excl_ptr + b * N + offs_n, mask=mask_n, other=-1)

    y_base = y_ptr + b * stride_yb
    cy_base = cy_ptr + b * M
    m_i = tl.full([BLOCK_N], float("-inf"), dtype)
    l_i = tl.zeros([BLOCK_N], dtype)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        y_rows = y_base + offs_m.to(tl.int64) * stride_ym
        # Out-of-range columns get cy = -inf, so they drop out without a per-pair mask.
        cy = tl.load(cy_base + offs_m, mask=mask_m, other=float("-inf"))
        if DIRECT:
            d2 = direct_d2(x_rows, y_rows, mask_n, mask_m, DIM)
            if PROFILE == 0:
                t = cy[None, :] - (0.5 * k) * d2
            else:  # k ln 2 = 1 / s^2
                t = cy[None, :] + log2_profile(d2 * (k * 0.6931471805599453), PROFILE)
        else:
            y = tl.load(y_rows[:, None] + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                        other=0.0)  # fmt: skip
            if PRECISION == "fp16x3":
                xy = dot_fp16x3(x_hi, x_lo, y, split_scale)
            else:
                xy = tl.dot(x, tl.trans(y), input_precision=PRECISION, out_dtype=dtype)
            t = cy[None, :] + k * xy
        if HAS_EXCLUDE:
            t = tl.where(offs_m[None, :] == excl[:, None], float("-inf"), t)
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        # A row that has seen only -inf keeps m = -inf; shift by 0 there so no inf - inf = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(t - m_safe[:, None]), axis=1)
        m_i = m_new

    lse = m_i + tl.log2(l_i)
    cx = tl.load(cx_ptr + b * N + offs_n, mask=mask_n, other=0.0)
    out = (cx + lse) * 0.6931471805599453
    tl.store(lse_ptr + b * N + offs_n, lse, mask=mask_n)
    tl.store(out_ptr + b * N + offs_n, out, mask=mask_n)
