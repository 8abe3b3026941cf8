"""``KDE.fit_bandwidth``: the likelihood search for a KDE's bandwidth, on one process or on
a reference set sharded over several (:mod:`genmod.models._sharding`).

The objective is the weighted mean leave-one-out log-likelihood of the reference points (or the
mean log-likelihood of held-out data), in nats, as a function of ``log h``. Float32 data: the
grid and Brent's method run in float32 to ``3 rtol`` (half the cost of float64 and accurate
enough to bracket the optimum), then successive float64 parabolas polish ``log h`` to ``rtol``
(:func:`genmod.models.search.polish_log_bandwidth`, typically 3 or 4 float64 calls).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from genmod.models import _sharding
from genmod.models.bandwidth import rule_bandwidth
from genmod.models.base import check_points
from genmod.models.kernels import kernel_variance
from genmod.models.search import polish_log_bandwidth, search_log_bandwidth
from genmod.progress import Progress, Task

if TYPE_CHECKING:
    from genmod.models.kde import KDE

__all__ = ["fit_bandwidth"]


def fit_bandwidth(
    kde: KDE,
    held_out: Tensor | None = None,
    *,
    bounds: tuple[float, float] | None = None,
    rtol: float = 1e-3,
    progress: Progress = None,
) -> KDE:
    """Set ``kde``'s bandwidth to the likelihood optimum; see :meth:`KDE.fit_bandwidth`."""
    if held_out is not None:
        held_out = check_points(held_out, "held_out", kde.dim).to(torch.float64)
        if held_out.shape[0] == 0:
            raise ValueError("held_out must hold at least one row")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if kde._shard is not None:
        ref = kde._shard.rule.to(kde.data.device)
    else:
        try:
            ref = rule_bandwidth(kde.data, "scott", kde._weights(), kde.bandwidth_type)
        except ValueError:
            ref = kde.bandwidth.detach().double()
    center = (ref / math.sqrt(kernel_variance(kde.kernel, kde.dim))).log()
    y, lw, _ = kde._reference(torch.float64)
    rows = _sharding.own_rows(kde)
    loo_w = None
    if held_out is None:
        if kde.log_weights is not None:
            loo_w = kde.log_weights.double().exp()[rows]
            rows = rows[loo_w > 0]
            loo_w = loo_w[loo_w > 0]
        # Fail early (nothing changed yet) when leave-one-out is undefined.
        kde._loo(_sharding.rows_of(kde, rows[:1]).double(), rows[:1], center, torch.float64)
    else:
        count, held_out = held_out.shape[0], _sharding.own_part(kde, held_out)

    def objective(log_h: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        # Sharded: each rank scores its own rows, the sums are all-reduced (same value on
        # every rank) and the gradient on log h is summed over the ranks.
        log_h = _sharding.replicate(kde, log_h)
        if held_out is not None:
            ys, lws = (y, lw) if dtype == torch.float64 else kde._reference(dtype)[:2]
            out = kde._log_kernel_sum(held_out.to(dtype), ys, lws, log_h, None).double()
            return _sharding.global_sum(kde, out.sum()) / count
        x = _sharding.rows_of(kde, rows).to(dtype)
        loo = kde._loo(x, rows, log_h, dtype).double()
        if loo_w is None:
            return _sharding.global_sum(kde, loo.sum()) / kde.num_points
        return _sharding.global_sum(kde, (loo_w * loo).sum())

    # Float32 data: the search runs in float32 (half the cost of float64, and accurate
    # enough to bracket the optimum), then a float64 parabola polishes log h to rtol.
    # (The float32 search stops at 3 rtol; the float64 polish searches +-6 rtol.)
    fast = kde.data.dtype if kde.data.dtype != torch.float64 else torch.float64
    polish = fast != torch.float64 and center.dim() == 0
    coarse = min(3.0 * rtol, 0.5) if polish else rtol
    what = "held-out" if held_out is not None else "leave-one-out"
    with Task(f"bandwidth search ({what} log-likelihood)", progress) as task:

        def report(log_h: Tensor, value: Tensor) -> None:
            task.update(h=float(log_h.exp().mean()), objective=float(value))

        step = report if task.active else None
        best = search_log_bandwidth(
            lambda t: objective(t, fast), center, bounds, rtol=coarse, report=step
        )
        if polish:
            best = polish_log_bandwidth(
                objective, best, center, bounds, rtol=rtol, coarse=coarse, report=step
            )
    with torch.no_grad():
        kde.log_bandwidth.copy_(best.to(kde.log_bandwidth))
    return kde
