"""A latent-variable (decoder) model trained by its Monte Carlo marginal likelihood.

``z ~ N(0, I_m)``, ``x | z ~ N(G(z), diag(sigma^2))``, ``p(x) = E_{p(z)} p(x | z)``: estimated
by prior or importance sampling (:mod:`genmod.models.marginal`), exact for a linear decoder
(:mod:`genmod.models.ppca`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genmod.models.base import DensityModel, check_generator, check_points
from genmod.models.decoders import (
    GaussianEncoder,
    check_activation,
    check_choice,
    check_hidden_sizes,
    check_int,
    check_positive,
    make_decoder,
    widest_layer,
)
from genmod.models.marginal import decode_chunked, importance_log_marginal, prior_log_marginal
from genmod.models.ppca import linear_gaussian_log_prob, ppca_mle

__all__ = ["LatentVariableModel", "ESTIMATORS", "NOISE_TYPES"]

ESTIMATORS = ("prior", "importance", "exact")
NOISE_TYPES = ("shared", "diagonal")


class LatentVariableModel(DensityModel):
    """Decoder model ``x = G(z) + noise`` with a Monte Carlo marginal likelihood.

    The prior-sampling estimate is a *stochastic lower bound*: by Jensen's inequality
    ``E[log (1/K) sum_k p(x | z_k)] <= log p(x)``; its bias shrinks like ``1/K`` only once
    ``K`` exceeds the (roughly ``exp(latent_dim)``-sized) number of draws needed to hit the
    posterior's region, so at fixed ``K`` the error grows exponentially with ``latent_dim``.
    The importance-weighted estimate is also a lower bound in expectation but much tighter.
    Always report ``K`` with a likelihood: :attr:`estimator` gives e.g. ``"prior, K=4096"``.
    ``scripts/lvm_estimators.py`` measures both errors against the exact PPCA value.

    Observation noise: ``sigma = min_noise_std + exp(noise_log_excess)``, learned in log
    space and floored by ``min_noise_std`` (one value for ``noise="shared"``, ``[D]`` for
    ``"diagonal"``), data units.

    Args:
        data_dim: ``D >= 1``.
        latent_dim: ``m >= 1``.
        decoder: ``"mlp"`` (:func:`~genmod.models.decoders.build_mlp` with ``hidden_sizes``
            and ``activation``), ``"linear"`` (``nn.Linear(m, D)`` at ``model.decoder``:
            probabilistic PCA / factor analysis, with :meth:`exact_log_prob`) or any
            ``nn.Module`` mapping ``[n, m] -> [n, D]`` (an ``nn.Linear`` counts as linear).
            A module cannot be rebuilt from :meth:`hparams`: ``load_model`` needs a named
            decoder; otherwise rebuild the model yourself and ``load_state_dict``.
        hidden_sizes: hidden widths of the MLP decoder.
        activation: the MLPs' activation (see :data:`~genmod.models.decoders.ACTIVATIONS`).
        noise: ``"shared"`` or ``"diagonal"``.
        init_noise_std: initial ``sigma`` (``> min_noise_std``).
        min_noise_std: the floor of ``sigma`` (``> 0``).
        estimator: ``"prior"``, ``"importance"`` (builds ``model.encoder``) or ``"exact"``
            (linear decoders only).
        num_samples: ``K`` used by :meth:`log_prob` in training mode.
        eval_num_samples: ``K`` used by :meth:`log_prob` in eval mode.
        encoder_hidden_sizes: hidden widths of the encoder MLP (importance only).

    Raises:
        ValueError: naming the argument when one is invalid.

    Example:
        >>> model = LatentVariableModel(5, 2, decoder="mlp", num_samples=64).eval()
        >>> model.log_prob(torch.randn(10, 5), num_samples=1000).shape
        torch.Size([10])
    """

    decode_chunk_elements: int = 1 << 20
    """Decode at most this many activation elements at once (``chunk * widest layer``)."""

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        decoder: str | nn.Module = "mlp",
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "gelu",
        noise: str = "shared",
        init_noise_std: float = 1.0,
        min_noise_std: float = 1e-3,
        estimator: str = "prior",
        num_samples: int = 128,
        eval_num_samples: int = 4096,
        encoder_hidden_sizes: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.dim = check_int(data_dim, "data_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.hidden_sizes = check_hidden_sizes(hidden_sizes, "hidden_sizes")
        self.encoder_hidden_sizes = check_hidden_sizes(encoder_hidden_sizes, "encoder_hidden_sizes")
        self.activation = check_activation(activation)
        self.noise_type = check_choice(noise, "noise", NOISE_TYPES)
        self.min_noise_std = check_positive(min_noise_std, "min_noise_std")
        self.init_noise_std = check_positive(init_noise_std, "init_noise_std")
        if self.init_noise_std <= self.min_noise_std:
            raise ValueError(
                f"init_noise_std must be > min_noise_std ({self.min_noise_std}), "
                f"got {init_noise_std!r}"
            )
        self.estimator_type = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_samples = check_int(num_samples, "num_samples")
        self.eval_num_samples = check_int(eval_num_samples, "eval_num_samples")
        self.decoder_name = None if isinstance(decoder, nn.Module) else decoder
        self.decoder = make_decoder(decoder, self.latent_dim, self.dim, hidden_sizes, activation)
        if self.estimator_type == "exact" and not self.is_linear:
            raise ValueError("estimator='exact' needs a linear decoder (decoder='linear')")
        self.encoder = None
        if self.estimator_type == "importance":
            self.encoder = GaussianEncoder(
                self.dim, self.latent_dim, self.encoder_hidden_sizes, activation
            )
        shape = () if self.noise_type == "shared" else (self.dim,)
        excess = math.log(self.init_noise_std - self.min_noise_std)
        self.noise_log_excess = nn.Parameter(torch.full(shape, excess))

    # ------------------------------------------------------------------ properties
    @property
    def is_linear(self) -> bool:
        """True when the decoder is an ``nn.Linear`` (closed-form :meth:`exact_log_prob`)."""
        return isinstance(self.decoder, nn.Linear)

    @property
    def noise_std(self) -> Tensor:
        """``sigma = min_noise_std + exp(noise_log_excess)``: 0-d (shared) or ``[D]``."""
        return self.min_noise_std + self.noise_log_excess.exp()

    @noise_std.setter
    def noise_std(self, value: float | Tensor) -> None:
        std = torch.as_tensor(value, dtype=torch.float64).detach()
        shape = self.noise_log_excess.shape
        ok = std.shape in ((), shape) and bool((std.isfinite() & (std > self.min_noise_std)).all())
        if not ok:
            raise ValueError(
                f"noise_std must be finite, > min_noise_std={self.min_noise_std} and a number "
                f"or of shape {list(shape)}, got {value!r}"
            )
        with torch.no_grad():
            self.noise_log_excess.copy_((std - self.min_noise_std).log().expand(shape))

    @property
    def estimator(self) -> str:
        """``"exact"``, or the estimator and the ``K`` :meth:`log_prob` uses in the current
        mode (train: ``num_samples``, eval: ``eval_num_samples``), e.g. ``"prior, K=4096"``."""
        if self.estimator_type == "exact":
            return "exact"
        return f"{self.estimator_type}, K={self._default_k()}"

    def _default_k(self) -> int:
        return self.num_samples if self.training else self.eval_num_samples

    def _check_input(self, x: Any) -> Tensor:
        x, device = check_points(x, "x", self.dim), self.noise_log_excess.device
        if x.device != device:
            raise ValueError(f"x is on {x.device}, but the model is on {device}")
        return x

    # ------------------------------------------------------------------ decoding
    def decode(self, z: Tensor) -> Tensor:
        """Decoded means ``G(z)`` ``[..., D]`` of latent codes ``z`` ``[..., m]``, computed
        ``decode_chunk_elements / (widest layer)`` rows at a time (see
        :func:`~genmod.models.marginal.decode_chunked`).

        Raises:
            ValueError: naming ``decoder`` when a custom decoder returns the wrong shape.
        """
        return decode_chunked(self.decoder, z, self.dim, self._chunk_rows(self.decoder))

    def _chunk_rows(self, *modules: nn.Module) -> int:
        widest = max(widest_layer(module, self.dim) for module in modules)
        return max(1, self.decode_chunk_elements // widest)

    # ------------------------------------------------------------------ densities
    def log_prob(
        self,
        x: Tensor,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        estimator: str | None = None,
    ) -> Tensor:
        """Estimated (or exact) ``log p(x_i)`` in nats for each row of ``x``.

        Args:
            x: points ``[n, D]``, finite, on the model's device.
            num_samples: ``K >= 1``; None: ``num_samples`` in training mode,
                ``eval_num_samples`` in eval mode. Ignored by the exact estimator.
            generator: optional ``torch.Generator`` for the latent draws.
            estimator: override the model's estimator (``"prior"``, ``"importance"`` when
                the model has an encoder, ``"exact"`` for a linear decoder).

        Returns:
            ``[n]`` log densities (differentiable in the decoder, noise and encoder).

        Raises:
            ValueError: naming ``x``, ``num_samples``, ``generator`` or ``estimator``.
        """
        x = self._check_input(x)
        method = self.estimator_type if estimator is None else estimator
        check_choice(method, "estimator", ESTIMATORS)
        k = self._default_k() if num_samples is None else check_int(num_samples, "num_samples")
        check_generator(generator, x.device)
        dtype = torch.promote_types(x.dtype, self.noise_log_excess.dtype)
        if method == "exact":
            return self.exact_log_prob(x)
        if method == "importance":
            if self.encoder is None:
                raise ValueError("estimator='importance' needs a model built with an encoder")
            rows = self._chunk_rows(self.decoder, self.encoder)
            return importance_log_marginal(
                x.to(dtype), self.decode, self.noise_std, self.encoder, k, rows, generator
            )
        return prior_log_marginal(
            x.to(dtype), self.decode, self.noise_std, self.latent_dim, k, generator
        )

    def exact_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x_i | b, W W^T + diag(sigma^2))`` in nats for a linear decoder
        ``G(z) = W z + b`` (Woodbury form, ``O(D m^2 + n D m)``; differentiable).

        Raises:
            ValueError: for a nonlinear decoder, or naming ``x`` when it is invalid.
        """
        if not self.is_linear:
            raise ValueError(
                "exact_log_prob needs a linear decoder (decoder='linear'); this model's "
                f"decoder is {type(self.decoder).__name__}: use log_prob's Monte Carlo estimate"
            )
        return linear_gaussian_log_prob(self._check_input(x), self.decoder, self.noise_std)

    def fit_ppca(self, x: Tensor) -> LatentVariableModel:
        """Set a linear, shared-noise model to the PPCA maximum-likelihood estimate for ``x``
        (:func:`~genmod.models.ppca.ppca_mle`; ``ddof = 0``); returns ``self``.

        Raises:
            ValueError: naming ``decoder`` or ``noise`` when the model is not linear with a
                bias and shared noise, or ``x`` when it is invalid or empty.
        """
        if not self.is_linear or self.decoder.bias is None:
            raise ValueError("fit_ppca needs decoder='linear' (an nn.Linear with a bias)")
        if self.noise_type != "shared":
            raise ValueError("fit_ppca needs noise='shared' (diagonal noise is factor analysis)")
        x = self._check_input(x)
        if x.shape[0] < 1:
            raise ValueError("x must have at least 1 row to fit PPCA, got 0")
        weight, bias, sigma = ppca_mle(x, self.latent_dim, self.min_noise_std)
        with torch.no_grad():
            self.decoder.weight.copy_(weight)
            self.decoder.bias.copy_(bias)
        self.noise_std = sigma
        return self

    # ------------------------------------------------------------------ sampling
    def sample(
        self, n: int, generator: torch.Generator | None = None, noise: bool = True
    ) -> Tensor:
        """Draw ``n`` points ``G(z) + sigma * eps`` ``[n, D]`` (no gradient); with
        ``noise=False`` the decoded means ``G(z)`` (what one looks at for images)."""
        n = self._check_n(n)
        param = self.noise_log_excess
        check_generator(generator, param.device)
        spec = {"generator": generator, "dtype": param.dtype, "device": param.device}
        with torch.no_grad():
            means = self.decode(torch.randn(n, self.latent_dim, **spec))
            if not noise:
                return means
            return means + self.noise_std * torch.randn(means.shape, **spec).to(means.dtype)

    # ------------------------------------------------------------------ bookkeeping
    def eval_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """``{"nll_exact": -mean_i log p(x_i)}`` (nats) for a linear decoder, else ``{}``."""
        if not self.is_linear:
            return {}
        return {"nll_exact": -self.exact_log_prob(x).mean()}

    def metrics(self) -> dict[str, float]:
        """``{"noise_std": mean_d sigma_d}`` (data units)."""
        return {"noise_std": float(self.noise_std.detach().mean())}

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments; ``decoder`` is None for a custom ``nn.Module``."""
        return {
            "data_dim": self.dim,
            "latent_dim": self.latent_dim,
            "decoder": self.decoder_name,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "noise": self.noise_type,
            "init_noise_std": self.init_noise_std,
            "min_noise_std": self.min_noise_std,
            "estimator": self.estimator_type,
            "num_samples": self.num_samples,
            "eval_num_samples": self.eval_num_samples,
            "encoder_hidden_sizes": list(self.encoder_hidden_sizes),
        }

    @classmethod
    def from_state(
        cls, hparams: dict[str, Any], state_dict: dict[str, Tensor]
    ) -> LatentVariableModel:
        """Rebuild from :meth:`hparams` and a ``state_dict`` (named decoders only).

        Raises:
            ValueError: naming ``decoder`` when the model was built with a custom module.
        """
        if hparams.get("decoder") is None:
            raise ValueError(
                "decoder: this model was built with a custom nn.Module decoder, which cannot "
                "be rebuilt from hparams; build it again and call load_state_dict"
            )
        model = cls(**hparams)
        model.load_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        hp = self.hparams()
        return ", ".join(f"{k}={hp[k]!r}" for k in ("data_dim", "latent_dim", "decoder", "noise"))
