"""The torch.distributions bridge of Gaussian: loc, covariance_matrix, entropy, to_distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import MultivariateNormal

from genmod.models.gaussian import COVARIANCE_TYPES, Gaussian


def _fitted(covariance: str, dim: int = 3) -> Gaussian:
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) + 2 * torch.eye(dim)
    x = torch.randn(400, dim, generator=g, dtype=torch.float64) @ mix.T + 1.5
    return Gaussian(dim, covariance).double().fit(x)


@pytest.mark.parametrize("covariance", COVARIANCE_TYPES)
def test_to_distribution_is_the_same_density(covariance: str) -> None:
    model = _fitted(covariance)
    dist = model.to_distribution()
    assert isinstance(dist, MultivariateNormal)
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dist.log_prob(x), model.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dist.mean, model.loc)
    torch.testing.assert_close(dist.covariance_matrix, model.covariance_matrix)
    torch.testing.assert_close(dist.entropy(), model.entropy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCE_TYPES)
def test_entropy_closed_form_and_scipy(covariance: str) -> None:
    model = _fitted(covariance).requires_grad_(False)
    cov = model.covariance_matrix.detach().numpy()
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    closed = 0.5 * 3 * (1 + math.log(2 * math.pi)) + 0.5 * logdet
    assert float(model.entropy()) == pytest.approx(closed, rel=1e-12)
    ref = stats.multivariate_normal(model.loc.detach().numpy(), cov).entropy()
    assert float(model.entropy()) == pytest.approx(float(ref), rel=1e-10)


def test_entropy_of_standard_normal_and_scaling() -> None:
    model = Gaussian(4, "isotropic").double()
    assert float(model.entropy()) == pytest.approx(2 * (1 + math.log(2 * math.pi)), rel=1e-14)
    with torch.no_grad():
        model.raw_scale.fill_(math.log(3.0))
    # H(cX) = H(X) + D log c
    assert float(model.entropy()) == pytest.approx(
        2 * (1 + math.log(2 * math.pi)) + 4 * math.log(3.0), rel=1e-14
    )


def test_distribution_carries_gradients_to_the_model() -> None:
    model = _fitted("full")
    x = torch.randn(10, 3, dtype=torch.float64)
    model.to_distribution().log_prob(x).sum().backward()
    assert model.mean.grad is not None and bool(model.mean.grad.abs().sum() > 0)
    assert model.raw_scale.grad is not None and bool(model.raw_scale.grad.abs().sum() > 0)
    model.zero_grad()
    model.entropy().backward()
    # dH / d raw_ii = 1 for the log-diagonal of L, and 0 below it
    torch.testing.assert_close(model.raw_scale.grad, torch.eye(3, dtype=torch.float64))


def test_distribution_samples_with_the_model_moments() -> None:
    model = _fitted("full")
    draws = model.to_distribution().sample((20000,))
    torch.testing.assert_close(draws.mean(0), model.loc.detach(), atol=0.1, rtol=0)
    assert model.loc is model.mean
