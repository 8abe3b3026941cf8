import math

import numpy as np
import pytest
import torch

from genmod.data import dequantize, fit_standardization, min_rows, split_sizes
from genmod.data.preprocess import MIN_TRAIN_ROWS, generator_for


@pytest.mark.parametrize(
    "n, val, test, expected",
    [
        (1797, 0.1, 0.1, (1437, 180, 180)),
        (10000, 0.1, 0.2, (7000, 1000, 2000)),
        (5, 0.1, 0.1, (3, 1, 1)),
        (4, 0.1, 0.1, (4, 0, 0)),
        (15, 0.1, 0.1, (11, 2, 2)),  # 1.5 rounds half up
    ],
)
def test_split_sizes(n, val, test, expected):
    sizes = split_sizes(n, val, test)
    assert sizes == expected and sum(sizes) == n


@pytest.mark.parametrize(
    "val, test, match",
    [
        (0.0, 0.1, "val_fraction"),
        (0.1, 1.0, "test_fraction"),
        (-0.1, 0.1, "val_fraction"),
        (0.5, 0.5, "below 1"),
        ("0.1", 0.1, "val_fraction"),
        (0.1, True, "test_fraction"),
    ],
)
def test_split_sizes_rejects_bad_fractions(val, test, match):
    with pytest.raises(ValueError, match=match):
        split_sizes(100, val, test)


@pytest.mark.parametrize("val, test", [(0.1, 0.1), (0.2, 0.05), (0.01, 0.3), (0.45, 0.45)])
def test_min_rows_is_the_smallest_valid_count(val, test):
    def valid(n):
        a, b, c = split_sizes(n, val, test)
        return a >= MIN_TRAIN_ROWS and b >= 1 and c >= 1

    k = min_rows(val, test)
    assert valid(k)
    assert not any(valid(n) for n in range(1, k))


def test_fit_standardization_matches_numpy_ddof0():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.5, 2.0, 10.0], size=(257, 3))
    mean, scale = fit_standardization(torch.from_numpy(x).float())
    assert mean.dtype == scale.dtype == torch.float64
    ref = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scale.numpy(), ref.std(0, ddof=0), rtol=1e-12)


def test_constant_dimensions_get_scale_one_and_standardise_to_zero():
    x = torch.tensor([[0.1, 5.0, 1.0], [0.1, 5.0, 2.0], [0.1, 5.0, 4.0]], dtype=torch.float32)
    mean, scale = fit_standardization(x)
    assert scale[:2].tolist() == [1.0, 1.0] and scale[2] > 0
    z = (x.double() - mean) / scale
    assert (z[:, :2] == 0).all()
    assert math.isfinite(float(torch.log(scale).sum()))
    one_row = fit_standardization(torch.tensor([[1.0, -2.0]]))
    assert one_row[1].tolist() == [1.0, 1.0] and one_row[0].tolist() == [1.0, -2.0]


def test_fit_standardization_rejects_empty():
    with pytest.raises(ValueError, match="train"):
        fit_standardization(torch.zeros(0, 3))


def test_dequantize_adds_seeded_unit_uniform_noise():
    x = torch.randint(0, 17, (400, 64)).double()
    a = dequantize(x, generator_for(0, "s"))
    b = dequantize(x, generator_for(0, "s"))
    c = dequantize(x, generator_for(0, "t"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    u = a - x
    assert (u >= 0).all() and (u < 1).all()
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.003)


def test_generator_streams_are_distinct_and_repeatable():
    draws = {(s, k): torch.rand(4, generator=generator_for(s, k)) for s in (0, 1) for k in "ab"}
    assert torch.equal(draws[0, "a"], torch.rand(4, generator=generator_for(0, "a")))
    values = [tuple(v.tolist()) for v in draws.values()]
    assert len(set(values)) == len(values)
