"""Kernel log-profiles inside the Triton tiles (explicit-difference kernels, D <= 8).

``PROFILE`` is the index of the kernel in :data:`genmod.ops.profiles.KERNELS`: 0 gaussian,
1 tophat, 2 epanechnikov, 3 exponential, 4 linear, 5 cosine. With ``r2 = |x - y|^2 / s^2``
and ``f(r2) = log k(r)`` (natural log, ``k(0) = 1``, ``-inf`` outside a compact support) the
kernels need ``f`` in base 2 for the reduction and ``q = -2 f'(r2)`` for the gradients:

    dL/dx_i = -(g_i / s^2) sum_j p_ij q_ij (x_i - y_j),
    dL/ds   =  (1 / s^3)   sum_ij g_i p_ij q_ij |x_i - y_j|^2,

which for the gaussian (``q = 1``) are the formulas of ``_triton_bwd``. ``f'`` follows
:func:`genmod.ops.profiles.d_log_profile`, including its one-sided limits at ``r = 0``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["direct_d2", "log2_profile", "neg2_dlog_profile"]

_LOG2E = 1.4426950408889634
_HALF_PI = 1.5707963267948966


@triton.jit
def direct_d2(a_rows, b_rows, mask_a, mask_b, DIM: tl.constexpr):
    """``|a_i - b_j|^2`` ``[len(a), len(b)]`` from explicit differences, one dimension at a
    time (``a_rows`` / ``b_rows``: pointers to the first coordinate of each row; masked rows
    read 0): no cancellation, unlike ``|a|^2 + |b|^2 - 2 a.b``."""
    diff = (
        tl.load(a_rows, mask=mask_a, other=0.0)[:, None]
        - tl.load(b_rows, mask=mask_b, other=0.0)[None, :]
    )
    d2 = diff * diff
    for d in tl.static_range(1, DIM):
        diff = (
            tl.load(a_rows + d, mask=mask_a, other=0.0)[:, None]
            - tl.load(b_rows + d, mask=mask_b, other=0.0)[None, :]
        )
        d2 += diff * diff
    return d2


@triton.jit
def log2_profile(r2, PROFILE: tl.constexpr):
    """``log2 k(r)`` of ``r2 = r^2 >= 0``; ``-inf`` outside a compact support."""
    inside = r2 < 1.0
    rc = tl.sqrt(tl.minimum(r2, 1.0))
    if PROFILE == 0:
        val = (-0.5 * _LOG2E) * r2
    elif PROFILE == 1:
        val = tl.where(inside, 0.0, float("-inf"))
    elif PROFILE == 2:
        val = tl.where(inside, tl.log2(tl.maximum(1.0 - r2, 0.0)), float("-inf"))
    elif PROFILE == 3:
        val = -_LOG2E * tl.sqrt(r2)
    elif PROFILE == 4:
        val = tl.where(inside, tl.log2(tl.maximum(1.0 - rc, 0.0)), float("-inf"))
    else:
        val = tl.where(inside, tl.log2(tl.maximum(tl.cos(_HALF_PI * rc), 0.0)), float("-inf"))
    return val


@triton.jit
def neg2_dlog_profile(r2, PROFILE: tl.constexpr):
    """``-2 d log k / d r2``: 1 for the gaussian, 0 for the tophat and outside supports."""
    inside = r2 < 1.0
    r = tl.sqrt(r2)
    rc = tl.minimum(tl.maximum(r, 1e-30), 1.0)
    if PROFILE == 0:
        q = tl.full(r2.shape, 1.0, r2.dtype)
    elif PROFILE == 1:
        q = tl.zeros(r2.shape, r2.dtype)
    elif PROFILE == 2:
        q = tl.where(inside, 2.0 / tl.maximum(1.0 - r2, 1e-30), 0.0)
    elif PROFILE == 3:
        q = tl.where(r > 0.0, 1.0 / tl.maximum(r, 1e-30), 0.0)
    elif PROFILE == 4:
        q = tl.where(inside & (r > 0.0), 1.0 / (rc * tl.maximum(1.0 - rc, 1e-30)), 0.0)
    else:
        tan = tl.sin(_HALF_PI * rc) / tl.maximum(tl.cos(_HALF_PI * rc), 1e-30)
        q = tl.where(r > 1e-6, _HALF_PI * tan / rc, _HALF_PI * _HALF_PI)
        q = tl.where(inside, q, 0.0)
    return q
