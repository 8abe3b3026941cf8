"""Building blocks of the latent-variable model: decoders, the Gaussian encoder, arg checks.

A decoder maps latent codes ``z`` ``[n, m]`` to means ``G(z)`` ``[n, D]``; the encoder of the
importance-weighted estimator maps data ``x`` ``[n, D]`` to the mean and log-variance of a
diagonal Gaussian ``q(z | x)``. Both are plain ``nn.Sequential`` multilayer perceptrons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "DECODERS",
    "check_choice",
    "check_int",
    "check_positive",
    "gaussian_rsample",
    "make_decoder",
    "GaussianEncoder",
    "build_mlp",
    "check_activation",
    "check_hidden_sizes",
    "standard_normal_log_prob",
    "widest_layer",
]

_LOG_2PI = math.log(2.0 * math.pi)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
"""Activation names accepted by :func:`build_mlp`."""

DECODERS = ("mlp", "linear")
"""Decoder names accepted by :func:`make_decoder`."""


def check_int(value: Any, name: str, low: int = 1) -> int:
    """Return ``value`` if it is an int ``>= low``, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive(value: Any, name: str) -> float:
    """``float(value)`` if it is a finite number ``> 0``, else ``ValueError`` naming ``name``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_hidden_sizes(value: Any, name: str) -> tuple[int, ...]:
    """Validate a sequence of positive layer widths (an empty one means no hidden layer).

    Raises:
        ValueError: naming ``name`` when ``value`` is not a sequence of ints ``>= 1``.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of ints >= 1, got {value!r}")
    sizes = tuple(value)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a sequence of ints >= 1, got {list(sizes)!r}")
    return sizes


def check_activation(name: Any) -> str:
    """Return ``name`` if it is a key of :data:`ACTIVATIONS`, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return name


def build_mlp(
    in_features: int, out_features: int, hidden_sizes: Sequence[int], activation: str = "gelu"
) -> nn.Sequential:
    """A multilayer perceptron ``Linear -> act -> ... -> Linear`` (no output activation).

    Args:
        in_features: input width.
        out_features: output width.
        hidden_sizes: widths of the hidden layers, in order (empty: one ``Linear``).
        activation: a key of :data:`ACTIVATIONS`.

    Returns:
        The ``nn.Sequential`` (PyTorch's default initialisation).

    Example:
        >>> build_mlp(2, 64, (32, 32), "relu")(torch.zeros(5, 2)).shape
        torch.Size([5, 64])
    """
    sizes = check_hidden_sizes(hidden_sizes, "hidden_sizes")
    act = ACTIVATIONS[check_activation(activation)]
    widths = (in_features, *sizes)
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), act()]
    layers.append(nn.Linear(widths[-1], out_features))
    return nn.Sequential(*layers)


def make_decoder(
    decoder: str | nn.Module,
    latent_dim: int,
    data_dim: int,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "gelu",
) -> nn.Module:
    """The decoder ``G: [n, m] -> [n, D]``: ``"linear"`` is ``nn.Linear(m, D)``, ``"mlp"``
    is :func:`build_mlp`, and an ``nn.Module`` is returned as it is.

    Raises:
        ValueError: naming ``decoder`` when it is neither a known name nor a module.
    """
    if isinstance(decoder, nn.Module):
        return decoder
    if check_choice(decoder, "decoder", DECODERS) == "linear":
        return nn.Linear(latent_dim, data_dim)
    return build_mlp(latent_dim, data_dim, hidden_sizes, activation)


def widest_layer(module: nn.Module, default: int) -> int:
    """The largest ``out_features`` of any ``nn.Linear`` inside ``module`` (else ``default``):
    the activation width that bounds the memory of decoding one latent code."""
    widths = [layer.out_features for layer in module.modules() if isinstance(layer, nn.Linear)]
    return max([default, *widths])


class GaussianEncoder(nn.Module):
    """Amortised diagonal Gaussian ``q(z | x) = N(mean(x), diag(exp(log_var(x))))``.

    One MLP maps ``x`` ``[n, D]`` to ``2 m`` numbers: the mean and the log-variance of ``z``.

    Args:
        data_dim: ``D``.
        latent_dim: ``m``.
        hidden_sizes: hidden widths of the MLP.
        activation: a key of :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = build_mlp(data_dim, 2 * latent_dim, hidden_sizes, activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_var)``, each ``[n, m]``, for data ``x`` ``[n, D]``."""
        out = self.net(x)
        return out[..., : self.latent_dim], out[..., self.latent_dim :]

    def rsample(
        self, x: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised draws ``z ~ q(z | x)`` ``[n, K, m]`` and ``log q(z | x)`` ``[n, K]``
        (see :func:`gaussian_rsample`)."""
        mean, log_var = self(x)
        return gaussian_rsample(mean, log_var, num_samples, generator)


def gaussian_rsample(
    mean: Tensor, log_var: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``z = mean + exp(log_var / 2) * eps``, ``eps ~ N(0, I)``, and ``log N(z | mean, diag
    exp(log_var))`` in nats.

    Args:
        mean: ``[n, m]``.
        log_var: ``[n, m]``.
        num_samples: draws per row ``K``.
        generator: optional ``torch.Generator`` for ``eps`` (drawn as one ``[n, K, m]`` block).

    Returns:
        ``z`` ``[n, K, m]`` and ``log q(z)`` ``[n, K]``, differentiable in ``mean`` and
        ``log_var``.
    """
    eps = torch.randn(
        mean.shape[0], num_samples, mean.shape[-1],
        generator=generator, dtype=mean.dtype, device=mean.device,
    )  # fmt: skip
    z = mean.unsqueeze(1) + (0.5 * log_var).exp().unsqueeze(1) * eps
    log_q = standard_normal_log_prob(eps) - 0.5 * log_var.sum(-1, keepdim=True)
    return z, log_q


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z | 0, I)`` summed over the last dimension, in nats."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * _LOG_2PI)
