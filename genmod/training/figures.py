"""Matplotlib figures of a density model: 2-D heat-maps, image grids, projections.

Everything here takes data in data units and returns a :class:`matplotlib.figure.Figure`
built without pyplot (no global state, no display backend), ready for
``SummaryWriter.add_figure`` or ``fig.savefig``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "density_figure",
    "image_grid_figure",
    "line_figure",
    "projection_figure",
    "sample_figure",
]

LogDensity = Callable[[Tensor], Tensor]


def _bounds(points: Tensor, margin: float = 0.15) -> tuple[float, float, float, float]:
    """Axis limits ``(x0, x1, y0, y1)`` around the central 99% of ``points`` ``[n, 2]``."""
    lo = torch.quantile(points[:, :2].double(), 0.005, dim=0)
    hi = torch.quantile(points[:, :2].double(), 0.995, dim=0)
    pad = (hi - lo).clamp_min(1e-6) * margin
    lo, hi = lo - pad, hi + pad
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def density_figure(
    log_density: LogDensity,
    data: Tensor,
    samples: Tensor,
    *,
    grid_size: int = 64,
    title: str = "",
) -> Figure:
    """Two panels for 2-D data: the model density ``p(x)`` as a heat-map with the data on
    top, and the model's samples beside the data.

    Args:
        log_density: ``[n, 2] -> [n]`` log density in nats, data units.
        data: points ``[n, 2]`` to show (e.g. the validation split), data units.
        samples: model samples ``[m, 2]``, data units.
        grid_size: heat-map points per axis (shown with bilinear interpolation).
        title: figure title.
    """
    data, samples = data.detach().cpu().float(), samples.detach().cpu().float()
    x0, x1, y0, y1 = _bounds(data)
    xs = torch.linspace(x0, x1, grid_size)
    ys = torch.linspace(y0, y1, grid_size)
    grid = torch.cartesian_prod(ys, xs).flip(-1)  # rows vary in y, columns in x
    with torch.no_grad():
        density = log_density(grid).detach().cpu().double().exp().reshape(grid_size, grid_size)
    # Fixed margins: constrained layout cost two thirds of the rendering time (0.23 s).
    fig = Figure(figsize=(10, 4.6))
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.08, top=0.86, wspace=0.12)
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    image = left.imshow(
        density.numpy(),
        origin="lower",
        extent=(x0, x1, y0, y1),
        aspect="auto",
        cmap="viridis",
        interpolation="bilinear",
    )
    fig.colorbar(image, ax=left, label="p(x)", fraction=0.06, pad=0.02)
    left.scatter(data[:, 0], data[:, 1], s=2, c="white", alpha=0.5, linewidths=0)
    left.set_title("model density and data")
    right.scatter(data[:, 0], data[:, 1], s=3, c="0.6", alpha=0.6, linewidths=0, label="data")
    right.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:red", linewidths=0, label="samples")
    right.set_xlim(x0, x1)
    right.set_ylim(y0, y1)
    right.legend(loc="upper right", markerscale=4)
    right.set_title("samples")
    if title:
        fig.suptitle(title)
    return fig


def image_grid_figure(
    images: Tensor,
    image_shape: Sequence[int],
    *,
    value_range: tuple[float, float] | None = None,
    title: str = "",
) -> Figure:
    """A square grid of images, e.g. samples of a model of 8x8 digits.

    Args:
        images: ``[n, prod(image_shape)]`` flattened images, data units.
        image_shape: ``(H, W)`` or ``(H, W, C)`` with C in {3, 4}.
        value_range: intensities mapped to the colour range (default: min and max of
            ``images``); values outside are clipped.
        title: figure title.
    """
    shape = tuple(int(s) for s in image_shape)
    images = images.detach().cpu().float().reshape(-1, *shape)
    n = images.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    lo, hi = value_range if value_range is not None else (images.min(), images.max())
    lo, hi = float(lo), float(hi)
    scaled = ((images - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)
    # One mosaic in one image (a gap of one pixel between tiles, blank = 0): a single
    # imshow renders fast, where one axes per image made each figure cost about a second.
    h, w = shape[0], shape[1]
    mosaic = torch.zeros(rows * (h + 1) - 1, cols * (w + 1) - 1, *shape[2:])
    if len(shape) == 3:
        mosaic += 1.0  # white gaps for colour images
    for k in range(n):
        r, c = divmod(k, cols)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = scaled[k]
    fig = Figure(figsize=(0.5 * cols + 0.6, 0.5 * rows + 0.8), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    if len(shape) == 2:
        ax.imshow(mosaic.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic.numpy(), interpolation="nearest")
    if title:
        # Wrapped to the figure's width: a narrow grid would clip a long title at both ends.
        fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize="medium")
    return fig


def _wrap(title: str, width_inches: float) -> str:
    """``title`` broken into lines of at most the characters that fit ``width_inches`` at
    a medium font (about 12 characters per inch)."""
    return textwrap.fill(title, width=max(12, int(12 * width_inches)), break_long_words=False)


def projection_figure(data: Tensor | None, samples: Tensor, *, title: str = "") -> Figure:
    """Samples, and data when given, projected on their first two coordinates (data with
    D > 2 that is not an image)."""
    samples = samples.detach().cpu().float()
    fig = Figure(figsize=(5, 4.6), layout="constrained")
    ax = fig.subplots()
    shown = samples
    if data is not None:
        data = data.detach().cpu().float()
        shown = torch.cat([data, samples])
        ax.scatter(data[:, 0], data[:, 1], s=3, c="0.6", alpha=0.6, linewidths=0, label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:red", linewidths=0, label="samples")
    x0, x1, y0, y1 = _bounds(shown)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title or "first two coordinates")
    return fig


def line_figure(
    samples: Tensor,
    *,
    data: Tensor | None = None,
    log_density: LogDensity | None = None,
    grid_size: int = 400,
    title: str = "",
) -> Figure:
    """1-D data: histograms of data and samples with the model density on top."""
    samples = samples.detach().cpu().double().reshape(-1)
    reference = samples if data is None else data.detach().cpu().double().reshape(-1)
    lo, hi = torch.quantile(reference, 0.005), torch.quantile(reference, 0.995)
    pad = float(hi - lo) * 0.15 + 1e-6
    lo, hi = float(lo) - pad, float(hi) + pad
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    bins = torch.linspace(lo, hi, 61).numpy()
    if data is not None:
        ax.hist(reference.numpy(), bins=bins, density=True, color="0.7", label="data")
    ax.hist(
        samples.numpy(), bins=bins, density=True, histtype="step", color="tab:red", label="samples"
    )
    if log_density is not None:
        grid = torch.linspace(lo, hi, grid_size, dtype=torch.float64)
        with torch.no_grad():
            density = log_density(grid.float().unsqueeze(1)).detach().cpu().double().exp()
        ax.plot(grid.numpy(), density.numpy(), color="tab:blue", label="model p(x)")
    ax.set_xlim(lo, hi)
    ax.legend(loc="upper right")
    ax.set_title(title or "density")
    return fig


def sample_figure(
    samples: Tensor,
    *,
    image_shape: Sequence[int] | None = None,
    data: Tensor | None = None,
    log_density: LogDensity | None = None,
    title: str = "",
    grid_size: int = 64,
) -> Figure:
    """The figure that fits the data: an image grid when ``image_shape`` is given; for 1-D
    data histograms and the density curve; for 2-D data with ``log_density`` and ``data`` a
    density heat-map; otherwise a scatter of the first two coordinates.

    Args:
        samples: model samples ``[m, D]``, data units.
        image_shape: shape of one example as an image, or ``None``.
        data: data ``[n, D]`` to show beside the samples (data units), optional.
        log_density: ``[n, D] -> [n]`` model log density in data units, optional.
        title: figure title.
    """
    if image_shape is not None:
        value_range = None if data is None else (float(data.min()), float(data.max()))
        return image_grid_figure(samples, image_shape, value_range=value_range, title=title)
    if samples.shape[1] == 1:
        return line_figure(samples, data=data, log_density=log_density, title=title)
    if samples.shape[1] == 2 and log_density is not None and data is not None:
        return density_figure(log_density, data, samples, title=title, grid_size=grid_size)
    return projection_figure(data, samples, title=title)
