"""Data for density estimation: 2-D toys, scikit-learn's digits, user files, and the
LightningDataModule that splits, dequantises, standardises and batches them.

>>> import torch
>>> from genmod.data import make_toy
>>> make_toy("moons", 500, generator=torch.Generator().manual_seed(0)).shape
torch.Size([500, 2])

The toys, the loaders and the preprocessing import torch (and numpy for files) only;
Lightning loads when :class:`DensityDataModule` is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from genmod.data.digits import DIGITS_IMAGE_SHAPE, load_digits
from genmod.data.files import FILE_EXTENSIONS, DataError, load_array
from genmod.data.options import DATASETS
from genmod.data.preprocess import dequantize, fit_standardization, min_rows, split_sizes
from genmod.data.toys import TOY_DATASETS, TOY_NOISE, make_toy

__all__ = [
    "DATASETS",
    "DIGITS_IMAGE_SHAPE",
    "DataError",
    "DensityDataModule",
    "FILE_EXTENSIONS",
    "TOY_DATASETS",
    "TOY_NOISE",
    "dequantize",
    "fit_standardization",
    "load_array",
    "load_digits",
    "make_toy",
    "min_rows",
    "split_sizes",
]

_LAZY = {"DensityDataModule": "genmod.data.datamodule"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genmod.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
