"""The likelihood searches behind ``KDE.fit_bandwidth``, over ``t = log h``.

Isotropic: a coarse log-spaced grid brackets the maximum (robust to the ``-inf`` plateaus of
compact kernels), then Brent's method (parabolic steps with a golden-section fallback) closes
in to ``rtol`` relative on ``h``; a search run on a cheaper objective (float32) is finished by
a short Brent search on the exact one (:func:`polish_log_bandwidth`). Diagonal: the same over a
common factor, then L-BFGS on every ``log h_d``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "maximize_scalar",
    "maximize_vector",
    "polish_log_bandwidth",
    "search_log_bandwidth",
]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0

Report = Callable[[Tensor, Tensor], None]
"""``report(log_h, objective)``: called after every evaluation of a search's objective."""


def _reported(objective: Callable[[Tensor], Tensor], report: Report | None) -> Any:
    """``objective`` that also hands each ``(log h, value)`` to ``report`` (when given)."""
    if report is None:
        return objective

    def reported(log_h: Tensor) -> Tensor:
        value = objective(log_h)
        report(log_h, value)
        return value

    return reported


def _warn_at_bound(which: str) -> None:
    warnings.warn(
        f"fit_bandwidth: the optimum lies at the {which} bound of the search, so the "
        "likelihood may improve beyond it (when every point has an exact duplicate, the "
        "leave-one-out likelihood grows without bound as h -> 0). Pass wider "
        "bounds=(low, high) to search further.",
        RuntimeWarning,
        stacklevel=5,
    )


def _brent_max(
    objective: Callable[[float], float], a: float, b: float, x: float, fx: float, tol: float
) -> tuple[float, float]:
    """Brent's method (parabolic interpolation with golden-section fallback) for the maximum
    of ``objective`` in ``[a, b]``, starting from the interior point ``x`` with value ``fx``;
    stops when the bracket around the best point is within ``tol``. Returns ``(t, value)``.
    Non-finite values count as very low (they reject parabolic steps)."""

    def f(t: float) -> float:
        v = objective(t)
        return v if math.isfinite(v) else -1e300

    fx = fx if math.isfinite(fx) else -1e300
    w = v = x
    fw = fv = fx
    d = e = 0.0
    for _ in range(100):
        mid = 0.5 * (a + b)
        tol1 = tol / 3.0 + 1e-12 * abs(x)
        if abs(x - mid) <= 2.0 * tol1 - 0.5 * (b - a):
            break
        step_golden = True
        if abs(e) > tol1:  # try a parabola through x, w, v
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = 2.0 * (q - r)
            if q > 0.0:
                p = -p
            q = abs(q)
            if abs(p) < abs(0.5 * q * e) and q * (a - x) < p < q * (b - x):
                e, d = d, p / q
                step_golden = False
                u = x + d
                if u - a < 2.0 * tol1 or b - u < 2.0 * tol1:
                    d = tol1 if x < mid else -tol1
        if step_golden:
            e = (a if x >= mid else b) - x
            d = (1.0 - _INV_PHI) * e
        u = x + (d if abs(d) >= tol1 else (tol1 if d > 0 else -tol1))
        fu = f(u)
        if fu >= fx:
            if u >= x:
                a = x
            else:
                b = x
            v, fv, w, fw, x, fx = w, fw, x, fx, u, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu >= fw or w == x:
                v, fv, w, fw = w, fw, u, fu
            elif fu >= fv or v in (x, w):
                v, fv = u, fu
    return x, fx


