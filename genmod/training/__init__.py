"""The NLL training loop: one LightningModule for every density model, its callbacks and
figures, and the steps that build a run from a Hydra config.

>>> from genmod.training import DensityModule, train  # doctest: +SKIP
"""

from genmod.training._distributed import DDPStrategy
from genmod.training.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    build_trainer,
)
from genmod.training.callbacks import DensityFigures
from genmod.training.module import DensityModule
from genmod.training.run import train

__all__ = [
    "DDPStrategy",
    "DensityFigures",
    "DensityModule",
    "build_callbacks",
    "build_datamodule",
    "build_loggers",
    "build_model",
    "build_module",
    "build_trainer",
    "train",
]
