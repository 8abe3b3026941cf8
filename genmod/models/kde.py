"""Kernel density estimation: ``p(x) = sum_j w_j K_h(x - y_j)`` over reference points ``y_j``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from genmod.models import _kde_fit, _kde_full, _sharding
from genmod.models.bandwidth import resolve_bandwidth
from genmod.models.base import DensityModel, check_generator, check_points, check_weights
from genmod.models.kernels import check_kernel, log_normalizer, sample_kernel
from genmod.ops import checks_values, min_scale, pairwise_logsumexp
from genmod.ops.distributed import sharded_pairwise_logsumexp
from genmod.progress import Progress

__all__ = ["KDE"]


class KDE(DensityModel):
    """Kernel density estimate with a fixed, rule-based or learned bandwidth.

    ``p(x) = sum_j w_j K_h(x - y_j)`` with reference points ``y_j`` (``data`` ``[M, D]``),
    weights ``w_j`` normalised to sum to one (``1 / M`` without weights) and the normalised
    kernel ``K_h(u) = k(||u|| / h) / (C_{k,D} h^D)`` (isotropic) or
    ``k(||u / h||) / (C_{k,D} prod_d h_d)`` (diagonal, ``u / h`` per dimension); ``k`` and
    ``C_{k,D}`` are in :mod:`genmod.models.kernels`. For ``kernel="gaussian"`` the bandwidth
    ``h`` is the kernel's standard deviation (``p`` is the seed's RBF-KDE with ``beta = h^2``);
    for the compact kernels (tophat, epanechnikov, linear, cosine) it is the support radius
    and for exponential the decay length, as in scikit-learn. Outside every compact kernel's
    support the density is exactly zero and ``log_prob`` is ``-inf``: that is the density.

    Args:
        data: reference points ``[M, D]`` (floating, finite, M >= 1); kept as the ``data``
            buffer (saved in the ``state_dict``, not copied).
        bandwidth: a positive number (data units), ``"scott"`` or ``"silverman"`` (see
            :mod:`genmod.models.bandwidth`; scale-equivariant, weighted by the effective sample
            size), or for ``bandwidth_type="diagonal"`` ``D`` positive numbers.
        kernel: ``"gaussian"``, ``"tophat"``, ``"epanechnikov"``, ``"exponential"``,
            ``"linear"`` or ``"cosine"``.
        weights: optional non-negative weights ``[M]``, not all zero.
        bandwidth_type: ``"isotropic"`` (one ``h``), ``"diagonal"`` (one ``h_d`` per dim) or
            ``"full"`` (``H = h^2 Sigma``, ``Sigma`` the weighted data covariance and ``h`` a
            dimensionless factor: scipy's ``gaussian_kde``; see
            :mod:`genmod.models._kde_full`). ``KDE(x, "scott", bandwidth_type="full")`` is
            ``scipy.stats.gaussian_kde(x.T)``.
        learn_bandwidth: make ``log_bandwidth`` a trainable parameter (the NLL loop then
            minimises the leave-one-out NLL by gradient on ``log h``).
        reference: ``"replicated"`` (every process holds every reference point) or
            ``"sharded"``: once the training loop runs several processes, each keeps
            ``1 / world`` of the rows and likelihoods combine the shards by collectives
            (:mod:`genmod.models._sharding`); results equal the replicated model's, and
            checkpoints hold every row once. On one process it is the replicated model.

    Example:
        >>> kde = KDE(torch.randn(500, 2)).fit_bandwidth()
        >>> kde.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        data: Tensor,
        bandwidth: float | str | Tensor | list[float] = "scott",
        kernel: str = "gaussian",
        weights: Tensor | None = None,
        bandwidth_type: str = "isotropic",
        learn_bandwidth: bool = False,
        reference: str = "replicated",
    ) -> None:
        super().__init__()
        self.reference = _sharding.check_reference(reference)
        self._shard: _sharding.Shard | None = None
        data = check_points(data, "data")
        if data.shape[0] == 0:
            raise ValueError("data must hold at least one reference point, got shape [0, D]")
        kernel = check_kernel(kernel)
        w = check_weights(weights, data)
        tril = _kde_full.data_scale_tril(data, w) if bandwidth_type == "full" else None
        h = resolve_bandwidth(bandwidth, data, w, bandwidth_type)
        self.dim = int(data.shape[1])
        self.kernel = kernel
        self.bandwidth_type = bandwidth_type
        self.learn_bandwidth = bool(learn_bandwidth)
        self._log_norm = log_normalizer(kernel, self.dim)
        self.register_buffer("data", data.detach())
        log_w = None if w is None else (w / w.sum()).log().to(data.dtype)
        self.register_buffer("log_weights", log_w)
        self.register_buffer("data_scale_tril", None if tril is None else tril.to(data.dtype))
        self.log_bandwidth = nn.Parameter(
            h.log().to(data.dtype), requires_grad=self.learn_bandwidth
        )
        if log_w is not None:
            self._positive_weights()  # counted here, where the weights are still on the host

    @property
    def num_points(self) -> int:
        """Number of reference points M (on every rank, when sharded)."""
        return self._shard.total if self._shard is not None else int(self.data.shape[0])

    @property
    def bandwidth(self) -> Tensor:
        """``h = exp(log_bandwidth)``: 0-d (isotropic, data units; full, a factor of the data
        covariance's Cholesky factor) or ``[D]`` (diagonal, data units)."""
        return self.log_bandwidth.exp()

    @bandwidth.setter
    def bandwidth(self, value: float | str | Tensor | list[float]) -> None:
        if isinstance(value, str) and self._shard is not None:
            raise ValueError(
                "bandwidth: a rule needs the whole reference set; set it before sharding"
            )
        h = resolve_bandwidth(value, self.data, self._weights(), self.bandwidth_type)
        with torch.no_grad():
            self.log_bandwidth.copy_(h.log())

    # scipy's gaussian_kde features (genmod/models/_kde_full.py): H, marginals, box probabilities
    bandwidth_matrix = property(_kde_full.bandwidth_matrix)
    marginal = _kde_full.marginal
    integrate_box = _kde_full.integrate_box
    integrate_box_1d = _kde_full.integrate_box_1d

    def set_bandwidth(self, bandwidth: Any) -> KDE:
        """Set the bandwidth as the constructor takes it, or from ``bandwidth(self)`` when it
        is callable (scipy's ``set_bandwidth``); returns ``self``."""
        self.bandwidth = bandwidth(self) if callable(bandwidth) else bandwidth
        return self

    @property
    def has_closed_form(self) -> bool:
        """True unless the bandwidth is learned by gradient."""
        return not self.learn_bandwidth

    def _weights(self) -> Tensor | None:
        return None if self.log_weights is None else self.log_weights.double().exp()

    def _reference(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Reference points and log-weights with zero-weight rows dropped, and for each data
        row its position among the kept ones (-1 if dropped; None when none is dropped)."""
        y = self.data.to(dtype)
        if self.log_weights is None:
            return y, None, None
        lw = self.log_weights.to(dtype)
        if self._shard is not None:  # zero weights stay (-inf): indices remain global
            offset = self._shard.offset
            return y, lw[offset : offset + y.shape[0]], None
        if not checks_values():  # trusted: keep zero weights (-inf) rather than sync
            return y, lw, None
        keep = lw > -math.inf
        if bool(keep.all()):
            return y, lw, None
        position = torch.where(keep, torch.cumsum(keep.long(), 0) - 1, -1)
        return y[keep], lw[keep], position

    def _log_kernel_sum(
        self, x: Tensor, y: Tensor, lw: Tensor | None, log_h: Tensor, exclude: Tensor | None
    ) -> Tensor:
        """``log sum_j w_j K_h(x_i - y_j)`` (unnormalised weights as given in ``lw``)."""
        kw = {"kernel": self.kernel, "exclude": exclude}
        smallest = min_scale(x.dtype)
        if not checks_values():
            # Trusted (the training loop): no host sync; a bandwidth that learned its way
            # below the floor is held at it, and the next checked call (validation) raises.
            log_h = log_h.clamp_min(math.log(smallest))
        elif bool((log_h < math.log(smallest)).any()):
            h = float(log_h.detach().min().exp())
            raise ValueError(
                f"bandwidth {h:.3g} is below the smallest {str(x.dtype)[6:]} supports "
                f"({smallest:.3g}: 1 / h^2 overflows it); use float64 data, e.g. model.double()"
            )
        op = pairwise_logsumexp
        if self._shard is not None:
            kw.update(queries="local", group=self._shard.group)
            op = sharded_pairwise_logsumexp
        if self.bandwidth_type == "full":
            tril = self.data_scale_tril
            x, y = _kde_full.whiten(x, tril), _kde_full.whiten(y, tril)
            out = op(x, y, log_h.exp(), lw, **kw) - self.dim * log_h
            out = out - _kde_full.log_abs_det(tril.to(x.dtype))
        elif self.bandwidth_type == "diagonal":
            h = log_h.exp()
            out = op(x / h, y / h, 1.0, lw, **kw) - log_h.sum()
        else:
            out = op(x, y, log_h.exp(), lw, **kw) - self.dim * log_h
        out = out - self._log_norm
        return out if lw is not None else out - math.log(self.num_points)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x_i)`` in nats for each row of ``x`` ``[n, D]`` -> ``[n]``.

        Computed for every kernel by :func:`genmod.ops.pairwise_logsumexp` (log space,
        memory bounded): ``log sum_j w_j k(r_ij) - log C_{k,D} - sum_d log h_d``. ``-inf``
        where a compact kernel puts no mass. ``x`` is cast to the model's dtype.
        """
        x = check_points(x, "x", self.dim).to(self.data.dtype)
        y, lw, _ = self._reference(self.data.dtype)
        return self._log_kernel_sum(x, y, lw, self.log_bandwidth, None)

    def _check_index(self, index: Any) -> Tensor:
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise ValueError("index must be a 1-D integer tensor of reference-row indices")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"index must have an integer dtype, got {index.dtype}")
        index = index.to(device=self.data.device, dtype=torch.long)
        if not checks_values():
            return index
        bad = (index < 0) | (index >= self.num_points)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"index must lie in [0, {self.num_points}) (bad entry {row})")
        return index

    def _loo(self, x: Tensor, index: Tensor, log_h: Tensor, dtype: torch.dtype) -> Tensor:
        """``log p_{-i}(x_k)`` for queries ``x`` whose reference rows are ``i = index[k]``:
        ``p_{-i} = sum_{j != i} w_j K_h / sum_{j != i} w_j``, via the op's ``exclude``."""
        if self.num_points < 2:
            raise ValueError("data: leave-one-out needs at least two reference points")
        y, lw, position = self._reference(dtype)
        exclude = index if position is None else position[index]
        out = self._log_kernel_sum(x, y, lw, log_h, exclude)
        if lw is None:
            return out + math.log(self.num_points) - math.log(self.num_points - 1)
        full = self.log_weights.double()
        ninf = full.new_full((1,), -math.inf)
        before = torch.cat([ninf, torch.logcumsumexp(full, 0)[:-1]])
        after = torch.cat([torch.logcumsumexp(full.flip(0), 0).flip(0)[1:], ninf])
        rest = torch.logaddexp(before, after)[index]
        # Trusted steps skip this sync unless one row may hold all the weight (counted once).
        may_hold_all = self._positive_weights() < 2
        if (checks_values() or may_hold_all) and bool((rest == -math.inf).any()):
            raise ValueError(
                "weights: leave-one-out needs a second point with positive weight, but row "
                f"{int(index[rest == -math.inf][0])} holds all of it"
            )
        return out - rest.to(dtype)

    def _positive_weights(self) -> int:
        """Rows with positive weight, counted once per weights tensor (one host read; the
        count is redone when the buffer is replaced or changed in place)."""
        lw = self.log_weights
        key = (lw.data_ptr(), lw._version, lw.device)
        if getattr(self, "_positive_key", None) != key:
            self._positive_count = int((lw > -math.inf).sum())
            self._positive_key = key
        return self._positive_count

    def loo_log_prob(self, index: Tensor | None = None) -> Tensor:
        """Leave-one-out log density ``log p_{-i}(y_i)`` of reference rows ``index`` (all by
        default), with ``p_{-i} = sum_{j != i} w_j K_h(y_i - y_j) / sum_{j != i} w_j``. A
        sharded KDE is a collective: each rank asks for rows it holds (its own by default).

        Each point's own kernel is excluded inside the reduction (never subtracted after), so
        the values are exact even where the self term dominates. Returns ``[len(index)]``.
        """
        if index is None:
            index = _sharding.own_rows(self)
        index = self._check_index(index)
        x = _sharding.rows_of(self, index)
        return self._loo(x, index, self.log_bandwidth, self.data.dtype)

    def training_loss(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Leave-one-out NLL of a batch of reference rows, or the NLL of ``x``.

        With ``index`` (the rows of the reference set that ``x`` holds, as the training loop
        passes them), the loss is ``-(1 / |B|) sum_{k in B} M w_i loo_k`` with ``i = index[k]``
        and ``loo_k = log p_{-i}(x_k)`` (``M w_i = 1`` without weights): an unbiased batch
        estimate of the weighted LOO NLL that :meth:`fit_bandwidth` minimises. The plain
        likelihood of the reference points would drive ``h -> 0``. Without ``index``,
        :meth:`nll` of ``x``.
        """
        if index is None:
            return self.nll(x)
        index = self._check_index(index)
        x = check_points(x, "x", self.dim).to(self.data.dtype)
        if x.shape[0] != index.shape[0]:
            raise ValueError(f"index has {index.shape[0]} entries but x has {x.shape[0]} rows")
        if self.log_weights is None:
            return -self._loo(x, index, self.log_bandwidth, x.dtype).mean()
        # Zero-weight rows count 0 (where, not a boolean mask: no host synchronisation).
        scaled = self.log_weights[index].exp() * self.num_points
        loo = self._loo(x, index, self.log_bandwidth, x.dtype)
        return -torch.where(scaled > 0, scaled * loo, 0.0).sum() / index.shape[0]

    def fit_bandwidth(
        self,
        held_out: Tensor | None = None,
        *,
        bounds: tuple[float, float] | None = None,
        rtol: float = 1e-3,
        progress: Progress = None,
    ) -> KDE:
        """Set ``h`` to maximise the leave-one-out likelihood of the reference set (default)
        or the mean log-likelihood of ``held_out``; returns ``self``.

        The objective is the weighted mean ``sum_i w_i log p_{-i}(y_i)`` (:meth:`loo_log_prob`)
        or ``mean_k log p(held_out_k)``, in float64, as a function of ``log h``. Never the
        likelihood of the reference points themselves: each point's own kernel makes it grow
        without bound as ``h -> 0``. Isotropic: a log-spaced grid (2 points per decade) and
        Brent's method to ``rtol`` relative on ``h``; for float32 data the search runs in
        float32 (to ``3 rtol``) and successive float64 parabolas around it finish (20 to 30
        kernel calls in all, 3 to 5 of them float64; :mod:`genmod.models._kde_fit`).
        Diagonal: the same search over a common factor of the per-dimension rule, then
        L-BFGS on ``log h_d``. Works with ``learn_bandwidth`` too.

        Args:
            held_out: optional ``[n, D]`` data to score instead of the LOO objective.
            bounds: ``(low, high)`` on ``h`` in data units (per dimension for diagonal; the
                dimensionless factor for full);
                default ``1e-3`` to ``1e2`` times the Scott rule rescaled to the kernel's
                spread. A warning is raised when the optimum sits at a bound.
            rtol: relative tolerance on ``h``, in ``(0, 1)``.
            progress: report each step's ``h`` (standardised units when trained by genmod's
                loop) and objective (mean log-likelihood, nats): ``None`` silent unless a
                reporter is active or logging asks (:mod:`genmod.progress`), ``True`` a bar
                or lines on stderr, or a callable.
        """
        return _kde_fit.fit_bandwidth(self, held_out, bounds=bounds, rtol=rtol, progress=progress)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``[n, D]``: a reference row chosen by weight plus ``h`` times a draw
        from the normalised kernel (:func:`genmod.models.kernels.sample_kernel`)."""
        n = self._check_n(n)
        device = self.data.device
        check_generator(generator, device)
        with torch.no_grad():
            if self.log_weights is None:
                idx = torch.randint(self.num_points, (n,), generator=generator, device=device)
            else:
                cdf = torch.cumsum(self.log_weights.double().exp(), 0)
                u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
                idx = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(cdf) - 1)
            noise = sample_kernel(
                self.kernel, n, self.dim, generator, dtype=self.data.dtype, device=device
            )
            if self.bandwidth_type == "full":
                noise = noise @ self.data_scale_tril.mT
            return _sharding.sample_rows(self, idx, noise)

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments with the current numeric bandwidth (no rule is recomputed)."""
        h = self.bandwidth.detach().double().cpu()
        return {
            "bandwidth": float(h) if h.dim() == 0 else h.tolist(),
            "kernel": self.kernel,
            "bandwidth_type": self.bandwidth_type,
            "learn_bandwidth": self.learn_bandwidth,
            "reference": self.reference,
        }

    def metrics(self) -> dict[str, float]:
        """``{"bandwidth": mean_d h_d}`` in data units."""
        return {"bandwidth": float(self.bandwidth.detach().mean())}

    @classmethod
    def from_state(cls, hparams: dict[str, Any], state_dict: dict[str, Tensor]) -> KDE:
        """Rebuild from :meth:`hparams` and a ``state_dict`` (which holds ``data``, the
        optional ``log_weights`` and ``log_bandwidth``), with placeholder data of the saved
        shape and dtype until the state is loaded."""
        if "data" not in state_dict or "log_bandwidth" not in state_dict:
            raise ValueError("state_dict must hold 'data' and 'log_bandwidth' (a KDE's state)")
        saved = state_dict["data"]
        placeholder = torch.zeros(saved.shape, dtype=saved.dtype, device=saved.device)
        weights = None
        if state_dict.get("log_weights") is not None:
            weights = torch.ones(saved.shape[0], dtype=torch.float64)
        if hparams.get("bandwidth_type") == "full":  # a full bandwidth needs a covariance
            placeholder = saved.detach().clone()
            if weights is not None:
                weights = state_dict["log_weights"].detach().double().exp()
        kwargs = {**hparams, "bandwidth": state_dict["log_bandwidth"].detach().double().exp()}
        model = cls(placeholder, weights=weights, **kwargs)
        model.load_state_dict(state_dict)
        return model

    def extra_repr(self) -> str:
        h = self.bandwidth.detach()
        shown = f"{float(h):.4g}" if h.dim() == 0 else f"[{h.numel()} values]"
        return (
            f"num_points={self.num_points}, dim={self.dim}, kernel={self.kernel!r}, "
            f"bandwidth={shown}, bandwidth_type={self.bandwidth_type!r}"
        )
