"""scikit-learn estimators over genmod's models: numpy in, numpy out.

``KernelDensity`` wraps :class:`genmod.KDE` and ``GaussianDensity`` wraps
:class:`genmod.Gaussian`, with scikit-learn's density-estimator API (``fit(X, y=None,
sample_weight=None)``, ``score_samples``, ``score``, ``sample``, ``get_params`` /
``set_params``), so ``GridSearchCV``, ``Pipeline`` and ``cross_val_score`` work unchanged
while the work runs on genmod's memory-bounded kernel, on the CPU or a GPU (``device``).

``sklearn.utils.estimator_checks.check_estimator`` (scikit-learn 1.9, 48 checks; see
``tests/sklearn/test_estimators.py``): ``KernelDensity`` passes 47 with any bandwidth
(numbers, rules, ``"loo"``) and kernel. ``GaussianDensity()`` passes 46; the exception is
``check_sample_weight_equivalence_on_dense_data``, which fits 15 samples in 30 dimensions,
where a full covariance is singular and has no maximum-likelihood fit (it raises, naming
``min_variance``); with ``min_variance > 0`` or ``covariance="diag"`` all 47 pass. The 48th,
``check_array_api_input``, is skipped by scikit-learn itself unless ``SCIPY_ARRAY_API`` is
set; these estimators take numpy (array API inputs are converted), so it does not apply.

Units: log densities in nats, in the units of ``X``. ``score`` is the total log-likelihood
``sum_i log p(x_i)``, as in scikit-learn (``GridSearchCV`` maximises it).

Bandwidths: scikit-learn's and genmod's ``bandwidth`` are the same number for every kernel
(gaussian: the standard deviation; the compact kernels: the support radius; exponential: the
decay length). The rules are not the same: scikit-learn's ``"scott"`` is the factor
``n^{-1/(D+4)}`` alone (a bandwidth for standardised data, weights ignored); genmod's is that
factor (with the weighted effective sample size) times the data's RMS standard deviation, so
it follows the data's scale (:mod:`genmod.models.bandwidth`). For data with unit variance
the two agree. The log densities agree to float64 rounding for all six kernels, except
scikit-learn's cosine constant, which is wrong in even dimensions (genmod's integrates to
one), and where no reference point lies within a compact kernel's support: the density is 0
and genmod returns ``-inf``, scikit-learn's tree a finite floor near ``log(1e-15)``.

scikit-learn is imported by this module only; ``import genmod`` never loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as err:  # pragma: no cover - exercised with scikit-learn absent
    raise ImportError(
        "genmod.sklearn needs scikit-learn, which is not installed: pip install scikit-learn"
    ) from err

from genmod.models.gaussian import Gaussian
from genmod.models.kde import KDE

__all__ = ["GaussianDensity", "KernelDensity"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _validate(estimator: BaseEstimator, X: Any, reset: bool) -> np.ndarray:
    """``X`` as a 2-D finite float64 array, recording (``reset``) or checking the number of
    features, with scikit-learn's messages."""
    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # scikit-learn < 1.6
        return estimator._validate_data(X, reset=reset, dtype=np.float64)
    return validate_data(estimator, X, reset=reset, dtype=np.float64)


