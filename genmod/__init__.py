"""genmod: fit, compare and sample density models by maximum likelihood, on CPU or CUDA.

>>> import torch, genmod
>>> x = torch.randn(500, 2)
>>> kde = genmod.KDE(x, bandwidth="scott")
>>> kde.log_prob(torch.zeros(1, 2)).shape
torch.Size([1])

Importing genmod costs torch only: the training stack (Lightning, Hydra, TensorBoard)
loads when ``genmod.training`` / ``genmod.cli`` are used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "DensityModel",
    "Gaussian",
    "KDE",
    "LatentVariableModel",
    "Standardized",
    "load_model",
    "pairwise_logsumexp",
    "register_model",
]


_SUBPACKAGES = ("cli", "data", "models", "ops", "progress", "sklearn", "training")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:  # genmod.ops.trusted_inputs() after a bare ``import genmod``
        return importlib.import_module(f"genmod.{name}")
    if name == "pairwise_logsumexp":
        return importlib.import_module("genmod.ops").pairwise_logsumexp
    if name in __all__:
        return getattr(importlib.import_module("genmod.models"), name)
    raise AttributeError(f"module 'genmod' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
