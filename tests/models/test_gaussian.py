"""Tests of genmod.models.gaussian against numpy, scipy and torch.distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal

from genmod.models.gaussian import COVARIANCE_TYPES, Gaussian

TYPES = list(COVARIANCE_TYPES)


def _data(n: int = 300, dim: int = 3, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Correlated, shifted, anisotropic data."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) + 2 * torch.eye(dim)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) @ mix.T + torch.arange(dim) - 1.5
    return x.to(dtype)


def _random_model(covariance: str, dim: int = 4, seed: int = 1) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    model = Gaussian(dim, covariance).double()
    with torch.no_grad():
        model.mean.copy_(torch.randn(dim, generator=g, dtype=torch.float64))
        shape = model.raw_scale.shape
        model.raw_scale.copy_(0.5 * torch.randn(shape, generator=g, dtype=torch.float64))
    return model


def _reference_covariance(model: Gaussian) -> np.ndarray:
    """Sigma from the documented parametrisation, written out independently."""
    raw = model.raw_scale.detach().numpy()
    d = model.dim
    if model.covariance_type == "full":
        scale = np.tril(raw, -1) + np.diag(np.exp(np.diag(raw)))
        return scale @ scale.T
    if model.covariance_type == "diag":
        return np.diag(np.exp(2 * raw))
    return np.exp(2 * float(raw)) * np.eye(d)


def _numpy_mle(x: np.ndarray, covariance: str) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False, bias=True)
    if covariance == "diag":
        cov = np.diag(np.var(x, axis=0))
    elif covariance == "isotropic":
        cov = np.var(x, axis=0).mean() * np.eye(x.shape[1])
    return mu, cov


def _state(model: Gaussian) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: Gaussian, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- density
@pytest.mark.parametrize("covariance", TYPES)
def test_log_prob_matches_scipy_and_torch(covariance: str) -> None:
    model = _random_model(covariance)
    cov = _reference_covariance(model)
    x = _data(50, 4, seed=2) * 2
    got = model.log_prob(x)
    assert got.shape == (50,) and got.dtype == torch.float64

    mu = model.mean.detach()
    ref_scipy = stats.multivariate_normal(mu.numpy(), cov).logpdf(x.numpy())
    ref_torch = MultivariateNormal(mu, covariance_matrix=torch.from_numpy(cov)).log_prob(x)
    np.testing.assert_allclose(got.detach().numpy(), ref_scipy, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(got.detach(), ref_torch, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.covariance.detach(), torch.from_numpy(cov))
    torch.testing.assert_close(model.scale_tril.detach(), torch.linalg.cholesky(model.covariance))


@pytest.mark.parametrize("covariance", TYPES)
def test_default_is_standard_normal_and_nll_follows(covariance: str) -> None:
    model = Gaussian(3, covariance)
    x = torch.randn(20, 3)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_prob(x), ref)
    torch.testing.assert_close(model.covariance, torch.eye(3))
    torch.testing.assert_close(model.nll(x), -ref.mean())
    torch.testing.assert_close(model.bpd(x), -ref.mean() / (3 * math.log(2.0)))


def test_upper_triangle_is_ignored_and_gets_no_gradient() -> None:
    model = _random_model("full")
    x = _data(30, 4)
    before = model.log_prob(x).detach()
    with torch.no_grad():
        model.raw_scale.add_(torch.triu(torch.full((4, 4), 7.0), 1))
    torch.testing.assert_close(model.log_prob(x).detach(), before)
    model.nll(x).backward()
    assert torch.all(torch.triu(model.raw_scale.grad, 1) == 0)
    rows, cols = torch.tril_indices(4, 4)
    assert torch.all(model.raw_scale.grad[rows, cols] != 0)


# ---------------------------------------------------------------- closed-form fit
@pytest.mark.parametrize("covariance", TYPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fit_equals_numpy_mle(covariance: str, dtype: torch.dtype) -> None:
    x = _data(500, 5, seed=3)
    mu_ref, cov_ref = _numpy_mle(x.numpy(), covariance)
    model = Gaussian(5, covariance).to(dtype)
    assert model.has_closed_form
    assert model.fit(x.to(dtype)) is model
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 2e-6}
    assert model.mean.dtype == dtype
    np.testing.assert_allclose(model.mean.detach().double().numpy(), mu_ref, **tol)
    np.testing.assert_allclose(model.covariance.detach().double().numpy(), cov_ref, **tol)


@pytest.mark.parametrize("covariance", TYPES)
def test_fit_is_the_likelihood_maximum(covariance: str) -> None:
    x = _data(200, 3, seed=4)
    model = Gaussian(3, covariance).double().fit(x)
    nll = model.nll(x)
    best = float(nll.detach())
    grad = torch.autograd.grad(nll, list(model.parameters()))
    for g in grad:
        assert float(g.abs().max()) < 1e-10
    mu, cov = _numpy_mle(x.numpy(), covariance)
    ref = -stats.multivariate_normal(mu, cov).logpdf(x.numpy()).mean()
    assert best == pytest.approx(ref, rel=1e-12)


def test_fit_floor_diag_and_isotropic() -> None:
    x = _data(400, 4, seed=5) * torch.tensor([0.01, 1.0, 3.0, 0.02], dtype=torch.float64)
    var = x.var(dim=0, unbiased=False)
    floor = 0.05
    diag = Gaussian(4, "diag", min_variance=floor).double().fit(x)
    torch.testing.assert_close(diag.covariance.diagonal(), var.clamp_min(floor))
    iso = Gaussian(4, "isotropic", min_variance=floor).double().fit(x)
    torch.testing.assert_close(iso.covariance, var.mean() * torch.eye(4, dtype=torch.float64))
    high = 2 * float(var.mean())
    floored = Gaussian(4, "isotropic", min_variance=high).double().fit(x)
    torch.testing.assert_close(floored.covariance, high * torch.eye(4, dtype=torch.float64))


def test_fit_floor_full_clamps_eigenvalues() -> None:
    x = _data(300, 4, seed=6)
    noise = 1e-2 * torch.randn(300, 1, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:, :1] + x[:, 1:2] + noise], dim=1)  # a nearly collinear 5th column
    cov = np.cov(x.numpy(), rowvar=False, bias=True)
    eigvals, eigvecs = np.linalg.eigh(cov)
    floor = 0.1
    assert eigvals.min() < floor < eigvals.max()
    expected = (eigvecs * np.maximum(eigvals, floor)) @ eigvecs.T
    model = Gaussian(5, "full", min_variance=floor).double().fit(x)
    got = model.covariance.detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(got).min() >= floor * (1 - 1e-10)
    # An inactive floor keeps the exact MLE.
    loose = Gaussian(5, "full", min_variance=eigvals.min() / 2).double().fit(x)
    np.testing.assert_allclose(loose.covariance.detach().numpy(), cov, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("covariance", TYPES)
def test_fit_single_row_with_floor(covariance: str) -> None:
    x = torch.tensor([[1.0, -2.0, 3.0]])
    model = Gaussian(3, covariance, min_variance=0.5).fit(x)
    torch.testing.assert_close(model.mean.detach(), x[0])
    torch.testing.assert_close(model.covariance.detach(), 0.5 * torch.eye(3))
    assert torch.isfinite(model.log_prob(x)).all()


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_fit_singular_without_floor_is_rejected(covariance: str) -> None:
    model = _random_model(covariance, dim=3)
    before = _state(model)
    x = _data(50, 3).clone()
    x[:, 1] = 4.0  # a constant column
    with pytest.raises(ValueError, match=r"\bx\b.*min_variance"):
        model.fit(x)
    _assert_same_state(model, before)


# ---------------------------------------------------------------- gradient training
@pytest.mark.parametrize("covariance", TYPES)
def test_lbfgs_reaches_closed_form_optimum(covariance: str) -> None:
    x = _data(200, 3, seed=7)
    optimum = Gaussian(3, covariance).double().fit(x).nll(x).item()
    model = Gaussian(3, covariance).double()
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=200, tolerance_grad=1e-12,
        tolerance_change=1e-14, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model.nll(x)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    trained = model.nll(x).item()
    assert trained == pytest.approx(optimum, abs=1e-4)
    assert trained >= optimum - 1e-9  # nothing beats the MLE
    _, cov = _numpy_mle(x.numpy(), covariance)
    np.testing.assert_allclose(model.covariance.detach().numpy(), cov, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("covariance", TYPES)
def test_sample_moments(covariance: str) -> None:
    model = _random_model(covariance, dim=3, seed=8)
    n = 40_000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, 3) and samples.dtype == torch.float64
    assert not samples.requires_grad
    cov = model.covariance.detach()
    std = cov.diagonal().sqrt()
    # Five standard errors for each mean and covariance entry.
    mean_err = (samples.mean(0) - model.mean.detach()).abs()
    assert torch.all(mean_err < 5 * std / math.sqrt(n))
    emp = torch.cov(samples.T, correction=0)
    cov_se = ((torch.outer(cov.diagonal(), cov.diagonal()) + cov.square()) / n).sqrt()
    assert torch.all((emp - cov).abs() < 5 * cov_se)


@pytest.mark.parametrize("covariance", TYPES)
def test_sample_repeatable_with_generator(covariance: str) -> None:
    model = _random_model(covariance, dim=3)
    a, b, c = (model.sample(100, torch.Generator().manual_seed(s)) for s in (123, 123, 124))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.sample(0).shape == (0, 3)


def test_rsample_is_differentiable() -> None:
    model = Gaussian(2, "full")
    draws = model.rsample(5, generator=torch.Generator().manual_seed(0))
    draws.sum().backward()
    torch.testing.assert_close(model.mean.grad, torch.full((2,), 5.0))
    assert model.raw_scale.grad is not None


@pytest.mark.parametrize("n", [-1, 2.5, True, "3"])
def test_sample_bad_n(n: object) -> None:
    with pytest.raises(ValueError, match=r"\bn\b"):
        Gaussian(2).sample(n)  # type: ignore[arg-type]


# ---------------------------------------------------------------- dtypes and bookkeeping
@pytest.mark.parametrize("covariance", TYPES)
def test_float64_end_to_end(covariance: str) -> None:
    x = _data(100, 3)
    model = Gaussian(3, covariance).double().fit(x)
    assert model.log_prob(x).dtype == torch.float64
    assert model.sample(4).dtype == torch.float64
    # A float32 model accepts float64 queries by promotion, and agrees to float32 precision.
    model32 = Gaussian(3, covariance).fit(x.float())
    torch.testing.assert_close(model32.log_prob(x).float(), model.log_prob(x).float())


@pytest.mark.parametrize("covariance", TYPES)
def test_from_state_round_trip(covariance: str) -> None:
    model = Gaussian(3, covariance, min_variance=1e-3).fit(_data(100, 3, dtype=torch.float32))
    assert model.hparams() == {"dim": 3, "covariance": covariance, "min_variance": 1e-3}
    clone = Gaussian.from_state(model.hparams(), model.state_dict())
    x = _data(10, 3, seed=9, dtype=torch.float32)
    torch.testing.assert_close(clone.log_prob(x), model.log_prob(x), rtol=0, atol=0)


def test_metrics() -> None:
    model = _random_model("full")
    cov = _reference_covariance(model)
    got = model.metrics()
    assert got["mean_log_std"] == pytest.approx(0.5 * np.log(np.diag(cov)).mean(), rel=1e-10)
    assert got["log_det_covariance"] == pytest.approx(np.linalg.slogdet(cov)[1], rel=1e-10)
    assert all(isinstance(v, float) for v in got.values())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": -2}, "dim"),
        ({"dim": 2.0}, "dim"),
        ({"dim": True}, "dim"),
        ({"dim": 2, "covariance": "spherical"}, "covariance"),
        ({"dim": 2, "min_variance": -1e-3}, "min_variance"),
        ({"dim": 2, "min_variance": float("nan")}, "min_variance"),
        ({"dim": 2, "min_variance": "0.1"}, "min_variance"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Gaussian(**kwargs)


def _bad_inputs() -> list:
    good = _data(10, 3, dtype=torch.float32)
    nan, inf = good.clone(), good.clone()
    nan[4, 1] = float("nan")
    inf[7, 0] = float("inf")
    return [
        pytest.param(nan, "row: 4", id="nan"),
        pytest.param(inf, "row: 7", id="inf"),
        pytest.param(good[:, :2], "dimension", id="wrong-dim"),
        pytest.param(good[0], "2-D", id="1-d"),
        pytest.param(good[None], "2-D", id="3-d"),
        pytest.param(good.to(torch.int64), "dtype", id="integer"),
        pytest.param(good.numpy(), "torch.Tensor", id="numpy"),
    ]


@pytest.mark.parametrize("covariance", TYPES)
@pytest.mark.parametrize(("x", "detail"), _bad_inputs())
@pytest.mark.parametrize("method", ["fit", "log_prob", "nll"])
def test_bad_x_is_rejected_and_model_unchanged(
    covariance: str, x: object, detail: str, method: str
) -> None:
    model = Gaussian(3, covariance).fit(_data(50, 3, dtype=torch.float32))
    before = _state(model)
    with pytest.raises(ValueError, match=r"\bx\b") as info:
        getattr(model, method)(x)
    assert detail in str(info.value)
    _assert_same_state(model, before)


@pytest.mark.parametrize("covariance", TYPES)
def test_fit_without_rows_is_rejected(covariance: str) -> None:
    model = _random_model(covariance, dim=3)
    before = _state(model)
    with pytest.raises(ValueError, match=r"\bx\b.*at least 1 row"):
        model.fit(torch.empty(0, 3, dtype=torch.float64))
    _assert_same_state(model, before)
    assert model.log_prob(torch.empty(0, 3, dtype=torch.float64)).shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("covariance", TYPES)
def test_cuda_matches_cpu(covariance: str) -> None:
    x = _data(200, 3)
    cpu = Gaussian(3, covariance).double().fit(x)
    gpu = Gaussian(3, covariance).double().cuda().fit(x.cuda())
    torch.testing.assert_close(gpu.log_prob(x.cuda()).cpu(), cpu.log_prob(x))
    draws = gpu.sample(10, generator=torch.Generator("cuda").manual_seed(0))
    assert draws.device.type == "cuda"
    with pytest.raises(ValueError, match=r"\bx\b"):
        gpu.log_prob(x)
    with pytest.raises(ValueError, match="generator"):
        gpu.sample(3, generator=torch.Generator().manual_seed(0))
