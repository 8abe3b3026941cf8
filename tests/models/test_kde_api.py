"""KDE sampling, state, hyper-parameters and bad-input handling."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import pytest
import torch

from genmod.models.kde import KDE
from genmod.models.kernels import KERNELS, kernel_variance

COMPACT = ("tophat", "epanechnikov", "linear", "cosine")


def _data(n=50, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(n, dim, generator=g, dtype=torch.float64) * torch.arange(1.0, dim + 1)
    return data, torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_moments_match_weighted_data_plus_kernel_covariance(kernel, bandwidth_type):
    data, w = _data()
    h = torch.tensor(0.3) if bandwidth_type == "isotropic" else torch.tensor([0.2, 0.5])
    model = KDE(data, h, kernel, weights=w, bandwidth_type=bandwidth_type)
    n = 100_000
    s = model.sample(n, torch.Generator().manual_seed(1))
    assert s.shape == (n, 2) and s.dtype == torch.float64
    p = w / w.sum()
    mean = p @ data
    centred = data - mean
    h2 = (h.double() ** 2).expand(2) * kernel_variance(kernel, 2)
    cov = (p[:, None] * centred).T @ centred + torch.diag(h2)
    se = (torch.diag(cov) / n).sqrt()
    assert ((s.mean(0) - mean).abs() < 5 * se).all()
    # Standard error of each covariance entry from the spread of the centred products.
    c = s - s.mean(0)
    products = c[:, :, None] * c[:, None, :]
    se_cov = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() < 5 * se_cov).all()


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal"])
@pytest.mark.parametrize("kernel", COMPACT)
def test_compact_kernel_samples_stay_within_h_of_a_reference_point(kernel, bandwidth_type):
    data, _ = _data(30, 3)
    h = torch.tensor(0.05) if bandwidth_type == "isotropic" else torch.tensor([0.02, 0.05, 0.1])
    model = KDE(data, h, kernel, bandwidth_type=bandwidth_type)
    s = model.sample(5000, torch.Generator().manual_seed(2))
    r = ((s[:, None, :] - data[None, :, :]) / h.double()).norm(dim=-1).min(dim=1).values
    assert (r <= 1.0 + 1e-9).all()
    assert (r > 0.5).float().mean() > 0.2  # the draws fill the support, not just the centre


def test_samples_pick_reference_points_in_proportion_to_weight():
    data = torch.arange(5.0, dtype=torch.float64).reshape(5, 1) * 10
    w = torch.tensor([1.0, 0.0, 3.0, 6.0, 0.0], dtype=torch.float64)
    s = KDE(data, 1e-3, weights=w).sample(20_000, torch.Generator().manual_seed(3))
    counts = torch.bincount((s[:, 0] / 10).round().long(), minlength=5).double()
    assert counts[1] == 0 and counts[4] == 0
    expected = 20_000 * w / w.sum()
    chi2 = float(((counts - expected)[w > 0] ** 2 / expected[w > 0]).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("kernel", KERNELS)
def test_sampling_is_seeded(kernel):
    data, w = _data()
    model = KDE(data, 0.4, kernel, weights=w)
    a = model.sample(64, torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    b = model.sample(64, torch.Generator().manual_seed(7))
    c = model.sample(64, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.sample(0).shape == (0, 2)
    assert KDE(data.float(), 0.4, kernel).sample(3).dtype == torch.float32


@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal"])
@pytest.mark.parametrize("weighted", [False, True])
def test_from_state_round_trip_without_recomputing_the_rule(weighted, bandwidth_type, learn):
    data, w = _data(40, 3)
    model = KDE(
        data.float(), "scott", "epanechnikov", w if weighted else None, bandwidth_type, learn
    )
    with torch.no_grad():
        model.log_bandwidth.mul_(1.3)  # no rule gives this value
    hparams = model.hparams()
    json.dumps(hparams)  # plain Python values
    assert set(model.state_dict()) == {"data", "log_bandwidth"} | (
        {"log_weights"} if weighted else set()
    )
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    rebuilt = KDE.from_state(hparams, state)
    assert rebuilt.learn_bandwidth == learn and rebuilt.has_closed_form == (not learn)
    assert rebuilt.log_bandwidth.requires_grad == learn
    torch.testing.assert_close(rebuilt.bandwidth, model.bandwidth, rtol=0, atol=0)
    x = torch.randn(10, 3)
    torch.testing.assert_close(rebuilt.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    # hparams alone (with data) rebuild the same model too.
    again = KDE(data.float(), weights=w if weighted else None, **hparams)
    torch.testing.assert_close(again.log_prob(x), model.log_prob(x), rtol=1e-6, atol=1e-6)


def test_metrics_dtype_conversion_and_repr():
    data, _ = _data(40, 2)
    diag = KDE(data, [0.2, 0.6], bandwidth_type="diagonal")
    assert diag.metrics() == {"bandwidth": pytest.approx(0.4)}
    model = KDE(data.float(), 0.5)
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(model.double().log_prob(x), KDE(data, 0.5).log_prob(x))
    assert model.log_prob(x.float()).dtype == torch.float64  # queries cast to the model dtype
    assert "kernel='gaussian'" in repr(model) and "num_points=40" in repr(model)
    model.bandwidth = "silverman"
    assert model.bandwidth.item() == pytest.approx(KDE(data, "silverman").bandwidth.item())


def test_importing_the_kde_loads_torch_only():
    code = (
        "import sys, genmod.models.kde, genmod.models.bandwidth, genmod.models.kernels\n"
        "bad = [m for m in ('lightning', 'hydra', 'tensorboard', 'matplotlib', 'scipy', "
        "'sklearn', 'statsmodels') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _model():
    data, w = _data(20, 2)
    return KDE(data, 0.5, "epanechnikov", weights=w, bandwidth_type="diagonal")


NAN_DATA = torch.randn(6, 2).index_put_(
    (torch.tensor([3]), torch.tensor([1])), torch.tensor(math.nan)
)

CONSTRUCTOR_CASES = [
    ({"data": NAN_DATA}, r"data.*row: 3"),
    ({"data": torch.tensor([[0.0, math.inf]])}, r"data.*NaN or Inf"),
    ({"data": torch.empty(0, 2)}, "data must hold at least one"),
    ({"data": torch.randn(5)}, "data must be 2-D"),
    ({"data": torch.ones(5, 2, dtype=torch.long)}, "data must have a floating dtype"),
    ({"data": [[0.0, 1.0]]}, "data must be a torch.Tensor"),
    ({"bandwidth": 0.0}, "bandwidth must be finite and > 0"),
    ({"bandwidth": -1.0}, "bandwidth must be finite and > 0"),
    ({"bandwidth": math.nan}, "bandwidth must be finite and > 0"),
    ({"bandwidth": math.inf}, "bandwidth must be finite and > 0"),
    ({"bandwidth": "scot"}, "bandwidth must be a positive number or one of"),
    ({"bandwidth": True}, "bandwidth must be"),
    ({"bandwidth": [0.1, 0.2]}, "bandwidth for bandwidth_type='isotropic'"),
    ({"bandwidth": [0.1, 0.2, 0.3], "bandwidth_type": "diagonal"}, "1 or 2 values"),
    ({"weights": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0])}, r"weights.*row: 1"),
    ({"weights": torch.zeros(6)}, "weights must not all be zero"),
    ({"weights": torch.ones(5)}, r"weights must have shape \[6\]"),
    ({"weights": torch.tensor([1.0, 1.0, math.nan, 1.0, 1.0, 1.0])}, r"weights.*row: 2"),
    ({"weights": torch.ones(6, 1)}, "weights must have shape"),
    ({"kernel": "triangle"}, "kernel must be one of"),
    ({"bandwidth_type": "block"}, "bandwidth_type must be one of"),
]


@pytest.mark.parametrize(("kwargs", "match"), CONSTRUCTOR_CASES)
def test_constructor_rejects_bad_input(kwargs, match):
    args = {"data": torch.randn(6, 2), **kwargs}
    with pytest.raises(ValueError, match=match):
        KDE(**args)


CALL_CASES = [
    (lambda m: m.log_prob(torch.randn(4, 3)), "x has dimension 3"),
    (lambda m: m.log_prob(NAN_DATA), r"x.*row: 3"),
    (lambda m: m.log_prob(torch.randn(4)), "x must be 2-D"),
    (lambda m: m.log_prob(torch.ones(4, 2, dtype=torch.int32)), "x must have a floating"),
    (lambda m: m.nll(torch.randn(4, 1)), "x has dimension 1"),
    (lambda m: m.loo_log_prob(torch.tensor([0.0])), "index must have an integer dtype"),
    (lambda m: m.loo_log_prob(torch.tensor([20])), r"index must lie in \[0, 20\)"),
    (lambda m: m.loo_log_prob(torch.tensor([[1]])), "index must be a 1-D"),
    (lambda m: m.training_loss(torch.randn(3, 2), torch.tensor([0, 1])), "index has 2 entries"),
    (lambda m: m.fit_bandwidth(torch.randn(5, 3)), "held_out has dimension 3"),
    (lambda m: m.fit_bandwidth(NAN_DATA), r"held_out.*row: 3"),
    (lambda m: m.fit_bandwidth(bounds=(1.0, 0.5)), "bounds must satisfy"),
    (lambda m: m.fit_bandwidth(bounds=(-1.0, 0.5)), "bounds must satisfy"),
    (lambda m: m.fit_bandwidth(bounds=([0.1] * 3, 1.0)), "bounds must hold"),
    (lambda m: m.fit_bandwidth(bounds=3.0), "bounds must be a pair"),
    (lambda m: m.fit_bandwidth(rtol=0.0), "rtol"),
    (lambda m: m.sample(-1), "n must be a non-negative int"),
    (lambda m: setattr(m, "bandwidth", -0.1), "bandwidth must be finite and > 0"),
    (lambda m: setattr(m, "bandwidth", "bogus"), "bandwidth must be a positive number"),
]


@pytest.mark.parametrize(("call", "match"), CALL_CASES)
def test_rejected_calls_raise_and_leave_the_model_unchanged(call, match):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        call(model)
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_leave_one_out_needs_two_points_with_weight():
    single = KDE(torch.randn(1, 2), 0.5)
    with pytest.raises(ValueError, match="at least two reference points"):
        single.loo_log_prob()
    lonely = KDE(torch.randn(3, 2), 0.5, weights=torch.tensor([0.0, 1.0, 0.0]))
    assert torch.isfinite(lonely.loo_log_prob(torch.tensor([0, 2]))).all()
    before = lonely.log_bandwidth.clone()
    with pytest.raises(ValueError, match="weights: leave-one-out needs a second point"):
        lonely.fit_bandwidth()
    assert torch.equal(lonely.log_bandwidth, before)
