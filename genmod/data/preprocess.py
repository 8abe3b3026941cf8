"""Seeded splits, uniform dequantisation and per-dimension standardisation.

The pieces :class:`genmod.data.DensityDataModule` is made of, usable on their own.
Standardisation maps data ``x`` to ``z = (x - mean) / scale``; a density ``q`` fitted
to ``z`` gives the data density ``p(x) = q(z) / prod_d scale_d``, so in nats

    NLL_data = NLL_standardised + sum_d log scale_d.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

__all__ = [
    "dequantize",
    "fit_standardization",
    "generator_for",
    "min_rows",
    "split_sizes",
]

MIN_TRAIN_ROWS = 2
"""A split leaves at least this many training rows (a leave-one-out likelihood needs two)."""


def generator_for(seed: int, stream: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream)``; distinct streams are independent.

    Each random step of the data pipeline (split, dequantisation, shuffling) draws from
    its own stream, so changing one step never changes the others.
    """
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return float(value)


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Rows ``(train, val, test)`` for ``n`` rows: val and test are ``n * fraction``
    rounded half up, train is the rest. Sizes may be zero; see :func:`min_rows`.

    Raises:
        ValueError: naming ``val_fraction`` / ``test_fraction`` unless each is in (0, 1)
            and their sum is below 1.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
        )
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    return n - n_val - n_test, n_val, n_test


def _valid(sizes: tuple[int, int, int]) -> bool:
    return sizes[0] >= MIN_TRAIN_ROWS and sizes[1] >= 1 and sizes[2] >= 1


def min_rows(val_fraction: float, test_fraction: float) -> int:
    """Smallest row count whose split has ``>= 2`` train, ``>= 1`` val and ``>= 1`` test rows."""
    split_sizes(1, val_fraction, test_fraction)  # validates both fractions
    smallest = min(float(val_fraction), float(test_fraction))
    n = max(MIN_TRAIN_ROWS + 2, math.floor(0.5 / smallest) - 1)
    while not _valid(split_sizes(n, val_fraction, test_fraction)):
        n += 1
    return n


def dequantize(x: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform dequantisation ``x + u``, ``u ~ U[0, 1)`` per entry, drawn from ``generator``.

    For integer-valued data this turns the probability mass P(k) of each lattice point
    into a density on the unit cube ``[k, k + 1)``; the dequantised log density is a
    lower bound on ``log P(k)`` (both in nats, as the cube has volume 1).
    """
    return x + torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def fit_standardization(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension ``(mean, scale)`` of ``train`` ``[n, D]``: mean and standard
    deviation with ddof=0, computed in float64 and returned as float64 ``[D]``.

    A dimension whose training values are all equal gets ``scale = 1`` and ``mean``
    equal to that value, so it standardises to exactly 0 and adds ``log 1 = 0`` to
    ``sum_d log scale_d`` (never ``-inf`` or NaN).
    """
    x = train.to(torch.float64)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"train must be 2-D [n, D] with n >= 1, got shape {tuple(x.shape)}")
    mean = x.mean(dim=0)
    scale = x.std(dim=0, correction=0)
    constant = (x == x[0]).all(dim=0)
    mean = torch.where(constant, x[0], mean)
    scale = torch.where(constant | (scale == 0.0), torch.ones_like(scale), scale)
    return mean, scale
