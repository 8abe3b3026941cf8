"""Bandwidth rules, leave-one-out densities and KDE.fit_bandwidth."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.nonparametric.kernel_density import KDEMultivariate

from genmod.models.bandwidth import effective_sample_size, rule_bandwidth
from genmod.models.kde import KDE
from genmod.models.kernels import KERNELS
from tests.models.test_kde_kernels import brute_log_density, log_profile, radial_log_normalizer


def _data(n=200, dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal"])
@pytest.mark.parametrize("rule", ["scott", "silverman"])
@pytest.mark.parametrize("weighted", [False, True])
def test_rules_are_scale_equivariant(rule, bandwidth_type, weighted):
    data, g = _data(150, 3)
    data = data * torch.tensor([0.2, 1.0, 7.0], dtype=torch.float64)
    w = torch.rand(150, generator=g, dtype=torch.float64) if weighted else None
    base = KDE(data, rule, weights=w, bandwidth_type=bandwidth_type).bandwidth.detach()
    for c in (1e-3, 0.5, 40.0):
        scaled = KDE(data * c + 5.0, rule, weights=w, bandwidth_type=bandwidth_type)
        torch.testing.assert_close(scaled.bandwidth.detach(), base * c, rtol=1e-12, atol=0)
    # Multiplying the weights by a constant changes nothing.
    if weighted:
        same = KDE(data, rule, weights=w * 9.0, bandwidth_type=bandwidth_type).bandwidth
        torch.testing.assert_close(same.detach(), base, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", ["scott", "silverman"])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_dimensional_rules_match_scipy_gaussian_kde(rule, weighted):
    data, g = _data(300)
    w = torch.rand(300, generator=g, dtype=torch.float64) + 0.05 if weighted else None
    ref = stats.gaussian_kde(
        data[:, 0].numpy(), bw_method=rule, weights=None if w is None else w.numpy()
    )
    h = KDE(data, rule, weights=w).bandwidth.item()
    assert h == pytest.approx(math.sqrt(ref.covariance[0, 0]), rel=1e-12)
    if weighted:
        assert effective_sample_size(w) == pytest.approx(ref.neff, rel=1e-12)


def test_isotropic_rule_uses_rms_std_and_diagonal_uses_per_dimension_std():
    data, _ = _data(400, 2)
    data = data * torch.tensor([1.0, 3.0], dtype=torch.float64)
    std = data.std(dim=0)
    factor = 400 ** (-1 / 6)
    iso = KDE(data, "scott").bandwidth.item()
    diag = KDE(data, "scott", bandwidth_type="diagonal").bandwidth.detach()
    assert iso == pytest.approx(factor * float(std.pow(2).mean().sqrt()), rel=1e-12)
    torch.testing.assert_close(diag, factor * std, rtol=1e-12, atol=0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_loo_log_prob_matches_brute_force_that_drops_self(kernel, weighted):
    data, g = _data(120, 2, seed=1)
    w = None
    if weighted:
        w = torch.rand(120, generator=g, dtype=torch.float64)
        w[5:10] = 0.0
    model = KDE(data, 0.9, kernel, weights=w)
    expected = brute_log_density(data, data, 0.9, kernel, w, leave_one_out=True)
    out = model.loo_log_prob()
    assert torch.equal(torch.isneginf(out), torch.isneginf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite], expected[finite], rtol=1e-10, atol=1e-10)
    rows = torch.tensor([3, 7, 100])
    torch.testing.assert_close(model.loo_log_prob(rows), out[rows], rtol=0, atol=0)


def test_loo_is_exact_when_the_self_term_dominates():
    # A tiny bandwidth: subtracting the self term from the full sum would cancel to garbage.
    data = torch.tensor([[0.0], [1.0], [1.3]], dtype=torch.float64)
    model = KDE(data, 0.05)
    expected = brute_log_density(data, data, 0.05, "gaussian", leave_one_out=True)
    torch.testing.assert_close(model.loo_log_prob(), expected, rtol=1e-12, atol=0)
    assert float(model.loo_log_prob()[0]) < -150


def test_training_loss_is_batch_loo_nll_and_matches_fit_objective():
    data, g = _data(80, 2, seed=2)
    model = KDE(data, 0.5)
    rows = torch.tensor([0, 4, 9, 33])
    loss = model.training_loss(data[rows], rows)
    torch.testing.assert_close(loss, -model.loo_log_prob(rows).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(model.training_loss(data[:5]), model.nll(data[:5]))
    w = torch.rand(80, generator=g, dtype=torch.float64)
    w[4] = 0.0
    weighted = KDE(data, 0.5, weights=w)
    scaled = 80 * w[rows] / w.sum()
    expected = -(scaled * weighted.loo_log_prob(rows)).sum() / 4
    torch.testing.assert_close(
        weighted.training_loss(data[rows], rows), expected, rtol=1e-12, atol=0
    )
    # Averaged over all rows it is the weighted LOO NLL that fit_bandwidth minimises.
    all_rows = torch.arange(80)
    full = -(w / w.sum() * weighted.loo_log_prob()).sum()
    torch.testing.assert_close(weighted.training_loss(data, all_rows), full, rtol=1e-12, atol=0)


def _loo_mean(model, h):
    with torch.no_grad():
        model.log_bandwidth.fill_(math.log(h))
        w = None if model.log_weights is None else model.log_weights.exp()
        loo = model.loo_log_prob()
        return float(loo.mean() if w is None else (w * loo).sum())


def _grid_argmax(f, lo, hi):
    """Dense two-stage grid search over log h: 1 % steps, then 0.01 % steps."""
    coarse = np.exp(np.linspace(math.log(lo), math.log(hi), int(math.log(hi / lo) / 0.01) + 1))
    best = coarse[int(np.argmax([f(h) for h in coarse]))]
    fine = best * np.exp(np.linspace(-0.012, 0.012, 241))
    return float(fine[int(np.argmax([f(h) for h in fine]))])


def _brute_objective(x, data, kernel, weights=None, leave_one_out=False):
    """float64 brute force of the fit objective as a function of h, from distances computed
    once: the weighted mean LOO log density of the reference set, or the mean log density
    of held-out ``x``."""
    dist = (x[:, None, :] - data[None, :, :]).norm(dim=-1)
    w = torch.ones(data.shape[0], dtype=torch.float64) if weights is None else weights
    log_w = torch.log(w)[None, :].expand(x.shape[0], -1)
    total = w.sum().expand(x.shape[0])
    if leave_one_out:
        log_w = log_w.masked_fill(torch.eye(x.shape[0], dtype=torch.bool), -math.inf)
        total = total - w
    norm = radial_log_normalizer(kernel, data.shape[1])
    p = w / w.sum() if leave_one_out else torch.full((x.shape[0],), 1.0 / x.shape[0])

    def f(h: float) -> float:
        terms = log_profile(dist / h, kernel) + log_w
        dens = torch.logsumexp(terms, 1) - total.log() - norm - data.shape[1] * math.log(h)
        return float((p * dens).sum())

    return f


def test_fit_bandwidth_matches_statsmodels_cv_ml():
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bw = KDEMultivariate(data=[x], var_type="c", bw="cv_ml").bw[0]
    h = KDE(torch.from_numpy(x).reshape(-1, 1)).fit_bandwidth().bandwidth.item()
    assert h == pytest.approx(bw, rel=1e-2)


@pytest.mark.parametrize(
    ("kernel", "weighted"), [("gaussian", False), ("gaussian", True), ("epanechnikov", False)]
)
def test_fit_bandwidth_matches_a_dense_grid_of_its_loo_objective(kernel, weighted):
    data, g = _data(150, 2, seed=4)
    w = torch.rand(150, generator=g, dtype=torch.float64) if weighted else None
    model = KDE(data, kernel=kernel, weights=w).fit_bandwidth()
    h = model.bandwidth.item()
    objective = _brute_objective(data, data, kernel, w, leave_one_out=True)
    expected = _grid_argmax(objective, h / 2, h * 2)
    assert h == pytest.approx(expected, rel=1e-3)


def test_fit_bandwidth_on_held_out_data_maximises_held_out_likelihood():
    data, g = _data(200, 1, seed=5)
    held = torch.randn(300, 1, generator=g, dtype=torch.float64) * 1.3
    model = KDE(data, kernel="exponential").fit_bandwidth(held)
    h = model.bandwidth.item()
    objective = _brute_objective(held, data, "exponential")
    assert h == pytest.approx(_grid_argmax(objective, h / 2, h * 2), rel=1e-3)
    loo_h = KDE(data, kernel="exponential").fit_bandwidth().bandwidth.item()
    assert abs(loo_h / h - 1) > 0.01  # a different objective, a different optimum


def test_naive_likelihood_prefers_zero_bandwidth_but_loo_optimum_is_interior():
    data, _ = _data(200, 1, seed=6)
    model = KDE(data, 1.0)
    naive = []
    for h in (1.0, 0.1, 0.01, 0.001):
        model.bandwidth = h
        naive.append(float(model.log_prob(data).mean()))
    assert all(b > a for a, b in zip(naive[:-1], naive[1:], strict=True))  # grows as h -> 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no optimum at a bound
        h_star = model.fit_bandwidth().bandwidth.item()
    assert 0.05 < h_star < 2.0
    best = _loo_mean(model, h_star)
    assert best > _loo_mean(model, h_star / 2) and best > _loo_mean(model, h_star * 2)


def test_fit_bandwidth_diagonal_beats_isotropic_on_anisotropic_data():
    data, _ = _data(200, 2, seed=7)
    data = data * torch.tensor([0.1, 3.0], dtype=torch.float64)
    iso = KDE(data).fit_bandwidth()
    diag = KDE(data, bandwidth_type="diagonal").fit_bandwidth()
    h = diag.bandwidth.detach()
    assert 10 < float(h[1] / h[0]) < 60
    assert float(diag.loo_log_prob().mean()) > float(iso.loo_log_prob().mean()) + 0.5
    # Stationary: the LOO objective's gradient in log h vanishes at the optimum.
    probe = KDE(data, h, bandwidth_type="diagonal", learn_bandwidth=True)
    probe.loo_log_prob().mean().backward()
    assert probe.log_bandwidth.grad.abs().max() < 1e-4


@pytest.mark.parametrize("kernel", KERNELS)
def test_fit_bandwidth_works_for_every_kernel_and_improves_on_the_rule(kernel):
    data, _ = _data(150, 2, seed=8)
    for bandwidth_type in ("isotropic", "diagonal"):
        model = KDE(data, kernel=kernel, bandwidth_type=bandwidth_type)
        before = float(model.loo_log_prob().mean())
        after = float(model.fit_bandwidth().loo_log_prob().mean())
        assert math.isfinite(after) and after >= before


def test_gradient_training_reaches_the_fit_bandwidth_optimum():
    data, _ = _data(150, 1, seed=9)
    target = KDE(data).fit_bandwidth(rtol=1e-4).bandwidth.item()
    model = KDE(data, 1.0, learn_bandwidth=True)
    assert not model.has_closed_form and KDE(data).has_closed_form
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    rows = torch.arange(150)
    for _ in range(300):
        opt.zero_grad()
        model.training_loss(data, rows).backward()
        opt.step()
    assert model.bandwidth.item() == pytest.approx(target, rel=1e-3)


def test_fit_bandwidth_respects_bounds_warns_at_a_bound_and_works_in_float32():
    data, _ = _data(200, 1, seed=10)
    with pytest.warns(RuntimeWarning, match="bound"):
        h = KDE(data).fit_bandwidth(bounds=(1.0, 5.0)).bandwidth.item()
    assert h == pytest.approx(1.0, rel=1e-3)
    free = KDE(data).fit_bandwidth().bandwidth.item()
    single = KDE(data.float()).fit_bandwidth()
    assert single.log_bandwidth.dtype == torch.float32
    assert single.bandwidth.item() == pytest.approx(free, rel=1e-3)
    dup = torch.cat([data, data])  # all duplicated: the LOO likelihood grows as h -> 0
    with pytest.warns(RuntimeWarning, match="lower bound"):
        KDE(dup).fit_bandwidth()


def test_rule_rejects_data_without_spread():
    with pytest.raises(ValueError, match="bandwidth"):
        rule_bandwidth(torch.ones(10, 2), "scott")
    with pytest.raises(ValueError, match="dimension 1"):
        KDE(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), "scott", bandwidth_type="diagonal")
    with pytest.raises(ValueError, match="bandwidth"):
        KDE(torch.randn(5, 1), "scott", weights=torch.tensor([0.0, 0, 1, 0, 0]))


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "exponential"])
def test_float32_search_takes_at_most_30_kernel_calls_and_finds_the_float64_optimum(
    kernel, monkeypatch
):
    """Issue 12: a coarse grid then Brent's method in float32, a float64 parabola to finish;
    the optimum is a dense float64 grid's to rtol."""
    import genmod.models.kde as kde_module

    data, _ = _data(600, 2, seed=3)
    calls = {"float32": 0, "float64": 0}
    original = kde_module.pairwise_logsumexp

    def counted(x, *args, **kwargs):
        calls[str(x.dtype).removeprefix("torch.")] += 1
        return original(x, *args, **kwargs)

    monkeypatch.setattr(kde_module, "pairwise_logsumexp", counted)
    model = KDE(data.float(), kernel=kernel).fit_bandwidth(rtol=1e-3)
    assert calls["float32"] + calls["float64"] <= 30, calls
    assert calls["float64"] <= 10, calls
    h = float(model.bandwidth)
    monkeypatch.setattr(kde_module, "pairwise_logsumexp", original)
    dense = torch.linspace(math.log(h) - 0.02, math.log(h) + 0.02, 161, dtype=torch.float64)
    reference = KDE(data.float().double(), kernel=kernel)
    values = []
    for t in dense:
        reference.bandwidth = float(t.exp())
        values.append(float(reference.loo_log_prob().mean()))
    best = float(dense[int(torch.tensor(values, dtype=torch.float64).argmax())].exp())
    assert h == pytest.approx(best, rel=1e-3)