def maximize_scalar(
    objective: Callable[[float], float],
    low: float,
    high: float,
    *,
    rtol: float = 1e-3,
    points_per_decade: int = 2,
) -> float:
    """Maximise ``objective(t)`` over ``t = log h`` in ``[low, high]``; return ``t``.

    A log-spaced grid (``points_per_decade`` per factor of 10 in ``h``) brackets the best
    region, robust to ``-inf`` plateaus (compact kernels with no neighbour inside the
    support); Brent's method (parabolic steps, superlinear near a smooth maximum, with
    golden-section steps as the fallback) then shrinks the bracket around the best grid point
    until ``h`` is known to ``rtol`` relative (``log(1 + rtol)`` in ``log h``). The default
    range of five decades takes 11 grid points and about 8 to 15 Brent steps. Warns when the
    optimum sits at a bound.

    Raises:
        ValueError: if no point of the grid has a finite objective.
    """
    count = max(3, int(math.ceil((high - low) / math.log(10.0) * points_per_decade)) + 1)
    grid = torch.linspace(low, high, count, dtype=torch.float64).tolist()
    values = [objective(t) for t in grid]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        raise ValueError(
            "bounds: no bandwidth in the search range gives a finite likelihood; widen bounds"
        )
    k = max(range(count), key=lambda i: values[i] if math.isfinite(values[i]) else -math.inf)
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, count - 1)]
    best_t, best_v = _brent_max(objective, a, b, grid[k], values[k], math.log1p(rtol))
    if best_v < values[k]:
        best_t = grid[k]
    step = (high - low) / (count - 1)
    if best_t <= low + 0.5 * step and k == 0:
        _warn_at_bound("lower")
    elif best_t >= high - 0.5 * step and k == count - 1:
        _warn_at_bound("upper")
    return best_t


def maximize_vector(
    objective: Callable[[Tensor], Tensor],
    start: Tensor,
    low: Tensor,
    high: Tensor,
    *,
    rtol: float = 1e-3,
    max_iter: int = 200,
) -> Tensor:
    """Maximise a differentiable ``objective(t)`` over ``t = log h`` ``[D]`` by L-BFGS.

    Starts at ``start`` (float64, finite objective) with a strong-Wolfe line search and stops
    when the gradient or a step's change of the objective or ``log h`` is negligible
    (``1e-3 rtol^2``: near the optimum the objective moves quadratically in ``log h``). The
    objective is evaluated at ``t`` clipped to ``[low, high]``, and a non-finite value (a
    compact kernel whose support lost every neighbour) counts as a large finite loss, so the
    line search backs off instead of diverging. If the search ends no better than the start,
    the start is returned; a warning is raised when a bound binds.
    """
    with torch.no_grad():
        start_value = float(objective(start))
    penalty = -start_value + 1e3 * (1.0 + abs(start_value))
    t = start.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [t],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-3 * rtol * rtol,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -objective(torch.minimum(torch.maximum(t, low), high))
        if not bool(torch.isfinite(loss)):
            return loss.detach().new_tensor(penalty)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    result = t.detach()
    if not bool(torch.isfinite(result).all()):
        return start.detach().clone()
    clipped = torch.minimum(torch.maximum(result, low), high)
    with torch.no_grad():
        value = float(objective(clipped))
    if not math.isfinite(value) or value <= start_value:
        return start.detach().clone()
    if not torch.equal(clipped, result):
        _warn_at_bound("lower" if bool((result < low).any()) else "upper")
    return clipped


def _log_bounds(bounds: Any, center: Tensor) -> tuple[Tensor, Tensor]:
    try:
        lo, hi = (torch.as_tensor(b, dtype=torch.float64).to(center.device) for b in bounds)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}") from err
    sizes = {1, center.numel()}
    if lo.numel() not in sizes or hi.numel() not in sizes:
        raise ValueError(f"bounds must hold scalars or {center.numel()} values each")
    if not bool(((lo > 0) & (lo < hi) & torch.isfinite(hi)).all()):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    return lo.log().reshape(-1).expand_as(center.reshape(-1)).reshape(
        center.shape
    ), hi.log().reshape(-1).expand_as(center.reshape(-1)).reshape(center.shape)


