"""When a training step may skip its per-batch value checks, and the check that replaces them.

A step's checks (finite inputs, indices in range, the bandwidth's floor) each read a value on
the host: on a GPU a synchronisation per check and step. Batches of a
:class:`~genmod.data.DensityDataModule` were checked once, when it was set up, so the training
loop runs their steps inside :func:`genmod.ops.trusted_inputs` and checks the parameters once
per epoch instead (:func:`check_finite_parameters`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genmod.data.datamodule import DensityDataModule

__all__ = ["batches_trusted", "check_finite_parameters"]


def batches_trusted(trainer: Any, model: nn.Module) -> bool:
    """True when ``trainer``'s training batches come from a :class:`DensityDataModule`, whose
    setup checked every value (finite, within float32) and whose indices are rows of its
    ``train_data``, the set a KDE's reference rows are (same row count)."""
    dm = None if trainer is None else getattr(trainer, "datamodule", None)
    if not isinstance(dm, DensityDataModule):
        return False
    n = getattr(model, "num_points", None)
    return n is None or n == dm.train_data.shape[0]


def check_finite_parameters(model: nn.Module, epoch: int) -> None:
    """Raise ``ValueError`` naming the first trainable parameter of ``model`` that holds NaN
    or Inf (one host read for all of them)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if not bool(finite.all()):
        name = named[int((~finite).nonzero()[0, 0])][0]
        raise ValueError(
            f"training diverged: parameter {name} holds NaN or Inf after epoch {epoch}; "
            "lower the learning rate (optimizer.lr)"
        )
