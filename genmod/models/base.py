"""The contract every genmod density model keeps.

A model is an ``nn.Module`` with ``log_prob(x) -> [n]`` (natural log, nats, one value
per row of ``x``), ``nll(x) = -mean(log_prob(x))`` and ``sample(n, generator=None)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from genmod.ops import checks_values

__all__ = ["DensityModel", "check_points", "check_generator"]


def check_points(x: Any, name: str = "x", dim: int | None = None) -> Tensor:
    """Validate a ``[n, D]`` floating tensor of finite values and return it.

    Raises:
        ValueError: naming ``name`` when ``x`` is not a tensor, not 2-D, not floating,
            has the wrong number of columns, or holds NaN / Inf (the first bad row is named;
            not checked inside :func:`genmod.ops.trusted_inputs`).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, but the model's is {dim}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shapes only): it holds no values")
    if not checks_values():  # inside genmod.ops.trusted_inputs: no host synchronisation
        return x
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or Inf (first bad row: {row})")
    return x


def check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    """Raise ``ValueError`` if ``generator`` lives on a different device type."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device.type}, but the model is on {device.type}"
        )


class DensityModel(nn.Module, ABC):
    """Abstract base class of genmod's density models.

    Subclasses implement :meth:`log_prob`, :meth:`sample` and :meth:`hparams`; the rest
    has sensible defaults. ``dim`` is the data dimension D.
    """

    dim: int

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """Log density ``log p(x_i)`` in nats for each row of ``x`` ``[n, D]`` -> ``[n]``."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples ``[n, D]``."""

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """Constructor keyword arguments (plain Python values) that rebuild this model."""

    def nll(self, x: Tensor) -> Tensor:
        """Negative log-likelihood ``-mean_i log p(x_i)`` in nats per example (0-d)."""
        return -self.log_prob(x).mean()

    def bpd(self, x: Tensor) -> Tensor:
        """Bits per dimension: ``nll / (D ln 2)``."""
        return self.nll(x) / (self.dim * math.log(2.0))

    def training_loss(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The loss the NLL loop minimises for a batch ``x`` (rows ``index`` of the
        training set). Default: :meth:`nll`. A KDE overrides it with leave-one-out NLL."""
        return self.nll(x)

    def fit(self, x: Tensor) -> DensityModel:
        """Closed-form fit to training data where the model has one; default: no-op."""
        return self

    @property
    def has_closed_form(self) -> bool:
        """True when :meth:`fit` sets the model completely (no gradient training)."""
        return False

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging (e.g. ``bandwidth``, ``noise_std``)."""
        return {}

    def eval_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Extra per-batch evaluation scalars in nats per example, logged beside the NLL
        (e.g. the exact NLL of a linear latent-variable model). Default: none."""
        return {}

    @property
    def estimator(self) -> str:
        """How :meth:`log_prob` is computed: ``"exact"``, or an estimator with its sample
        count such as ``"prior, K=100000"``. Logged and printed beside every likelihood."""
        return "exact"

    @classmethod
    def from_state(cls, hparams: dict[str, Any], state_dict: dict[str, Tensor]) -> DensityModel:
        """Rebuild a model from :meth:`hparams` and a ``state_dict``."""
        model = cls(**hparams)
        model.load_state_dict(state_dict)
        return model

    def _check_n(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        return n


def check_weights(weights: Any, data: Tensor) -> Tensor | None:
    """Non-negative finite weights ``[M]`` (one per row of ``data``, not all zero) as float64
    on ``data``'s device, or ``None``; a ``ValueError`` names the first bad row."""
    num_points = data.shape[0]
    if weights is None:
        return None
    try:
        w = torch.as_tensor(weights.detach() if isinstance(weights, Tensor) else weights)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"weights must be numeric, got {weights!r}") from err
    if w.dim() != 1 or w.shape[0] != num_points:
        raise ValueError(
            f"weights must have shape [{num_points}] (one per data row), got {tuple(w.shape)}"
        )
    if w.dtype == torch.bool or w.is_complex():
        raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
    w = w.double()
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"weights must be finite and >= 0 (first bad row: {row})")
    if not bool((w > 0).any()):
        raise ValueError("weights must not all be zero")
    return w.to(data.device)
