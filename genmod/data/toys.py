"""Two-dimensional toy densities, drawn with torch from a seedable generator.

Every toy is a mixture or a noisy curve in the plane; ``make_toy(name, n)`` returns
``n`` i.i.d. draws ``[n, 2]``, so any prefix of the rows is itself a fair sample.
Each has one ``noise`` knob (data units; defaults in :data:`TOY_NOISE`):

- ``moons``: two interleaved half circles of radius 1 centred at (0, 0) and (1, 0.5),
  chosen with probability 1/2 each, uniform angle, plus N(0, noise² I). Default 0.1.
- ``circles``: circles of radius 1 and 0.5 about the origin, probability 1/2 each,
  uniform angle, plus N(0, noise² I). Default 0.05.
- ``eight_gaussians``: 8 equal-weight components N(m_k, noise² I) with means
  m_k = 2 (cos kπ/4, sin kπ/4). Default 0.2.
- ``pinwheel``: 5 spiral arms; offsets r ~ N(1, noise²) radially and N(0, (noise/6)²)
  tangentially, rotated by 2πk/5 + 0.25 e^r, then scaled by 2. Default 0.3.
- ``checkerboard``: uniform on the 8 black 2×2 squares of [-4, 4]² (those where
  ⌊x/2⌋ + ⌊y/2⌋ is even; density 1/32), plus N(0, noise² I). Default 0.
- ``two_spirals``: t = 3π √U with U ~ U[0, 1), point ±(-t cos t, t sin t) / 3 with
  either sign at probability 1/2, plus N(0, noise² I). Default 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["TOY_DATASETS", "TOY_NOISE", "make_toy"]

TOY_DATASETS: tuple[str, ...] = (
    "moons",
    "circles",
    "eight_gaussians",
    "pinwheel",
    "checkerboard",
    "two_spirals",
)
"""Names accepted by :func:`make_toy`."""

TOY_NOISE: dict[str, float] = {
    "moons": 0.1,
    "circles": 0.05,
    "eight_gaussians": 0.2,
    "pinwheel": 0.3,
    "checkerboard": 0.0,
    "two_spirals": 0.1,
}
"""Default ``noise`` of each toy (its meaning is in the module docstring)."""

_Sampler = Callable[[int, float, torch.Generator], Tensor]
_F64 = torch.float64


def _uniform(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=_F64)


def _coin(n: int, k: int, g: torch.Generator) -> Tensor:
    return torch.randint(0, k, (n,), generator=g)


def _jitter(x: Tensor, noise: float, g: torch.Generator) -> Tensor:
    if noise == 0.0:
        return x
    return x + noise * torch.randn(x.shape, generator=g, dtype=_F64)


def _moons(n: int, noise: float, g: torch.Generator) -> Tensor:
    t = math.pi * _uniform(n, g)
    inner = _coin(n, 2, g).bool()
    outer_pts = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    inner_pts = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(inner[:, None], inner_pts, outer_pts)
    return _jitter(x, noise, g)


def _circles(n: int, noise: float, g: torch.Generator) -> Tensor:
    t = 2.0 * math.pi * _uniform(n, g)
    radius = torch.where(_coin(n, 2, g).bool(), 0.5, 1.0).to(_F64)
    x = radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    return _jitter(x, noise, g)


def _eight_gaussians(n: int, noise: float, g: torch.Generator) -> Tensor:
    angle = _coin(n, 8, g).to(_F64) * (math.pi / 4.0)
    x = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return _jitter(x, noise, g)


def _pinwheel(n: int, noise: float, g: torch.Generator) -> Tensor:
    arms, rate = 5, 0.25
    offsets = torch.randn(n, 2, generator=g, dtype=_F64) * torch.tensor([noise, noise / 6.0])
    offsets[:, 0] += 1.0
    angle = _coin(n, arms, g).to(_F64) * (2.0 * math.pi / arms) + rate * torch.exp(offsets[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack(
        [cos * offsets[:, 0] - sin * offsets[:, 1], sin * offsets[:, 0] + cos * offsets[:, 1]],
        dim=1,
    )
    return 2.0 * rotated


def _checkerboard(n: int, noise: float, g: torch.Generator) -> Tensor:
    x = 8.0 * _uniform(n, g) - 4.0
    column = torch.floor(x / 2.0)
    # the black squares are those with (column + row) even
    row = 2.0 * _coin(n, 2, g).to(_F64) - 2.0 + torch.remainder(column, 2.0)
    y = 2.0 * row + 2.0 * _uniform(n, g)
    return _jitter(torch.stack([x, y], dim=1), noise, g)


def _two_spirals(n: int, noise: float, g: torch.Generator) -> Tensor:
    t = 3.0 * math.pi * torch.sqrt(_uniform(n, g))
    sign = 2.0 * _coin(n, 2, g).to(_F64) - 1.0
    x = (sign * t / 3.0)[:, None] * torch.stack([-torch.cos(t), torch.sin(t)], dim=1)
    return _jitter(x, noise, g)


_SAMPLERS: dict[str, _Sampler] = {
    "moons": _moons,
    "circles": _circles,
    "eight_gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "checkerboard": _checkerboard,
    "two_spirals": _two_spirals,
}


def make_toy(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    noise: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` i.i.d. points ``[n, 2]`` from the 2-D toy density ``name``.

    The points are computed in float64 on the CPU and returned as ``dtype``.

    Args:
        name: one of :data:`TOY_DATASETS`.
        n: number of points (``>= 0``).
        generator: a CPU ``torch.Generator``; the same seed gives the same points.
            ``None`` uses torch's global generator.
        noise: the toy's noise scale in data units (see the module docstring);
            ``None`` uses :data:`TOY_NOISE` ``[name]``. Must be finite and ``>= 0``.
        dtype: floating dtype of the result.

    Returns:
        Tensor ``[n, 2]`` of ``dtype``.

    Raises:
        ValueError: naming ``name``, ``n``, ``noise``, ``generator`` or ``dtype`` when invalid.

    Example:
        >>> x = make_toy("moons", 1000, generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([1000, 2])
    """
    if name not in _SAMPLERS:
        raise ValueError(f"name must be one of {', '.join(TOY_DATASETS)}; got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if noise is None:
        noise = TOY_NOISE[name]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)):
        raise ValueError(f"noise must be a number, got {type(noise).__name__}")
    noise = float(noise)
    if not math.isfinite(noise) or noise < 0.0:
        raise ValueError(f"noise must be finite and >= 0, got {noise}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    g = generator if generator is not None else torch.default_generator
    return _SAMPLERS[name](n, noise, g).to(dtype)
