"""scikit-learn's bundled handwritten digits: 1797 images of 8×8 pixels, values 0..16."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["DIGITS_IMAGE_SHAPE", "DIGITS_LEVELS", "load_digits"]

DIGITS_IMAGE_SHAPE: tuple[int, int] = (8, 8)
"""Height and width of one digit image; a row of :func:`load_digits` is one image."""

DIGITS_LEVELS: int = 17
"""Number of grey levels: pixels take the integer values 0, 1, ..., 16."""


def load_digits(*, dtype: torch.dtype = torch.float32) -> Tensor:
    """The UCI optical digits as shipped inside scikit-learn (no download).

    Each row is one 8×8 image flattened in row-major order; pixel values are the
    integers 0..16 (counts of set pixels in 4×4 blocks of a 32×32 bitmap), returned
    as floats. For density estimation, dequantise them (``x + U[0, 1)``) so that the
    likelihood is a density on [0, 17)^64 rather than a point mass on a lattice;
    :class:`genmod.data.DensityDataModule` does so by default.

    Args:
        dtype: floating dtype of the result.

    Returns:
        Tensor ``[1797, 64]`` with integer values in ``[0, 16]``.

    Example:
        >>> load_digits().shape
        torch.Size([1797, 64])
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return torch.tensor(_pixels(), dtype=dtype)


@lru_cache(maxsize=1)
def _pixels() -> np.ndarray:
    """The pixel array, read once per process (a private, read-only copy)."""
    from sklearn.datasets import load_digits as _sklearn_digits

    pixels = _sklearn_digits().data
    pixels.setflags(write=False)
    return pixels
