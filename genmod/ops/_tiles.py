"""Tile sizing from a memory budget, and the online logsumexp reduction of one tile."""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

__all__ = [
    "exp_floor_",
    "exp_normal_",
    "tile_budget_bytes",
    "set_tile_budget",
    "tile_shape",
    "online_lse_update",
    "finish_lse",
]

_BUDGET_OVERRIDE: int | None = None

CUDA_MAX_COLS = 1 << 16
"""Most columns of a tile on CUDA: 256 queries x 160 000 references in float64 (a refinement
of a KDE training step) fit three tiles of the 256 MiB budget instead of 157."""


@functools.lru_cache(maxsize=1)
def _cpu_cache_bytes() -> int:
    """The per-core L2 cache size from sysfs (Linux), else 1 MiB."""
    for idx in range(4):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}"
        try:
            with open(f"{base}/level") as f:
                level = int(f.read())
            with open(f"{base}/size") as f:
                text = f.read().strip().upper()
        except (OSError, ValueError):
            continue
        if level == 2:
            mult = {"K": 1024, "M": 1024**2}.get(text[-1], 1)
            return int(text.rstrip("KM")) * mult
    return 1 << 20


def tile_budget_bytes(device: torch.device) -> int:
    """Bytes one score tile may use: on CPU, four times the L2 cache per thread (torch's
    threads split a tile's rows; tiles past the L2 cost little, as the data stays in L3,
    and fewer, larger GEMMs and compiled calls run faster: at 20000 x 20000 x 64 on two
    cores with 2 MiB L2 each, 16 MiB tiles took the fused forward from 370 to 344 ms and
    forward+backward from 1.15 to 1.00 s against 8 MiB); on CUDA, 1/16 of free memory
    capped at 256 MiB. Overridable by :func:`set_tile_budget` or the ``GENMOD_TILE_BYTES``
    environment variable."""
    if _BUDGET_OVERRIDE is not None:
        return _BUDGET_OVERRIDE
    env = os.environ.get("GENMOD_TILE_BYTES")
    if env:
        return max(4096, int(env))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(256 << 20, max(8 << 20, free // 16)))
    return 4 * _cpu_cache_bytes() * max(1, torch.get_num_threads())


def set_tile_budget(nbytes: int | None) -> None:
    """Override the tile memory budget (bytes), or restore the automatic one with None."""
    global _BUDGET_OVERRIDE
    if nbytes is not None and nbytes < 4096:
        raise ValueError(f"nbytes must be >= 4096, got {nbytes}")
    _BUDGET_OVERRIDE = nbytes


def tile_shape(
    B: int, N: int, M: int, itemsize: int, device: torch.device, backward: bool = False
) -> tuple[int, int, int]:
    """(batch, rows, columns) of a score tile whose elements fit the budget.

    Long column runs come first (fewer rescalings of the running sum), then rows, then batch.
    The backward keeps about three tile-sized temporaries alive, so its tiles are smaller.
    Columns are capped at 1024 on CPU (a tile's rows then stay in the cache) and at
    :data:`CUDA_MAX_COLS` on CUDA, where a tile is one launch per op and the fewer launches
    the better: the budget, not the cache, sizes a GPU tile.
    """
    elems = max(256, tile_budget_bytes(device) // (itemsize * (3 if backward else 1)))
    cap = CUDA_MAX_COLS if torch.device(device).type == "cuda" else 1024
    tm = min(M, max(64, min(cap, elems // 64)))
    tn = min(N, max(1, elems // tm))
    tb = min(B, max(1, elems // (tm * tn)))
    return tb, tn, tm


def _log_tiny(dtype: torch.dtype) -> float:
    """``log`` of the smallest normal number of ``dtype``, plus 0.5: ``exp`` of anything
    above it is a normal number."""
    return math.log(torch.finfo(dtype).tiny) + 0.5


def exp_floor_(t: Tensor) -> Tensor:
    """In place: ``exp(t)``, with ``t`` first raised to :func:`_log_tiny` (about -87 in
    float32), so no result is subnormal or zero; NaN stays NaN.

    torch's CPU ``exp`` takes 15 to 35 ns per element whose result underflows (a microcode
    assist for each subnormal result, a slow path for the rest) against 1 ns otherwise, and
    with a small bandwidth most pairs underflow. What this adds, ``1.7e-38`` (float32) per
    pair, is negligible against the row's largest term ``1`` unless the row has no finite
    score at all, which :func:`finish_lse` handles. Zero where exactness needs it:
    :func:`exp_normal_`."""
    return t.clamp_(min=_log_tiny(t.dtype)).exp_()


def exp_normal_(t: Tensor) -> Tensor:
    """In place: ``exp(t)``, 0 where the result would be below 1.7 times the smallest
    normal number (and where ``t`` is NaN); as fast as :func:`exp_floor_`."""
    return torch.nn.functional.threshold_(exp_floor_(t), 1.7 * torch.finfo(t.dtype).tiny, 0.0)


def online_lse_update(scores: Tensor, m: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Fold a tile of scores ``[b, n, m]`` into the running (max, sum) of each row.

    ``s`` is the sum of ``exp(score - m)`` so far (:func:`exp_floor_`: a term below
    ``1.7e-38`` of the row's largest counts as that much). Rows whose max is still ``-inf``
    are reset when a finite score arrives and are ``-inf`` in :func:`finish_lse`. ``scores``
    is overwritten.
    """
    m_new = torch.maximum(m, scores.amax(dim=2))
    m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)
    s = s * torch.exp(m - m_safe) + exp_floor_(scores.sub_(m_safe.unsqueeze(2))).sum(dim=2)
    return m_new, s


def finish_lse(m: Tensor, s: Tensor) -> Tensor:
    """``m + log s``, equal to ``-inf`` for rows with no finite score."""
    m_safe = m.masked_fill(m == -math.inf, 0.0)
    return (m_safe + torch.log(s)).masked_fill_(m == -math.inf, -math.inf)
