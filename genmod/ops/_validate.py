"""Argument checks for :func:`genmod.ops.pairwise_logsumexp` (errors name the argument).

Checks of values (NaN / Inf, index ranges, the scale's floor) read a result on the host: on
CUDA each is a synchronisation that stalls the queue. :func:`trusted_inputs` switches them
off where the inputs are known good, as a training loop over validated data does; shapes,
dtypes and devices are always checked (they cost nothing).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["check_inputs", "checks_values", "min_scale", "trusted_inputs"]

_state = threading.local()


def checks_values() -> bool:
    """False inside :func:`trusted_inputs` (this thread), else True."""
    return not getattr(_state, "trusted", False)


@contextmanager
def trusted_inputs(trusted: bool = True) -> Iterator[None]:
    """Within the block, genmod skips the input checks that read values on the host.

    Inputs must then be finite, indices in range and scales above :func:`min_scale`, as
    the checks would have ensured. What breaks the promise is not caught: NaN / Inf inputs
    give NaN, and an out-of-range index gives wrong values or an ``IndexError`` (on CUDA a
    device-side assert, which ends the process's use of the GPU). The
    training loop enters it for batches of its validated data, so a step makes no host
    synchronisation of genmod's own. Nests; ``trusted_inputs(False)`` restores checking.

    Example:
        >>> with trusted_inputs():
        ...     out = pairwise_logsumexp(x, y, scale)  # no .item() / bool() on the inputs
    """
    before = getattr(_state, "trusted", False)
    _state.trusted = bool(trusted)
    try:
        yield
    finally:
        _state.trusted = before


def min_scale(dtype: torch.dtype) -> float:
    """The smallest kernel scale usable in ``dtype``: below it ``1 / scale^2`` overflows
    (float32: about 1.1e-19, float64: about 1.5e-154), so scores would be NaN."""
    return 2.0 * torch.finfo(dtype).max ** -0.5


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_points(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape [..., n, D] (at least 2-D), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shapes only): it holds no values")
    if checks_values() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def check_inputs(
    x: Tensor,
    y: Tensor,
    scale: float | Tensor,
    log_weights: Tensor | None,
    exclude: Tensor | None,
) -> Tensor:
    """Validate the op's arguments; return ``scale`` as a 0-d tensor of x's dtype/device.

    Inside :func:`trusted_inputs` a tensor ``scale``, NaN / Inf and ``exclude``'s range are
    not read (no host synchronisation); shapes, dtypes and devices are still checked."""
    values = checks_values()
    _check_points(x, "x")
    _check_points(y, "y")
    if x.dtype != y.dtype:
        raise ValueError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"x and y must have the same dimension D, got {x.shape[-1]} and {y.shape[-1]}"
        )
    if y.shape[-2] == 0:
        raise ValueError("y is empty: at least one reference point is needed")
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
        if scale.device != x.device:
            raise ValueError(f"scale is on {scale.device} but x is on {x.device}")
        scale_t = scale.reshape(()).to(x.dtype)
        s_val = float(scale.detach()) if values else None
    else:
        try:
            s_val = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be a positive number, got {scale!r}") from None
        scale_t = torch.tensor(s_val, dtype=x.dtype, device=x.device)
    smallest = min_scale(x.dtype)
    if s_val is not None and not (math.isfinite(s_val) and s_val > 0):
        raise ValueError(f"scale must be finite and > 0, got {s_val}")
    if s_val is not None and s_val < smallest:
        raise ValueError(
            f"scale={s_val:.3g} is below the smallest {_dtype_name(x.dtype)} supports "
            f"({smallest:.3g}: 1 / scale^2 overflows it); pass float64 inputs"
        )
    if log_weights is not None:
        if not isinstance(log_weights, Tensor) or not log_weights.is_floating_point():
            raise ValueError("log_weights must be a floating torch.Tensor of shape [..., M]")
        if log_weights.dim() < 1 or log_weights.shape[-1] != y.shape[-2]:
            raise ValueError(
                f"log_weights must have shape [..., M] with M = {y.shape[-2]}, "
                f"got {tuple(log_weights.shape)}"
            )
        if log_weights.device != x.device:
            raise ValueError(f"log_weights is on {log_weights.device} but x is on {x.device}")
        if values and bool((log_weights.isnan() | (log_weights == math.inf)).any()):
            raise ValueError("log_weights contains NaN or +Inf (-Inf, a zero weight, is allowed)")
    if exclude is not None:
        if not isinstance(exclude, Tensor) or exclude.dtype not in (torch.int32, torch.int64):
            raise ValueError("exclude must be an integer torch.Tensor of shape [..., N]")
        if exclude.dim() < 1 or exclude.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"exclude must have shape [..., N] with N = {x.shape[-2]}, "
                f"got {tuple(exclude.shape)}"
            )
        if values and exclude.numel() and bool(((exclude < -1) | (exclude >= y.shape[-2])).any()):
            raise ValueError(f"exclude values must lie in [-1, {y.shape[-2] - 1}]")
    return scale_t
