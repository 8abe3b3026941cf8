import math

import pytest
import torch
from scipy import stats

from genmod.data import TOY_DATASETS, TOY_NOISE, make_toy

N = 20000


def _draw(name: str, n: int = N, seed: int = 0, **kwargs) -> torch.Tensor:
    return make_toy(
        name, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, **kwargs
    )


def _binomial_ok(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_shape_dtype_and_seeding(name):
    a = make_toy(name, 500, generator=torch.Generator().manual_seed(3))
    b = make_toy(name, 500, generator=torch.Generator().manual_seed(3))
    c = make_toy(name, 500, generator=torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert make_toy(name, 0).shape == (0, 2)
    assert _draw(name, 10).dtype == torch.float64


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_global_generator_is_used_without_one(name):
    torch.manual_seed(11)
    a = make_toy(name, 100)
    torch.manual_seed(11)
    assert torch.equal(a, make_toy(name, 100))


def test_names_and_defaults_agree():
    assert set(TOY_NOISE) == set(TOY_DATASETS)
    assert all(v >= 0 for v in TOY_NOISE.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "moon", "n": 5}, "name"),
        ({"name": "moons", "n": -1}, "n must"),
        ({"name": "moons", "n": 2.5}, "n must"),
        ({"name": "moons", "n": 5, "noise": -0.1}, "noise"),
        ({"name": "moons", "n": 5, "noise": float("nan")}, "noise"),
        ({"name": "moons", "n": 5, "noise": "0.1"}, "noise"),
        ({"name": "moons", "n": 5, "dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_toy(**kwargs)


def test_moons_lie_on_two_half_circles():
    x = _draw("moons", noise=0.0)
    outer = (x.norm(dim=1) - 1).abs()
    inner = ((x - torch.tensor([1.0, 0.5], dtype=x.dtype)).norm(dim=1) - 1).abs()
    on_outer = outer < 1e-12
    assert (on_outer | (inner < 1e-12)).all()
    assert (x[on_outer, 1] >= 0).all() and (x[~on_outer, 1] <= 0.5).all()
    assert _binomial_ok(int(on_outer.sum()), N, 0.5)


def test_moons_noise_is_gaussian_with_std_noise():
    # with noise << radius, the distance to the nearest curve is ~ |N(0, noise^2)|
    x = _draw("moons", noise=0.01)
    outer = x.norm(dim=1) - 1
    inner = (x - torch.tensor([1.0, 0.5], dtype=x.dtype)).norm(dim=1) - 1
    resid = torch.where(outer.abs() < inner.abs(), outer, inner)
    assert resid.std().item() == pytest.approx(0.01, rel=0.03)


def test_circles_radii():
    r = _draw("circles", noise=0.0).norm(dim=1)
    is_outer = (r - 1).abs() < 1e-12
    assert (is_outer | ((r - 0.5).abs() < 1e-12)).all()
    assert _binomial_ok(int(is_outer.sum()), N, 0.5)
    r = _draw("circles").norm(dim=1)
    outer = r[r > 0.75]
    assert outer.mean().item() == pytest.approx(1.0, abs=0.005)
    assert outer.std().item() == pytest.approx(TOY_NOISE["circles"], rel=0.05)


def test_eight_gaussians_modes():
    x = _draw("eight_gaussians")
    angles = torch.arange(8, dtype=x.dtype) * math.pi / 4
    means = 2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    label = torch.cdist(x, means).argmin(dim=1)
    sigma = TOY_NOISE["eight_gaussians"]
    for k in range(8):
        pts = x[label == k]
        assert _binomial_ok(len(pts), N, 1 / 8)
        se = sigma / math.sqrt(len(pts))
        assert (pts.mean(0) - means[k]).abs().max().item() < 5 * se
        std = pts.std(dim=0, correction=0)
        assert std.tolist() == pytest.approx([sigma, sigma], rel=0.06)


def test_pinwheel_arms():
    x = _draw("pinwheel", noise=1e-9)
    assert x.norm(dim=1).tolist() == pytest.approx([2.0] * N, abs=1e-6)
    # every point sits on one of 5 arms at angle 2 pi k / 5 + 0.25 e
    phase = torch.atan2(x[:, 1], x[:, 0]) - 0.25 * math.e
    k = torch.remainder(phase, 2 * math.pi) / (2 * math.pi / 5)
    assert (k - k.round()).abs().max().item() < 1e-6
    counts = torch.bincount(torch.remainder(k.round().long(), 5), minlength=5)
    assert all(_binomial_ok(int(c), N, 0.2) for c in counts)
    r = _draw("pinwheel").norm(dim=1)
    assert r.median().item() == pytest.approx(2.0, abs=0.05)


def test_checkerboard_only_black_squares_uniform():
    x = _draw("checkerboard")
    assert (x >= -4).all() and (x < 4).all()
    col, row = torch.floor(x[:, 0] / 2), torch.floor(x[:, 1] / 2)
    assert (torch.remainder(col + row, 2) == 0).all()
    cell = ((col + 2) * 4 + (row + 2)).long()
    counts = torch.bincount(cell, minlength=16)
    counts = counts[counts > 0]
    assert len(counts) == 8
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4
    # uniform within a square: the offset inside its 2x2 cell has mean 1 and var 1/3
    offset = x - 2 * torch.stack([col, row], dim=1)
    assert offset.mean(0).tolist() == pytest.approx([1.0, 1.0], abs=0.02)
    assert offset.var(0).tolist() == pytest.approx([1 / 3, 1 / 3], abs=0.02)


def test_two_spirals_curve():
    x = _draw("two_spirals", noise=0.0)
    t = 3 * x.norm(dim=1)
    assert t.max().item() <= 3 * math.pi + 1e-9
    curve = torch.stack([-t * t.cos(), t * t.sin()], dim=1) / 3
    err = torch.minimum((x - curve).norm(dim=1), (x + curve).norm(dim=1))
    assert err.max().item() < 1e-9
    # t = 3 pi sqrt(U): P(t <= 3 pi / 2) = 1/4
    assert _binomial_ok(int((t <= 1.5 * math.pi).sum()), N, 0.25)
