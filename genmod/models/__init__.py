"""Density models: plain ``nn.Module`` s that import torch (and genmod.ops) only."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DensityModel",
    "Gaussian",
    "KDE",
    "LatentVariableModel",
    "Standardized",
    "load_model",
    "MODEL_CLASSES",
    "register_model",
]

_LAZY = {
    "DensityModel": "genmod.models.base",
    "Gaussian": "genmod.models.gaussian",
    "KDE": "genmod.models.kde",
    "LatentVariableModel": "genmod.models.lvm",
    "Standardized": "genmod.models.io",
    "load_model": "genmod.models.io",
    "MODEL_CLASSES": "genmod.models.io",
    "register_model": "genmod.models.io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genmod.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
