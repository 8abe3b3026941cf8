"""Whether the fused Triton kernel can serve a call (imports triton lazily, once)."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = ["DIRECT_MAX_DIM", "available"]

DIRECT_MAX_DIM = 8
"""Up to this many dimensions the Triton kernels form ``x_d - y_d`` per dimension instead of
expanding ``|x|^2 + |y|^2 - 2 x.y``.

Accuracy: the expansion errs by about ``eps (|x| + |y|)^2 / (2 s^2)`` nats in a score
(``_refine``), so a float32 row meets the 1e-4 bound of DESIGN.md section 3 only while
``(|x| + |y*|) / s`` stays below about 20 (eps = 1.2e-7, half the bound as margin). On
standardised data ``|x| ~ sqrt(D)`` and the bandwidths a likelihood picks shrink like
``n^(-1/(D + 4))``: at D = 2, n = 160 000, h = 0.04 the ratio is about 100 and refinement
recomputed 172 of 256 rows in float64 on the H200; up to D = 8 the learned bandwidth stays
well below ``0.3 sqrt(D)`` for training sets of 10^4 and more, so the expansion would keep
flagging most near rows. Explicit differences err by ``(D + 4) eps`` relative to the score
itself, with no cancellation at any offset or bandwidth.
Cost: a pair costs ``2 D`` fused float32 operations on the FMA units instead of a share of a
tensor-core product, against about 8 FMA-slot equivalents for its ``exp2`` and 4 for the
online reduction: at D = 8 the direct pair costs about 2.3x the exp-bound one, while above
D = 8 the likelihood bandwidth approaches ``sqrt(D)`` scale and the expansion's flagged share
falls, so the tensor-core product wins. Both sides of the crossover are measured by
``scripts/gpu_check.sh`` (low-D rows at D = 1, 2, 3)."""


@functools.lru_cache(maxsize=1)
def _triton_module():
    try:
        from genmod.ops import _triton
    except Exception:  # triton missing or broken: the torch path serves every call
        return None
    return _triton


def available(x: Tensor) -> bool:
    """True for float32 tensors on CUDA (or on CPU under ``TRITON_INTERPRET=1``) when
    triton imports."""
    if x.dtype != torch.float32:
        return False
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    mod = _triton_module()
    return mod is not None and mod.triton_available(x.device)
