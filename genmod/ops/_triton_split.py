"""Split-fp16 products for the Triton forward (``precision="fp16x3"``; imported only when used).

fp16 has the 10 explicit mantissa bits of TF32 and, on Hopper, twice its dense tensor-core
rate, but a narrow range (largest 65504, smallest normal 2^-14). So both operands are first
scaled by one power of two ``s = 2^(14 - e)`` with ``max(|x|, |y|) < 2^e`` (exact in
float32), making every scaled component smaller than 2^14, then split as

    a s = hi + 2^-11 lo,    hi = fp16(a s),    lo = fp16((a s - hi) 2^11),

(``a s - hi`` is exact in float32; ``|a s - hi| <= ulp_16(hi) / 2`` so ``lo`` has the range
of ``a s``), and the product is

    <x, y> ~= 2^(2 (e - 14)) (<hi_x, hi_y> + 2^-11 (<hi_x, lo_y> + <lo_x, hi_y>)),

three fp16 tensor-core products accumulated in float32 (the products of two fp16 values are
exact in float32). The rounding of ``lo`` leaves ``hi + 2^-11 lo`` within about
``max(2^-22 |a s|, 2^-36)`` of ``a s`` (2^-36: half fp16's subnormal spacing 2^-24, times
2^-11), and the dropped ``2^-22 <lo_x, lo_y>`` is of the same order: about 2^-21 relative to
``|x| |y|`` in all, as TF32x3's split. Components far below the largest lose relative
precision, but as the largest scaled component is at least 2^13 their absolute error stays
below about 2^-49 of it, far under the ``eps (|x| + |y|)^2`` the refinement budgets
(``_refine``; ``tests/ops/test_refine.py`` emulates the split in torch).

The factor ``2^(2 (e - 14))`` is folded into the forward's dot coefficient ``k`` and ``s``
rides after it (:func:`split_coefficients`), so the kernel's signature is unchanged and no
value crosses to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["FP16_EXP", "dot_fp16x3", "fp16_split", "split_coefficients"]

FP16_EXP = 14
"""Scaled components stay below ``2^FP16_EXP`` (fp16's largest finite value is about 2^16;
the ``lo`` parts have the same bound)."""

_MIN_EXP = -110  # s = 2^(14 - e) <= 2^124 stays a finite float32 for tiny data


def split_coefficients(x: Tensor, y: Tensor, k: Tensor) -> Tensor:
    """``[k 2^(2 (e - 14)), 2^(14 - e)]`` (x's dtype) with ``max(|x|, |y|) < 2^e``, computed
    on x's device without a host synchronisation; ``k`` is the ``[1]`` dot coefficient.

    ``e`` comes from ``frexp`` (``amax = m 2^e``, ``0.5 <= m < 1``; ``e = 0`` for all-zero
    data), clamped at -110 so that ``s`` stays finite. The folded coefficient is formed in
    float64: ``s^-2`` alone may leave float32's range although ``k s^-2`` does not.
    """
    amax = x.new_zeros(())
    if x.numel():
        amax = torch.linalg.vector_norm(x.detach(), ord=float("inf"))
    if y.numel():
        amax = torch.maximum(amax, torch.linalg.vector_norm(y.detach(), ord=float("inf")))
    e = torch.frexp(amax).exponent.clamp_min(_MIN_EXP).double().reshape(1)
    s = torch.exp2(FP16_EXP - e)
    kd = k.detach().double() * torch.exp2(2.0 * (e - FP16_EXP))
    return torch.cat([kd, s]).to(x.dtype)


@triton.jit
def fp16_split(a, s):
    """``a s = hi + 2^-11 lo`` with fp16 ``hi = fp16(a s)``, ``lo = fp16((a s - hi) 2^11)``
    (round to nearest even), for float32 ``a`` and the power of two ``s``."""
    a = a * s
    hi = a.to(tl.float16)
    lo = ((a - hi.to(tl.float32)) * 2048.0).to(tl.float16)
    return hi, lo


@triton.jit
def dot_fp16x3(a_hi, a_lo, b, s):
    """``s^2 a @ b.T`` in float32 ``[len(a), len(b)]`` from the split ``a`` (``fp16_split``)
    and float32 ``b`` (``[len(b), K]``, split here): the two cross products first, scaled by
    2^-11, then the leading product accumulated onto them (``lo_a lo_b`` is left out)."""
    b_hi, b_lo = fp16_split(b, s)
    b_hi, b_lo = tl.trans(b_hi), tl.trans(b_lo)
    small = tl.dot(a_hi, b_lo, out_dtype=tl.float32)
    small = tl.dot(a_lo, b_hi, small)
    return tl.dot(a_hi, b_hi, small * 0.00048828125)
