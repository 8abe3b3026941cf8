"""Whether the fused Triton kernel can serve a call (imports triton lazily, once)."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = ["available"]


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
