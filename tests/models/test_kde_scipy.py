"""scipy's gaussian_kde features on KDE: the full bandwidth, set_bandwidth, marginal and box
probabilities, each against scipy.stats.gaussian_kde on the same data and weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from genmod.models.io import load_model
from genmod.models.kde import KDE


def _data(n: int = 200, dim: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) + 1.5 * np.eye(dim)
    return rng.normal(size=(n, dim)) @ mix.T + 2.0, rng.exponential(size=n)


def _kde(x, rule, weights=None, **kw) -> KDE:
    w = None if weights is None else torch.tensor(weights)
    return KDE(torch.tensor(x), rule, weights=w, **kw)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("rule", ["scott", "silverman", 0.4])
def test_full_bandwidth_is_scipys_gaussian_kde(dim: int, weighted: bool, rule) -> None:
    x, w = _data(dim=dim)
    w = w if weighted else None
    ref = stats.gaussian_kde(x.T, bw_method=rule, weights=w)
    kde = _kde(x, rule, w, bandwidth_type="full")
    query = np.random.default_rng(5).normal(size=(40, dim)) * 3
    got = kde.log_prob(torch.tensor(query)).numpy()
    np.testing.assert_allclose(got, ref.logpdf(query.T), rtol=1e-12, atol=1e-12)
    assert float(kde.bandwidth) == pytest.approx(ref.factor, rel=1e-14)
    np.testing.assert_allclose(kde.bandwidth_matrix.numpy(), ref.covariance, rtol=1e-12)


@pytest.mark.parametrize("rule", ["scott", "loo"])
def test_full_bandwidth_is_affine_equivariant(rule: str) -> None:
    """A = scale x rotation: log p_A(A x + b) = log p(x) - log |det A|, and the factor h
    (a rule's or the leave-one-out search's) does not change."""
    x, _ = _data(n=150)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    a = q @ np.diag([0.01, 3.0, 100.0])
    y = x @ a.T + np.array([5.0, -1.0, 1e3])
    start = "scott" if rule == "loo" else rule
    kx, ky = _kde(x, start, bandwidth_type="full"), _kde(y, start, bandwidth_type="full")
    if rule == "loo":
        kx.fit_bandwidth(rtol=1e-6)
        ky.fit_bandwidth(rtol=1e-6)
    assert float(ky.bandwidth) == pytest.approx(float(kx.bandwidth), rel=1e-5)
    query = x[:20] + 0.3
    lx = kx.log_prob(torch.tensor(query))
    ly = ky.log_prob(torch.tensor(query @ a.T + np.array([5.0, -1.0, 1e3])))
    log_det = math.log(abs(np.linalg.det(a)))
    torch.testing.assert_close(ly, lx - log_det, rtol=1e-5, atol=1e-8)


def test_full_loo_search_finds_the_brute_force_optimum() -> None:
    x, w = _data(n=120, dim=2)
    kde = _kde(x, "scott", w, bandwidth_type="full").fit_bandwidth(rtol=1e-6)
    cov = np.cov(x.T, aweights=w)
    wn = w / w.sum()

    def loo(h: float) -> float:
        c = h * h * cov
        dens = stats.multivariate_normal(np.zeros(2), c).pdf(x[:, None, :] - x[None, :, :])
        np.fill_diagonal(dens, 0.0)
        p = dens @ wn / (1.0 - wn)
        return float(wn @ np.log(p))

    h = float(kde.bandwidth)
    assert loo(h) >= max(loo(h * 1.01), loo(h / 1.01))
    assert float((wn * kde.loo_log_prob().numpy()).sum()) == pytest.approx(loo(h), rel=1e-10)


def test_full_bandwidth_learns_by_gradient_and_float32_agrees() -> None:
    x, _ = _data(n=100, dim=2)
    kde = _kde(x, "scott", bandwidth_type="full", learn_bandwidth=True)
    loss = kde.training_loss(torch.tensor(x), torch.arange(100))
    loss.backward()
    assert torch.isfinite(kde.log_bandwidth.grad) and float(kde.log_bandwidth.grad) != 0.0
    single = _kde(x.astype(np.float32), "scott", bandwidth_type="full")
    q = torch.tensor(x[:30] + 0.1)
    kde.requires_grad_(False)
    err = (single.log_prob(q.float()).double() - kde.log_prob(q)).abs() / kde.log_prob(q).abs()
    assert float(err.max()) < 1e-4


@pytest.mark.parametrize("kernel", ["tophat", "epanechnikov", "exponential"])
def test_full_bandwidth_with_other_kernels_is_the_whitened_kde(kernel: str) -> None:
    """Any kernel: K_H(u) = k(||L^-1 u|| / h) / (C h^D |det L|), checked by brute force,
    with the gradient in log h against finite differences and samples within the support."""
    from genmod.models.kernels import log_normalizer
    from genmod.ops.profiles import log_profile

    x, w = _data(n=150, dim=2)
    kde = _kde(x, 0.8, w, kernel=kernel, bandwidth_type="full", learn_bandwidth=True)
    tril = np.linalg.cholesky(np.cov(x.T, aweights=w))
    query = x[:30] + 0.2

    def brute(h: float) -> torch.Tensor:
        u = np.linalg.solve(tril, (query[:, None, :] - x[None, :, :]).reshape(-1, 2).T).T
        d2 = torch.tensor((u**2).sum(1).reshape(30, 150) / h**2)
        lw = torch.tensor(np.log(w / w.sum()))
        log_det = float(np.log(np.diag(tril)).sum())
        out = torch.logsumexp(log_profile(d2, kernel) + lw, dim=1)
        return out - log_normalizer(kernel, 2) - 2 * math.log(h) - log_det

    got = kde.log_prob(torch.tensor(query))
    torch.testing.assert_close(got.detach(), brute(0.8), rtol=1e-10, atol=0)
    got.sum().backward()
    step = 1e-6
    numeric = (brute(0.8 * math.exp(step)) - brute(0.8 * math.exp(-step))).sum() / (2 * step)
    assert float(kde.log_bandwidth.grad) == pytest.approx(float(numeric), rel=1e-6)
    if kernel != "exponential":
        draws = kde.sample(500, generator=torch.Generator().manual_seed(0)).numpy()
        white = np.linalg.solve(tril, (draws[:, None, :] - x[None]).reshape(-1, 2).T).T
        nearest = np.sqrt((white**2).sum(1)).reshape(500, 150).min(1)
        assert nearest.max() <= 0.8 * (1 + 1e-9)


def test_set_bandwidth_as_scipy() -> None:
    x, w = _data(dim=2)
    ref = stats.gaussian_kde(x.T, weights=w)
    kde = _kde(x, "scott", w, bandwidth_type="full")
    query = torch.tensor(x[:10] * 1.1)
    for value in ["silverman", 0.25, lambda k: 0.5 * k.neff ** (-1.0 / 6)]:
        ref.set_bandwidth(value)
        kde.set_bandwidth((lambda k: 0.5 * (ref.neff) ** (-1.0 / 6)) if callable(value) else value)
        assert float(kde.bandwidth) == pytest.approx(ref.factor, rel=1e-14)
        np.testing.assert_allclose(kde.log_prob(query).numpy(), ref.logpdf(query.numpy().T))
    with pytest.raises(ValueError, match="bandwidth"):
        kde.set_bandwidth(-1.0)
    assert float(kde.bandwidth) == pytest.approx(ref.factor, rel=1e-14)


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal", "full"])
@pytest.mark.parametrize("dims", [[0], [2, 0], -1])
def test_marginal_is_the_marginal_density(bandwidth_type: str, dims) -> None:
    x, w = _data(dim=3)
    bandwidth = [0.3, 0.5, 0.7] if bandwidth_type == "diagonal" else 0.4
    kde = _kde(x, bandwidth, w, bandwidth_type=bandwidth_type)
    sub = kde.marginal(dims)
    index = [dims] if isinstance(dims, int) else dims
    query = np.random.default_rng(2).normal(size=(25, len(index))) * 2 + 2
    # brute force: a mixture of normals N(y_j[index], H[index, index])
    h = kde.bandwidth_matrix.numpy()[np.ix_(index, index)]
    dens = stats.multivariate_normal(np.zeros(len(index)), h).pdf(
        query[:, None, :] - x[None, :, index]
    )
    ref = np.log(dens.reshape(25, -1) @ (w / w.sum()))
    np.testing.assert_allclose(sub.log_prob(torch.tensor(query)).numpy(), ref, rtol=1e-10)
    if bandwidth_type == "full":
        scipy_sub = stats.gaussian_kde(x.T, bw_method=0.4, weights=w).marginal(dims)
        np.testing.assert_allclose(
            sub.log_prob(torch.tensor(query)).numpy(), scipy_sub.logpdf(query.T), rtol=1e-12
        )


def _brute_box(x, w, cov, low, high) -> float:
    """Sum over kernels of the box probability: exact products for a diagonal ``cov``, else
    by quadrature (dim 2) over the first coordinate of exact conditional intervals."""
    wn = w / w.sum()
    if np.count_nonzero(cov - np.diag(np.diag(cov))) == 0:
        sd = np.sqrt(np.diag(cov))
        p = special.ndtr((high - x) / sd) - special.ndtr((low - x) / sd)
        return float(wn @ p.prod(1))
    s1, beta = math.sqrt(cov[0, 0]), cov[1, 0] / cov[0, 0]
    s = math.sqrt(cov[1, 1] - beta * cov[0, 1])
    total = 0.0
    for y, wj in zip(x, wn, strict=True):

        def f(t, y=y):
            m = y[1] + beta * (t - y[0])
            dens = math.exp(-0.5 * ((t - y[0]) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
            return dens * (special.ndtr((high[1] - m) / s) - special.ndtr((low[1] - m) / s))

        lo, hi = max(low[0], y[0] - 12 * s1), min(high[0], y[0] + 12 * s1)
        total += wj * integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-12)[0] if lo < hi else 0
    return total


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "diagonal", "full"])
def test_integrate_box_against_float64_integration_and_scipy(bandwidth_type: str) -> None:
    x, w = _data(n=40, dim=2)
    bandwidth = [0.3, 0.6] if bandwidth_type == "diagonal" else 0.5
    kde = _kde(x, bandwidth, w, bandwidth_type=bandwidth_type)
    cov = kde.bandwidth_matrix.numpy()
    for low, high in [([0.0, 1.0], [2.0, 3.5]), ([-np.inf, 1.5], [2.5, np.inf])]:
        low, high = np.array(low), np.array(high)
        got = float(kde.integrate_box(low, high))
        assert got == pytest.approx(_brute_box(x, w, cov, low, high), abs=1e-10)
        if bandwidth_type == "full":
            ref = stats.gaussian_kde(x.T, bw_method=0.5, weights=w)
            assert got == pytest.approx(ref.integrate_box(low, high, rng=0), abs=1e-5)
    assert float(kde.integrate_box([-np.inf] * 2, [np.inf] * 2)) == pytest.approx(1.0, abs=1e-14)
    assert float(kde.integrate_box([1.0, 1.0], [0.0, 2.0])) == 0.0


@pytest.mark.parametrize("bandwidth_type", ["isotropic", "full"])
def test_zero_weights_are_dropped_rows(bandwidth_type: str) -> None:
    """A zero-weight row changes neither the covariance, the density, the box probability
    nor the rebuilt model."""
    x, w = _data(n=60, dim=3)
    w[::4] = 0.0
    full = _kde(x, "scott", w, bandwidth_type=bandwidth_type)
    kept = _kde(x[w > 0], "scott", w[w > 0], bandwidth_type=bandwidth_type)
    q = torch.tensor(x[:8] + 0.3)
    torch.testing.assert_close(full.log_prob(q), kept.log_prob(q), rtol=1e-10, atol=0)
    low, high = [0.0, 0.0, -np.inf], [3.0, 2.0, 2.0]
    assert float(full.integrate_box(low, high)) == pytest.approx(
        float(kept.integrate_box(low, high)), abs=1e-12
    )
    rebuilt = KDE.from_state(full.hparams(), full.state_dict())
    torch.testing.assert_close(rebuilt.log_prob(q), full.log_prob(q), rtol=0, atol=0)


def test_integrate_box_full_three_dims_to_1e7() -> None:
    """The full D = 3 case, per kernel by the exact-bivariate Gauss-Legendre method, against
    scipy's dblquad of each kernel (float64, 1e-13) and scipy's own (looser) answer."""
    x, w = _data(n=6, dim=3, seed=3)
    ref_kde = stats.gaussian_kde(x.T, weights=w)
    kde = _kde(x, "scott", w, bandwidth_type="full")
    low, high = np.array([0.0, -1.0, 1.0]), np.array([3.0, 4.0, np.inf])
    cov = kde.bandwidth_matrix.numpy()
    from tests.models.test_mvn import _dblquad_box

    wn = w / w.sum()
    brute = sum(wj * _dblquad_box(low - y, high - y, cov) for y, wj in zip(x, wn, strict=True))
    got = float(kde.integrate_box(low, high))
    assert got == pytest.approx(brute, abs=1e-9)
    assert got == pytest.approx(ref_kde.integrate_box(low, high, rng=0), abs=1e-5)


def test_integrate_box_1d_is_scipys() -> None:
    x, w = _data(dim=1)
    ref = stats.gaussian_kde(x.T, weights=w)
    kde = _kde(x, "scott", w, bandwidth_type="full")
    for low, high in [(-1.0, 2.5), (3.0, 40.0), (-np.inf, 0.0)]:
        got = float(kde.integrate_box_1d(low, high))
        assert got == pytest.approx(ref.integrate_box_1d(low, high), rel=1e-12, abs=1e-15)


def test_full_checkpoint_round_trip(tmp_path) -> None:
    x, w = _data(dim=2)
    kde = _kde(x, "silverman", w, bandwidth_type="full").set_bandwidth(0.37)
    entry = {
        "format": 1,
        "model_class": "KDE",
        "hparams": kde.hparams(),
        "state_dict": kde.state_dict(),
        "mean": torch.zeros(2, dtype=torch.float64),
        "scale": torch.ones(2, dtype=torch.float64),
    }
    assert "data_scale_tril" in entry["state_dict"]
    torch.save({"genmod": entry}, tmp_path / "full.ckpt")
    loaded = load_model(tmp_path / "full.ckpt").model
    assert loaded.bandwidth_type == "full"
    torch.testing.assert_close(loaded.data_scale_tril, kde.data_scale_tril, rtol=0, atol=0)
    q = torch.tensor(x[:10] - 0.5)
    torch.testing.assert_close(loaded.log_prob(q), kde.log_prob(q), rtol=0, atol=0)
    draws = loaded.sample(4000, generator=torch.Generator().manual_seed(0))
    # Cov of the samples = weighted (ddof=0) data covariance + H
    wn = w / w.sum()
    centred = x - wn @ x
    expected = (centred * wn[:, None]).T @ centred + kde.bandwidth_matrix.numpy()
    np.testing.assert_allclose(np.cov(draws.numpy().T), expected, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: KDE(torch.ones(5, 2).double(), 0.5, bandwidth_type="full"), "positive-definite"),
        (lambda: KDE(torch.randn(2, 3).double(), 0.5, bandwidth_type="full"), "positive-definite"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5, kernel="tophat").marginal(0), "gaussian"),
        (
            lambda: _kde(*_data(dim=2)[:1], 0.5, kernel="linear").integrate_box([0, 0], [1, 1]),
            "gaussian",
        ),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).marginal([0, 0]), "repeat"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).marginal(2), "out of range"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).marginal([]), "at least one"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).integrate_box([0, 0, 0], [1, 1, 1]), "low must"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).integrate_box([0, 0], [1, math.nan]), "high"),
        (lambda: _kde(*_data(dim=2)[:1], 0.5).integrate_box_1d(0, 1), "one-dimensional"),
        (lambda: _kde(*_data(dim=2)[:1], [0.5, 0.2], bandwidth_type="full"), "one value"),
    ],
)
def test_bad_input_names_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
