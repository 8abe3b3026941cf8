"""genmod.sklearn: scikit-learn's estimator checks, agreement with
sklearn.neighbors.KernelDensity, and use in GridSearchCV and Pipeline."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity as SklearnKDE
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from genmod.models.kde import KDE
from genmod.sklearn import GaussianDensity, KernelDensity

KERNELS = ["gaussian", "tophat", "epanechnikov", "exponential", "linear", "cosine"]

# A full-covariance Gaussian has no maximum-likelihood fit on 15 samples in 30 dimensions
# (the data this check uses): its covariance is singular. It passes with a floor (below).
GAUSSIAN_EXPECTED = {
    "check_sample_weight_equivalence_on_dense_data": "15 samples in 30-D: singular covariance"
}


def _checks(estimator, expected: dict | None = None) -> list[str]:
    results = check_estimator(estimator, on_fail=None, expected_failed_checks=expected)
    return [r["check_name"] for r in results if r["status"] == "failed"]


def test_check_estimator_kernel_density() -> None:
    assert _checks(KernelDensity()) == []


def test_check_estimator_gaussian_density() -> None:
    assert _checks(GaussianDensity(), GAUSSIAN_EXPECTED) == []
    with pytest.raises(ValueError, match="singular covariance"):
        rng = np.random.RandomState(42)
        GaussianDensity().fit(rng.rand(15, 30))


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator",
    [
        KernelDensity(kernel="cosine", bandwidth="scott"),
        KernelDensity(bandwidth=0.5, bandwidth_type="diagonal", dtype="float32"),
        GaussianDensity(min_variance=1e-3),
        GaussianDensity(covariance="diag"),
    ],
    ids=repr,
)
def test_check_estimator_other_settings(estimator) -> None:
    assert _checks(estimator) == []


def _brute_log_density(x, y, w, h, kernel) -> np.ndarray:
    """float64 brute force: log sum_j w_j k(r_ij / h) / (C_{k,D} h^D), C from quadrature."""
    from genmod.models.kernels import log_normalizer
    from genmod.ops.profiles import log_profile

    d2 = ((torch.tensor(x)[:, None] - torch.tensor(y)[None]) ** 2).sum(-1) / h**2
    lw = torch.tensor(np.log(w / w.sum()))
    out = torch.logsumexp(log_profile(d2, kernel) + lw, dim=1)
    return (out - log_normalizer(kernel, x.shape[1]) - x.shape[1] * math.log(h)).numpy()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dim", [1, 3])
def test_agrees_with_sklearn_kernel_density(kernel: str, dim: int) -> None:
    """Same bandwidth number, same kernel: sklearn's (exact, atol = rtol = 0) log density
    to 1e-6 relative wherever it is finite. Where no reference point lies within a compact
    kernel's support the density is 0: genmod says -inf (the brute force agrees), while
    sklearn's tree returns a finite floor near log(1e-15)."""
    rng = np.random.default_rng(dim)
    x, w = rng.normal(size=(300, dim)), rng.exponential(size=300)
    query = rng.normal(size=(60, dim)) * 1.5
    for h in (0.3, 1.2):
        ours = KernelDensity(kernel=kernel, bandwidth=h).fit(x, sample_weight=w)
        ref = SklearnKDE(kernel=kernel, bandwidth=h).fit(x, sample_weight=w).score_samples(query)
        got = ours.score_samples(query)
        brute = _brute_log_density(query, x, w, h, kernel)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(brute))
        np.testing.assert_allclose(got, brute, rtol=1e-10)
        empty = ~np.isfinite(brute)
        assert (ref[empty] < -30).all()
        np.testing.assert_allclose(got[~empty], ref[~empty], rtol=1e-6)
        unweighted = SklearnKDE(kernel=kernel, bandwidth=h).fit(x).score_samples(x[:20])
        got = KernelDensity(kernel=kernel, bandwidth=h).fit(x).score_samples(x[:20])
        np.testing.assert_allclose(got, unweighted, rtol=1e-6)


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_rules_follow_the_data_scale_unlike_sklearns(rule: str) -> None:
    """sklearn's rule is the factor alone; genmod's multiplies it by the RMS standard
    deviation: the same on standardised data, c times it for data scaled by c."""
    x = np.random.default_rng(0).normal(size=(400, 2))
    z = (x - x.mean(0)) / x.std(0, ddof=1)  # unit (ddof=1) variance per dimension
    ref = SklearnKDE(bandwidth=rule).fit(z)
    ours = KernelDensity(bandwidth=rule).fit(z)
    assert ours.bandwidth_ == pytest.approx(ref.bandwidth_, rel=1e-12)
    np.testing.assert_allclose(ours.score_samples(z[:10]), ref.score_samples(z[:10]), rtol=1e-6)
    assert KernelDensity(bandwidth=rule).fit(5.0 * z).bandwidth_ == pytest.approx(
        5.0 * ref.bandwidth_, rel=1e-12
    )