def search_log_bandwidth(
    objective: Callable[[Tensor], Tensor],
    center: Tensor,
    bounds: Any = None,
    *,
    rtol: float = 1e-3,
    report: Report | None = None,
) -> Tensor:
    """Maximise ``objective(log h)`` (a 0-d float64 tensor) and return the best ``log h``.

    ``center`` is a reference ``log h`` (0-d: isotropic, ``[D]``: diagonal) around which the
    default range spans ``1e-3`` to ``1e2`` times ``h``; ``bounds = (low, high)`` on ``h``
    (scalars, or ``D`` values each for diagonal) replaces it. Isotropic: :func:`maximize_scalar`.
    Diagonal: :func:`maximize_scalar` over a common shift ``log h = center + s``, then
    :func:`maximize_vector` over all ``log h_d``. ``report(log_h, value)`` is called after
    every evaluation of the objective (progress).

    Raises:
        ValueError: naming ``bounds`` when they are malformed or hold no finite likelihood.
    """
    objective = _reported(objective, report)
    if bounds is None:
        low, high = center + math.log(1e-3), center + math.log(1e2)
    else:
        low, high = _log_bounds(bounds, center)
    center = torch.minimum(torch.maximum(center, low), high)
    with torch.no_grad():
        if center.dim() == 0:
            t = maximize_scalar(
                lambda s: float(objective(center.new_tensor(s))), float(low), float(high), rtol=rtol
            )
            return center.new_tensor(t)
        lo_s, hi_s = float((low - center).max()), float((high - center).min())
        best = center
        if lo_s < hi_s:
            s = maximize_scalar(lambda s: float(objective(center + s)), lo_s, hi_s, rtol=rtol)
            best = center + s
        if not bool(torch.isfinite(objective(best))):
            raise ValueError("bounds: no finite likelihood at the start of the search")
    return maximize_vector(objective, best, low, high, rtol=rtol)


def _vertex(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float]) -> float:
    """The abscissa of the parabola's vertex through three points ``(t, value)`` with
    ``t0 < t1 < t2`` and ``value1`` the largest (so the vertex lies in ``[t0, t2]``)."""
    (a, fa), (b, fb), (c, fc) = p0, p1, p2
    if not (math.isfinite(fa) and math.isfinite(fb) and math.isfinite(fc)):
        return b
    num = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
    den = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if den == 0.0:
        return b
    return min(max(b - 0.5 * num / den, a), c)


def polish_log_bandwidth(
    objective: Callable[[Tensor], Tensor],
    start: Tensor,
    center: Tensor,
    bounds: Any = None,
    *,
    rtol: float = 1e-3,
    coarse: float = 3e-3,
    report: Report | None = None,
) -> Tensor:
    """Refine an isotropic ``log h`` found to ``coarse`` on a cheaper objective (float32)
    with the exact one (float64), to ``rtol``.

    Successive parabolic interpolation: the objective at ``t`` and ``t +- log(1 + coarse)``,
    then at the vertex of the parabola through the best point and its two neighbours, until
    the vertex moves less than ``log(1 + rtol) / 2``; typically four float64 calls, since near
    a smooth maximum the parabola's vertex is exact to third order in the spacing. When the
    best point is an end of the evaluated points (the two objectives disagree more than
    ``coarse``), the points step outwards first. At most 12 calls; ends at the bounds.
    ``report(log_h, value)`` is called after every evaluation of the objective.
    """
    objective = _reported(objective, report)
    if bounds is None:
        low, high = float(center) + math.log(1e-3), float(center) + math.log(1e2)
    else:
        lo, hi = _log_bounds(bounds, center)
        low, high = float(lo), float(hi)
    delta, tol = math.log1p(coarse), math.log1p(rtol)
    seen: dict[float, float] = {}

    def f(t: float) -> float:
        t = min(max(t, low), high)
        if t not in seen:
            v = float(objective(start.new_tensor(t)))
            seen[t] = v if math.isfinite(v) else -math.inf
        return seen[t]

    t0 = float(start)
    best = t0
    with torch.no_grad():
        for t in (t0, t0 - delta, t0 + delta):
            f(t)
        while len(seen) < 12:
            ts = sorted(seen)
            k = max(range(len(ts)), key=lambda i: seen[ts[i]])
            best = ts[k]
            if k == 0 or k == len(ts) - 1:  # not bracketed: step outwards
                if best <= low or best >= high:
                    break
                step = 2.0 * (ts[1] - ts[0] if k == 0 else ts[-1] - ts[-2])
                f(best - step if k == 0 else best + step)
                continue
            u = _vertex(*((ts[i], seen[ts[i]]) for i in (k - 1, k, k + 1)))
            if abs(u - best) < 0.5 * tol or u in seen:
                best = u if u not in seen or seen[u] >= seen[best] else best
                break
            f(u)
    return start.new_tensor(best)
