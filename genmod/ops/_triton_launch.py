"""Launch configuration of the Triton pairwise-logsumexp kernels: tiles, warps, stages.

Tiles come from a table per kernel, precision and padded dimension (see ``_TILES``). A GPU with
less shared memory than the Hopper chips the table was made for (an A100 has 164 KiB) makes
Triton refuse a launch with ``OutOfResources``; :func:`launch` then sheds pipeline stages and
halves tiles until the kernel fits, and remembers the fit for the next call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["BACKWARD_MODES", "backward_mode", "cdiv", "config", "interpreting", "launch"]

BACKWARD_MODES = ("split", "fused")
"""Values of ``GENMOD_TRITON_BWD``: "split" (the default: two deterministic kernels, one per
side) or "fused" (one score pass for both sides with atomic row sums; see
``_triton_bwd_fused``)."""


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backward_mode() -> str:
    """The backward kernels asked for by ``GENMOD_TRITON_BWD`` (read at each call; unset or
    empty means "split"). Raises ValueError naming the variable for any other value."""
    mode = os.environ.get("GENMOD_TRITON_BWD", "").strip().lower() or "split"
    if mode not in BACKWARD_MODES:
        raise ValueError(
            f"GENMOD_TRITON_BWD must be one of {BACKWARD_MODES} (or unset), got "
            f"{os.environ['GENMOD_TRITON_BWD']!r}"
        )
    return mode


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers."""
    return -(-a // b)


# (BLOCK_N, BLOCK_M, num_warps, num_stages) by kernel, precision and BLOCK_D for float32:
# BLOCK_N tiles x, BLOCK_M tiles y. Chosen from an ahead-of-time compile sweep for sm_90 as the
# largest tiles for which ptxas needs no register spill (the least spill where every candidate
# spills, D >= 128) and shared memory stays under 227 KiB. "bwd_x" is the kernel that also
# forms dL/dx; without it (a bandwidth step) the x-side backward uses the forward's tiles.
# The tf32x3 backward at D = 64 is from the H200 sweep of 2026-12-04 (100k x 100k, times with
# the 17 ms forward): bwd_x (128, 64, 8, 2) 72.9 ms against 91.5 ms for (128, 32, 8, 2),
# bwd_y (64, 64, 4, 2) 76.5 ms against 133 ms for (64, 32, 8, 2).
# "bwd_fused" (GENMOD_TRITON_BWD=fused; BLOCK_M tiles the y block a program owns, BLOCK_N the
# streamed x) is not yet timed on a GPU. Its entries come from an ahead-of-time compile for
# sm_90 without a GPU (Triton 3.9 and its ptxas): the first of (64, 64, 8, 2), (32, 64, 8, 2),
# (64, 32, 8, 2), (32, 32, 8, 2), (16, 64, 8, 2), (32, 32, 4, 2), (16, 32, 8, 2),
# (16, 32, 4, 2), (16, 16, 4, 1) with no register spill, the least spill where all spill
# (D = 256, and D = 128 in ieee). bwd_y's own tiles, (64, 64, 4, 2), would spill
# 2240 bytes at tf32x3 D = 64. A GPU sweep should also try larger BLOCK_M despite some spill:
# the kernel issues N * D * M / BLOCK_M atomic adds in all (1e10 at 100k x 100k x 64 with
# BLOCK_M = 64), and (16, 128, 8, 2) halves that for 384 bytes of spill at tf32x3 D = 64.
_TILES: dict[str, dict[str, dict[int, tuple[int, int, int, int]]]] = {
    "fwd": {
        "ieee": {16: (128, 64, 8, 2), 32: (128, 64, 8, 2), 64: (128, 32, 8, 2),
                 128: (32, 64, 8, 2), 256: (32, 32, 8, 2)},
        "tf32x3": {16: (128, 128, 8, 2), 32: (128, 128, 8, 2), 64: (128, 64, 8, 2),
                   128: (128, 32, 8, 2), 256: (64, 32, 4, 1)},
        "tf32": {16: (128, 128, 8, 2), 32: (128, 128, 8, 2), 64: (128, 128, 8, 2),
                 128: (128, 32, 8, 2), 256: (64, 32, 4, 1)},
    },
    "bwd_x": {
        "ieee": {16: (128, 64, 8, 2), 32: (64, 64, 8, 2), 64: (64, 32, 8, 2),
                 128: (32, 64, 8, 2), 256: (32, 64, 8, 2)},
        "tf32x3": {16: (128, 64, 8, 2), 32: (128, 32, 8, 2), 64: (128, 64, 8, 2),
                   128: (64, 32, 8, 2), 256: (16, 64, 8, 2)},
        "tf32": {16: (128, 64, 8, 2), 32: (128, 64, 8, 2), 64: (128, 64, 8, 2),
                 128: (64, 32, 8, 2), 256: (64, 32, 8, 1)},
    },
    "bwd_y": {
        "ieee": {16: (128, 64, 8, 2), 32: (128, 32, 8, 2), 64: (64, 32, 8, 2),
                 128: (64, 32, 8, 2), 256: (64, 16, 8, 2)},
        "tf32x3": {16: (64, 64, 8, 2), 32: (64, 64, 8, 2), 64: (64, 64, 4, 2),
                   128: (64, 32, 8, 2), 256: (64, 16, 8, 2)},
        "tf32": {16: (128, 64, 8, 2), 32: (128, 64, 8, 2), 64: (128, 64, 8, 2),
                 128: (64, 32, 8, 2), 256: (64, 32, 8, 1)},
    },
    "bwd_fused": {
        "ieee": {16: (64, 64, 8, 2), 32: (32, 64, 8, 2), 64: (32, 32, 8, 2),
                 128: (16, 16, 4, 1), 256: (16, 16, 4, 1)},
        "tf32x3": {16: (32, 32, 8, 2), 32: (16, 64, 8, 2), 64: (32, 64, 8, 2),
                   128: (16, 32, 8, 2), 256: (16, 16, 4, 1)},
        "tf32": {16: (32, 64, 8, 2), 32: (64, 32, 8, 2), 64: (32, 64, 8, 2),
                 128: (32, 32, 8, 2), 256: (16, 16, 4, 1)},
    },
}  # fmt: skip


# The explicit-difference kernels (D <= 8) use no matrix unit: a tile is D passes of FMAs
# over BLOCK_N x BLOCK_M registers plus one exp2 per pair, whatever the precision. Not yet
# swept on a GPU (scripts/gpu_check.sh times them); moderate tiles keep the live registers
# (d2, t, p) at 32 per thread with 4 warps.
_DIRECT_TILES = {"fwd": (64, 64, 4, 2), "bwd_x": (64, 64, 4, 2), "bwd_y": (64, 64, 4, 2)}


def config(
    kernel: str, precision: str, dim: int, dtype: torch.dtype, direct: bool = False
) -> dict[str, int]:
    """Launch meta-parameters of ``kernel`` ("fwd", "bwd_x", "bwd_y", "bwd_fused") for data
    dimension ``dim`` (``direct``: the explicit-difference kernels of D <= 8; never "bwd_fused").

    Returns ``BLOCK_N``, ``BLOCK_M``, ``BLOCK_D`` (``dim`` padded to a power of two >= 16, the
    smallest matrix-unit operand), ``num_warps`` and ``num_stages``.
    """
    block_d = max(16, 1 << (dim - 1).bit_length())
    if interpreting():
        # Small tiles: several blocks and ragged edges are exercised at test sizes.
        block_n, block_m, warps, stages = 32, 16, 4, 1
    elif direct:
        block_n, block_m, warps, stages = _DIRECT_TILES[kernel]
    elif dtype == torch.float64:
        block_n, block_m, warps, stages = (64, 32, 4, 1) if block_d <= 128 else (32, 32, 4, 1)
    else:
        # fp16x3 (forward only) runs tf32x3's three products per tile, on operands half the
        # size: tf32x3's tiles until a GPU sweep (scripts/sweep_tiles.py) gives it its own.
        tables = _TILES[kernel]
        table = tables.get(precision) or tables["tf32x3" if precision == "fp16x3" else precision]
        block_n, block_m, warps, stages = table[block_d]
    return dict(
        BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, num_stages=stages
    )


_FITTED: dict[tuple, dict[str, int]] = {}


def _shrink(meta: dict[str, int]) -> dict[str, int] | None:
    """The next smaller configuration: one pipeline stage less, else the larger tile halved."""
    meta = dict(meta)
    if meta["num_stages"] > 1:
        meta["num_stages"] -= 1
        return meta
    key = "BLOCK_N" if meta["BLOCK_N"] >= meta["BLOCK_M"] else "BLOCK_M"
    if meta[key] <= 16:
        return None
    meta[key] //= 2
    return meta


def launch(
    kernel: Any,
    name: str,
    precision: str,
    x: torch.Tensor,
    rows: int,
    tile: str,
    args: Sequence[Any],
    **flags: Any,
) -> None:
    """Launch ``kernel`` over ``x.shape[0] * cdiv(rows, meta[tile])`` programs.

    ``args`` are the runtime arguments, to which the number of row blocks is appended; ``flags``
    the compile-time ones besides the tiling. Shrinks the tiling on ``OutOfResources``.
    """
    from triton.runtime.errors import OutOfResources

    meta = config(name, precision, x.shape[-1], x.dtype, bool(flags.get("DIRECT", False)))
    key = (id(kernel), name, precision, tuple(sorted(flags.items())), meta["BLOCK_D"], x.dtype,
           x.device)  # fmt: skip
    meta = _FITTED.get(key, meta)
    while True:
        blocks = cdiv(rows, meta[tile])
        try:
            kernel[(x.shape[0] * blocks,)](*args, blocks, **flags, **meta)
        except OutOfResources:
            smaller = _shrink(meta)
            if smaller is None:
                raise
            meta = smaller
            continue
        _FITTED[key] = meta
        return