def test_full_bandwidth_is_scipys_gaussian_kde() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 2)) @ np.array([[3.0, 0.0], [2.0, 0.1]])
    w = rng.exponential(size=150)
    est = KernelDensity(bandwidth="silverman", bandwidth_type="full").fit(x, sample_weight=w)
    ref = stats.gaussian_kde(x.T, bw_method="silverman", weights=w)
    np.testing.assert_allclose(est.score_samples(x[:9]), ref.logpdf(x[:9].T), rtol=1e-12)
    assert est.bandwidth_ == pytest.approx(ref.factor, rel=1e-14)


def test_loo_bandwidth_is_genmods_search() -> None:
    x = np.random.default_rng(1).normal(size=(120, 2))
    est = KernelDensity(bandwidth="loo", kernel="epanechnikov").fit(x)
    kde = KDE(torch.tensor(x), kernel="epanechnikov").fit_bandwidth()
    assert est.bandwidth_ == pytest.approx(float(kde.bandwidth), rel=1e-12)


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")
def test_grid_search_and_pipeline() -> None:
    """A tophat's held-out score is -inf where a test point has no training point within h:
    GridSearchCV warns about it and ranks those settings last, as it should."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(240, 2)) * np.array([1.0, 50.0])
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), KernelDensity()),
        {"kerneldensity__bandwidth": [0.05, 0.3, 3.0], "kerneldensity__kernel": KERNELS[:2]},
        cv=3,
    ).fit(x)
    assert grid.best_params_["kerneldensity__bandwidth"] == 0.3
    # refitted pipeline: score_samples in standardised units, as sklearn's own KDE would be
    pipe = grid.best_estimator_
    scaled = pipe[0].transform(x[:7])
    ref = SklearnKDE(bandwidth=0.3, kernel=grid.best_params_["kerneldensity__kernel"])
    ref = ref.fit(pipe[0].transform(x)).score_samples(scaled)
    np.testing.assert_allclose(pipe.score_samples(x[:7]), ref, rtol=1e-6)
    assert pipe.score(x[:7]) == pytest.approx(float(ref.sum()), rel=1e-6)
    mean_scores = grid.cv_results_["mean_test_score"]
    assert np.isfinite(mean_scores).any()


def test_sample_is_seeded_and_numpy() -> None:
    x = np.random.default_rng(3).normal(size=(100, 3))
    for est in (KernelDensity(bandwidth=0.4, kernel="tophat").fit(x), GaussianDensity().fit(x)):
        a, b = est.sample(50, random_state=7), est.sample(50, random_state=7)
        assert isinstance(a, np.ndarray) and a.shape == (50, 3) and a.dtype == np.float64
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, est.sample(50, random_state=8))
        assert est.sample().shape == (1, 3)
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(2.5)


def test_gaussian_density_is_the_weighted_mle() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) + 1.0
    w = rng.exponential(size=300)
    est = GaussianDensity().fit(x, sample_weight=w)
    mean = w @ x / w.sum()
    cov = np.cov(x.T, aweights=w, bias=True)
    np.testing.assert_allclose(est.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(est.covariance_, cov, rtol=1e-10, atol=1e-12)
    ref = stats.multivariate_normal(mean, cov).logpdf(x[:9])
    np.testing.assert_allclose(est.score_samples(x[:9]), ref, rtol=1e-10)
    diag = GaussianDensity(covariance="diag").fit(x, sample_weight=w)
    np.testing.assert_allclose(diag.covariance_, np.diag(np.diag(cov)), rtol=1e-10, atol=1e-14)


def test_device_and_dtype_options() -> None:
    x = np.random.default_rng(5).normal(size=(80, 2))
    single = KernelDensity(bandwidth=0.5, dtype="float32").fit(x)
    assert single.model_.data.dtype == torch.float32
    double = KernelDensity(bandwidth=0.5).fit(x)
    np.testing.assert_allclose(single.score_samples(x), double.score_samples(x), rtol=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        KernelDensity(dtype="float16").fit(x)
    with pytest.raises(ValueError, match="device"):
        GaussianDensity(device="no-such-device").fit(x)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            KernelDensity(device="cuda").fit(x)


def test_missing_sklearn_gives_a_clear_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.base", None)
    monkeypatch.delitem(sys.modules, "genmod.sklearn")
    with pytest.raises(ImportError, match="genmod.sklearn needs scikit-learn"):
        importlib.import_module("genmod.sklearn")