def _torch_options(estimator: BaseEstimator) -> tuple[torch.device, torch.dtype]:
    if estimator.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {estimator.dtype!r}")
    try:
        device = torch.device(estimator.device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device, got {estimator.device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={estimator.device!r}, but CUDA is not available")
    return device, _DTYPES[estimator.dtype]


class _DensityEstimator(DensityMixin, BaseEstimator):
    """``score_samples``, ``score`` and ``sample`` over a fitted genmod model ``model_``."""

    model_: Any

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        device, dtype = _torch_options(self)
        return torch.tensor(np.ascontiguousarray(X), dtype=dtype, device=device)

    def score_samples(self, X: Any) -> np.ndarray:
        """``log p(x_i)`` in nats for each row of ``X`` ``[n, D]`` -> float64 ``[n]``."""
        check_is_fitted(self, "model_")
        X = _validate(self, X, reset=False)
        with torch.no_grad():
            out = self.model_.log_prob(self._tensor(X))
        return out.double().cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Total log-likelihood ``sum_i log p(x_i)`` of ``X`` in nats (``y`` is ignored)."""
        return float(np.sum(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """``n_samples`` draws ``[n_samples, D]`` (float64). ``random_state`` (None, an int or
        a ``numpy.random.RandomState``) seeds the torch generator, so equal states give equal
        draws."""
        check_is_fitted(self, "model_")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
            raise ValueError(f"n_samples must be an int >= 0, got {n_samples!r}")
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        device = next(self.model_.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        return self.model_.sample(int(n_samples), generator=generator).double().cpu().numpy()


class KernelDensity(_DensityEstimator):
    """Kernel density estimate ``p(x) = sum_j w_j K_h(x - x_j)`` (:class:`genmod.KDE`).

    Args:
        bandwidth: a positive number (data units; for ``bandwidth_type="full"`` the factor of
            the data covariance), ``"scott"``, ``"silverman"`` (genmod's scale-equivariant
            rules, see the module docstring) or ``"loo"`` (maximum leave-one-out likelihood,
            :meth:`genmod.KDE.fit_bandwidth`). Default 1.0, as scikit-learn.
        kernel: ``"gaussian"``, ``"tophat"``, ``"epanechnikov"``, ``"exponential"``,
            ``"linear"`` or ``"cosine"`` (scikit-learn's six, with the same bandwidth).
        bandwidth_type: ``"isotropic"``, ``"diagonal"`` or ``"full"`` (``H = h^2 Cov``, as
            ``scipy.stats.gaussian_kde``).
        device: the torch device the model lives and computes on (``"cpu"``, ``"cuda"``).
        dtype: ``"float64"`` (default) or ``"float32"`` (faster on a GPU, about 1e-4 nats).

    Attributes:
        model_: the fitted :class:`genmod.KDE` (a ``torch.nn.Module``).
        bandwidth_: the bandwidth used (a float, or ``[D]`` for ``"diagonal"``).
        n_features_in_: D.

    Example:
        >>> kde = KernelDensity(bandwidth="loo").fit(np.random.randn(500, 2))
        >>> kde.score_samples(np.zeros((1, 2))).shape
        (1,)
    """

    def __init__(
        self,
        bandwidth: float | str = 1.0,
        kernel: str = "gaussian",
        bandwidth_type: str = "isotropic",
        device: str = "cpu",
        dtype: str = "float64",
    ) -> None:
        self.bandwidth = bandwidth
        self.kernel = kernel
        self.bandwidth_type = bandwidth_type
        self.device = device
        self.dtype = dtype

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KernelDensity:
        """Keep ``X`` ``[n, D]`` as the reference points (weighted by ``sample_weight``, >= 0)
        and set the bandwidth; ``y`` is ignored. Returns ``self``."""
        X = _validate(self, X, reset=True)
        weights = None
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
            weights = torch.tensor(sample_weight, dtype=torch.float64)
        loo = isinstance(self.bandwidth, str) and self.bandwidth == "loo"
        if isinstance(self.bandwidth, str) and X.shape[0] < 2:
            raise ValueError(
                f"bandwidth={self.bandwidth!r} needs n_samples >= 2 (got 1 sample); pass a "
                "numeric bandwidth"
            )
        model = KDE(
            self._tensor(X),
            bandwidth="scott" if loo else self.bandwidth,
            kernel=self.kernel,
            weights=weights,
            bandwidth_type=self.bandwidth_type,
        )
        if loo:
            model.fit_bandwidth()
        self.model_ = model
        h = model.bandwidth.detach().double().cpu()
        self.bandwidth_ = float(h) if h.dim() == 0 else h.numpy()
        return self


class GaussianDensity(_DensityEstimator):
    """Multivariate normal ``N(mu, Sigma)`` fitted by maximum likelihood
    (:class:`genmod.Gaussian`).

    With ``sample_weight`` the fit is the weighted MLE: ``mu = sum_i w_i x_i`` and
    ``S = sum_i w_i (x_i - mu)(x_i - mu)^T`` for weights normalised to sum to one (an
    integer weight equals repeating the row). It is passed to :meth:`genmod.Gaussian.fit` as
    the ``2D`` points ``mu +- sqrt(D) v_k`` (``S = sum_k v_k v_k^T``), whose mean and
    ``ddof=0`` covariance are exactly ``mu`` and ``S``, so the floor and the checks are
    genmod's own.

    Args:
        covariance: ``"full"``, ``"diag"`` or ``"isotropic"``.
        min_variance: the eigenvalue floor of the fitted covariance (data units squared).
        device: the torch device.
        dtype: ``"float64"`` (default) or ``"float32"``.

    Attributes:
        model_: the fitted :class:`genmod.Gaussian`.
        mean_: ``mu`` ``[D]``; ``covariance_``: ``Sigma`` ``[D, D]``; ``n_features_in_``: D.
    """

    def __init__(
        self,
        covariance: str = "full",
        min_variance: float = 0.0,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> None:
        self.covariance = covariance
        self.min_variance = min_variance
        self.device = device
        self.dtype = dtype

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianDensity:
        """Set the maximum-likelihood ``mu`` and ``Sigma`` of ``X`` ``[n, D]`` (weighted by
        ``sample_weight``); ``y`` is ignored. Returns ``self``."""
        X = _validate(self, X, reset=True)
        points = X
        if sample_weight is not None:
            w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
            if not w.sum() > 0:
                raise ValueError("sample_weight must not all be zero")
            points = _moment_points(X, w / w.sum())
        elif X.shape[0] < 2 and self.min_variance == 0:
            raise ValueError(
                "GaussianDensity needs n_samples >= 2 without a min_variance floor (1 sample "
                "has a singular covariance); set min_variance > 0"
            )
        device, dtype = _torch_options(self)
        model = Gaussian(X.shape[1], self.covariance, self.min_variance).to(device, dtype)
        model.fit(self._tensor(points))
        self.model_ = model
        self.mean_ = model.loc.detach().double().cpu().numpy()
        self.covariance_ = model.covariance_matrix.detach().double().cpu().numpy()
        return self


def _moment_points(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``2D`` points whose mean and ``ddof=0`` covariance are the weighted ``mu`` and ``S``."""
    mu = w @ X
    centred = X - mu
    cov = (centred * w[:, None]).T @ centred
    eigvals, eigvecs = np.linalg.eigh(0.5 * (cov + cov.T))
    # Rounding can leave an eigenvalue of a singular S at -1e-17: it is 0.
    v = eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))  # columns v_k, S = sum v_k v_k^T
    dim = X.shape[1]
    spread = np.sqrt(dim) * v.T
    return np.concatenate([mu + spread, mu - spread])
