"""A multivariate Gaussian density with full, diagonal or isotropic covariance.

``p(x) = N(x | mu, Sigma)`` with ``Sigma = L L^T``, so that

    log p(x) = -1/2 (D log(2 pi) + log det Sigma + ||L^{-1} (x - mu)||^2)     [nats]

The model has a closed-form maximum-likelihood fit (:meth:`Gaussian.fit`) and is also
trainable by gradient descent on the NLL; both reach the same optimum.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genmod.models.base import DensityModel, check_generator, check_points

__all__ = ["Gaussian", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "diag", "isotropic")

_LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(DensityModel):
    """Multivariate normal ``N(mu, Sigma)`` in ``dim`` dimensions.

    Parameters are the mean ``mean`` ``[D]`` and an unconstrained scale ``raw_scale``:

    * ``"full"``: ``[D, D]``; ``Sigma = L L^T`` with ``L`` lower-triangular,
      ``L_ij = raw_scale_ij`` below the diagonal and ``L_ii = exp(raw_scale_ii)`` on it
      (the strict upper triangle is unused and receives no gradient).
    * ``"diag"``: ``[D]`` log standard deviations, ``Sigma = diag(exp(2 raw_scale))``.
    * ``"isotropic"``: ``[]`` one log standard deviation, ``Sigma = exp(2 raw_scale) I``.

    A new model is the standard normal (``mean = 0``, ``raw_scale = 0``).

    ``min_variance`` is the floor :meth:`fit` applies: the fitted covariance is the
    maximum-likelihood estimate among covariances of the chosen type whose eigenvalues are
    all ``>= min_variance`` (data units squared). Gradient training leaves the parameters
    unconstrained; it reaches the same optimum whenever the floor is inactive.

    Args:
        dim: data dimension ``D >= 1``.
        covariance: ``"full"``, ``"diag"`` or ``"isotropic"``.
        min_variance: variance floor used by :meth:`fit`, ``>= 0``.

    Raises:
        ValueError: naming ``dim``, ``covariance`` or ``min_variance`` when invalid.

    Example:
        >>> x = torch.randn(1000, 3) * torch.tensor([1.0, 2.0, 3.0])
        >>> model = Gaussian(3, covariance="diag").fit(x)
        >>> model.log_prob(x[:5]).shape
        torch.Size([5])
    """

    def __init__(self, dim: int, covariance: str = "full", min_variance: float = 0.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if covariance not in COVARIANCE_TYPES:
            raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
        if (
            isinstance(min_variance, bool)
            or not isinstance(min_variance, int | float)
            or not math.isfinite(min_variance)
            or min_variance < 0
        ):
            raise ValueError(f"min_variance must be a finite number >= 0, got {min_variance!r}")
        self.dim = dim
        self.covariance_type = covariance
        self.min_variance = float(min_variance)
        shape = {"full": (dim, dim), "diag": (dim,), "isotropic": ()}[covariance]
        self.mean = torch.nn.Parameter(torch.zeros(dim))
        self.raw_scale = torch.nn.Parameter(torch.zeros(shape))

    # ------------------------------------------------------------------ derived values
    @property
    def scale_tril(self) -> Tensor:
        """The lower-triangular Cholesky factor ``L`` of ``Sigma`` ``[D, D]``."""
        if self.covariance_type == "full":
            raw = self.raw_scale
            return torch.tril(raw, -1) + torch.diag_embed(raw.diagonal().exp())
        return torch.diag_embed(self._std())

    @property
    def covariance(self) -> Tensor:
        """The covariance matrix ``Sigma = L L^T`` ``[D, D]`` (data units squared)."""
        scale = self.scale_tril
        return scale @ scale.mT

    @property
    def loc(self) -> Tensor:
        """The mean ``mu`` ``[D]`` (data units), as :class:`torch.distributions` names it."""
        return self.mean

    @property
    def covariance_matrix(self) -> Tensor:
        """``Sigma`` ``[D, D]``, as :class:`torch.distributions.MultivariateNormal` names it."""
        return self.covariance

    def entropy(self) -> Tensor:
        """Differential entropy ``H = 1/2 (D (1 + log(2 pi)) + log det Sigma)`` in nats (0-d)."""
        return 0.5 * (self.dim * (1.0 + _LOG_2PI) + self._log_det())

    def to_distribution(self) -> torch.distributions.MultivariateNormal:
        """This Gaussian as a ``torch.distributions.MultivariateNormal(loc, scale_tril=L)``.

        The distribution shares the parameters' autograd graph (gradients flow back into the
        model) but not their storage: refit or train the model, then call this again.
        """
        return torch.distributions.MultivariateNormal(self.loc, scale_tril=self.scale_tril)

    def _std(self) -> Tensor:
        """Per-dimension standard deviations ``[D]`` (diag / isotropic only)."""
        return self.raw_scale.exp().expand(self.dim)

    def _log_det(self) -> Tensor:
        """``log det Sigma`` (0-d)."""
        if self.covariance_type == "full":
            return 2.0 * self.raw_scale.diagonal().sum()
        if self.covariance_type == "diag":
            return 2.0 * self.raw_scale.sum()
        return 2.0 * self.dim * self.raw_scale

    # ------------------------------------------------------------------ density
    def log_prob(self, x: Tensor) -> Tensor:
        """Log density ``log N(x_i | mu, Sigma)`` in nats for each row of ``x``.

        The Mahalanobis term is a triangular solve with ``L`` (never an explicit inverse).
        ``x`` and the parameters are promoted to a common floating dtype.

        Args:
            x: points ``[n, D]``, finite, floating, on the model's device.

        Returns:
            ``[n]`` log densities.

        Raises:
            ValueError: naming ``x`` when it is not a finite floating ``[n, D]`` tensor
                on the model's device.
        """
        x = self._check_input(x)
        dtype = torch.promote_types(x.dtype, self.mean.dtype)
        diff = x.to(dtype) - self.mean.to(dtype)
        if self.covariance_type == "full":
            scale = self.scale_tril.to(dtype)
            z = torch.linalg.solve_triangular(scale, diff.mT, upper=False).mT
        else:
            z = diff / self._std().to(dtype)
        maha = z.square().sum(dim=-1)
        return -0.5 * (self.dim * _LOG_2PI + self._log_det().to(dtype) + maha)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Reparametrised draws ``mu + L eps``, ``eps ~ N(0, I)``, differentiable in the
        parameters.

        Args:
            n: number of samples, ``>= 0``.
            generator: optional ``torch.Generator`` on the model's device type; the same
                generator state gives the same samples.

        Returns:
            ``[n, D]`` samples in the model's dtype.
        """
        n = self._check_n(n)
        check_generator(generator, self.mean.device)
        eps = torch.randn(
            n, self.dim, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        if self.covariance_type == "full":
            return self.mean + eps @ self.scale_tril.mT
        return self.mean + eps * self._std()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples ``[n, D]`` (no gradient; see :meth:`rsample`)."""
        with torch.no_grad():
            return self.rsample(n, generator=generator)

    # ------------------------------------------------------------------ closed-form fit
    @property
    def has_closed_form(self) -> bool:
        """True: :meth:`fit` sets the maximum-likelihood parameters directly."""
        return True

    def fit(self, x: Tensor) -> Gaussian:
        """Set the parameters, in place, to the maximum-likelihood estimate for ``x``.

        ``mu = mean_i x_i`` and ``S = mean_i (x_i - mu)(x_i - mu)^T`` (``ddof = 0``), then
        by type: full ``Sigma = S``; diag ``Sigma = diag(S)``; isotropic
        ``Sigma = (tr S / D) I``. The floor clamps eigenvalues: full
        ``Sigma = V max(Lambda, min_variance) V^T`` with ``S = V Lambda V^T`` (the MLE over
        ``Sigma >= min_variance I``; ``S`` is kept exactly when no eigenvalue is below the
        floor); diag and isotropic take ``max(variance, min_variance)``. Statistics are
        accumulated in float64, then stored in the model's dtype.

        Args:
            x: training points ``[n, D]`` with ``n >= 1``, finite, floating.

        Returns:
            ``self``.

        Raises:
            ValueError: naming ``x`` when it is invalid, has no rows, or yields a singular
                covariance (zero variance with ``min_variance = 0``); the parameters are
                then left unchanged.
        """
        x = self._check_input(x)
        if x.shape[0] < 1:
            raise ValueError("x must have at least 1 row to fit a Gaussian, got 0")
        data = x.detach().to(torch.float64)
        mu = data.mean(dim=0)
        centred = data - mu
        eps = max(torch.finfo(x.dtype).eps, torch.finfo(self.mean.dtype).eps)
        if self.covariance_type == "full":
            raw = self._fit_full(centred, eps)
            variances = centred.square().mean(dim=0).clamp_min(self.min_variance)
        else:
            var = centred.square().mean(dim=0)
            if self.covariance_type == "isotropic":
                var = var.mean()
            var = var.clamp_min(self.min_variance)
            if bool((var <= 0).any()):
                raise ValueError(
                    "x has zero variance (constant columns or a single row); "
                    "set min_variance > 0 to fit it"
                )
            raw = 0.5 * var.log()
            variances = var.expand(self.dim)
        self._check_mean_precision(mu, variances.sqrt())
        with torch.no_grad():
            self.mean.copy_(mu.to(self.mean.dtype))
            self.raw_scale.copy_(raw.to(self.raw_scale.dtype))
        return self

    def _check_mean_precision(self, mu: Tensor, std: Tensor) -> None:
        """Refuse a fit whose mean the model's dtype cannot hold to 1e-3 standard deviations
        (data far from the origin relative to its spread, e.g. float64 data at 1e8 + N(0, 1)
        into float32 parameters): every log density would be off by up to ``|z| 1e-3``."""
        stored = mu.to(self.mean.dtype).double()
        shift = (stored - mu).abs() / std
        if bool((shift > 1e-3).any()):
            d = int(shift.argmax())
            raise ValueError(
                f"x: the mean of dimension {d} ({float(mu[d]):.10g}) is "
                f"{float(mu[d].abs() / std[d]):.3g} standard deviations from 0, more than "
                f"{str(self.mean.dtype)[6:]} parameters resolve (stored, it moves by "
                f"{float(shift[d]):.2g} standard deviations); centre the data, or fit a "
                "float64 model: Gaussian(...).double().fit(x)"
            )

    def _fit_full(self, centred: Tensor, eps: float) -> Tensor:
        """The unconstrained full-covariance parameter for centred float64 data whose
        values (or the model's parameters) have relative precision ``eps``."""
        cov = centred.mT @ centred / centred.shape[0]
        cov = 0.5 * (cov + cov.mT)
        std = cov.diagonal().sqrt()
        if self.min_variance == 0 and bool((std > 0).all()):
            # Columns dependent to within rounding (e.g. float32 x3 = x1 + x2) leave the
            # smallest eigenvalue of the correlation matrix at about eps^2, not 0: a
            # residual spread below (8 D eps) of the columns' own is rounding, not signal.
            corr = cov / (std.unsqueeze(0) * std.unsqueeze(1))
            smallest = float(torch.linalg.eigvalsh(corr)[0])
            if smallest < (8.0 * self.dim * eps) ** 2:
                raise ValueError(
                    "x has a singular covariance (linearly dependent columns, to within "
                    f"{str(self.mean.dtype)[6:]} rounding: smallest correlation eigenvalue "
                    f"{smallest:.2g}); set min_variance > 0 to fit it"
                )
        if self.min_variance > 0:
            eigvals, eigvecs = torch.linalg.eigh(cov)
            if bool((eigvals < self.min_variance).any()):
                eigvals = eigvals.clamp_min(self.min_variance)
                cov = (eigvecs * eigvals) @ eigvecs.mT
                cov = 0.5 * (cov + cov.mT)
        scale, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not bool((scale.diagonal() > 0).all()):
            raise ValueError(
                "x has a singular covariance (fewer rows than dimensions, or linearly "
                "dependent columns); set min_variance > 0 to fit it"
            )
        return torch.tril(scale, -1) + torch.diag_embed(scale.diagonal().log())

    # ------------------------------------------------------------------ bookkeeping
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments: ``dim``, ``covariance`` and ``min_variance``."""
        return {
            "dim": self.dim,
            "covariance": self.covariance_type,
            "min_variance": self.min_variance,
        }

    def metrics(self) -> dict[str, float]:
        """``mean_log_std``: mean over dimensions of ``log sqrt(Sigma_dd)`` (log data units);
        ``log_det_covariance``: ``log det Sigma``."""
        with torch.no_grad():
            log_var = self.covariance.diagonal().log()
            return {
                "mean_log_std": float(0.5 * log_var.mean()),
                "log_det_covariance": float(self._log_det()),
            }

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.hparams().items())

    def _check_input(self, x: Any) -> Tensor:
        x = check_points(x, "x", self.dim)
        if x.device != self.mean.device:
            raise ValueError(f"x is on {x.device}, but the model is on {self.mean.device}")
        return x
