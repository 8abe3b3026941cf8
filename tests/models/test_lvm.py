"""LatentVariableModel: exact PPCA density, Monte Carlo estimators against float64 brute force."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.decomposition import PCA
from torch.distributions import LowRankMultivariateNormal, Normal

from genmod import LatentVariableModel
from genmod.models.decoders import standard_normal_log_prob


def _low_rank_data(n: int = 400, dim: int = 6, latent: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = 1.5 * torch.randn(dim, latent, generator=g, dtype=torch.float64)
    z = torch.randn(n, latent, generator=g, dtype=torch.float64)
    noise = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return z @ weight.T + noise + torch.arange(dim, dtype=torch.float64)


def _random_model(noise: str = "shared", decoder: str = "linear", seed: int = 1, **kwargs):
    torch.manual_seed(seed)
    model = LatentVariableModel(5, 2, decoder=decoder, noise=noise, **kwargs).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=g, dtype=torch.float64))
        shape = model.noise_log_excess.shape
        model.noise_std = 0.3 + torch.rand(shape, generator=g, dtype=torch.float64)
    return model


def _brute_prior(model, x, k: int, seed: int) -> torch.Tensor:
    """``logsumexp_k log N(x | G(z_k), diag(sigma^2)) - log K`` from torch.distributions,
    with the same ``z_k`` the model draws from a generator seeded alike."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, model.latent_dim, generator=g, dtype=torch.float64)
    means = model.decoder(z).detach()
    sigma = model.noise_std.detach().expand(model.dim)
    log_lik = Normal(means.unsqueeze(0), sigma).log_prob(x.unsqueeze(1)).sum(-1)
    return torch.logsumexp(log_lik, dim=1) - math.log(k)


# ---------------------------------------------------------------------- exact (PPCA)
@pytest.mark.parametrize("noise", ["shared", "diagonal"])
def test_exact_log_prob_matches_low_rank_mvn(noise):
    model = _random_model(noise)
    x = torch.randn(50, 5, dtype=torch.float64) * 3
    sigma2 = model.noise_std.detach().expand(5).square()
    weight, bias = model.decoder.weight.detach(), model.decoder.bias.detach()
    ref = LowRankMultivariateNormal(bias, weight, sigma2).log_prob(x)
    out = model.exact_log_prob(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.log_prob(x, estimator="exact"), ref, rtol=1e-12, atol=1e-10)


def test_exact_log_prob_matches_sklearn_pca_score_samples():
    x = _low_rank_data()
    latent = 2
    pca = PCA(n_components=latent).fit(x.numpy())
    sigma2 = float(pca.noise_variance_)
    lam = torch.as_tensor(pca.explained_variance_)
    weight = torch.as_tensor(pca.components_).T * (lam - sigma2).sqrt()
    model = LatentVariableModel(6, latent, decoder="linear", estimator="exact").double()
    with torch.no_grad():
        model.decoder.weight.copy_(weight)
        model.decoder.bias.copy_(torch.as_tensor(pca.mean_))
    model.noise_std = math.sqrt(sigma2)
    ref = torch.as_tensor(pca.score_samples(x.numpy()))
    torch.testing.assert_close(model.log_prob(x), ref, rtol=1e-10, atol=1e-10)


def test_fit_ppca_is_the_maximum_likelihood_estimate():
    x = _low_rank_data()
    model = LatentVariableModel(6, 2, decoder="linear", estimator="exact").double().fit_ppca(x)
    nll = model.nll(x)
    # sklearn divides by n - 1; the MLE (ddof = 0) is at least as likely, and barely differs.
    sklearn_nll = -PCA(n_components=2).fit(x.numpy()).score(x.numpy())
    assert float(nll.detach()) <= sklearn_nll
    assert abs(float(nll.detach()) - sklearn_nll) < 1e-4
    nll.backward()  # a stationary point of the exact NLL
    for param in model.parameters():
        assert float(param.grad.abs().max()) < 1e-8


def test_exact_needs_a_linear_decoder_and_bias_free_linear_works():
    mlp = LatentVariableModel(5, 2)
    with pytest.raises(ValueError, match="linear decoder"):
        mlp.exact_log_prob(torch.zeros(3, 5))
    assert mlp.eval_metrics(torch.zeros(3, 5)) == {}
    with pytest.raises(ValueError, match="estimator"):
        LatentVariableModel(5, 2, decoder="mlp", estimator="exact")
    custom = LatentVariableModel(5, 2, decoder=torch.nn.Linear(2, 5, bias=False)).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    weight = custom.decoder.weight.detach()
    ref = LowRankMultivariateNormal(torch.zeros(5, dtype=torch.float64), weight, torch.ones(5))
    torch.testing.assert_close(custom.exact_log_prob(x), ref.log_prob(x))
    nll = custom.eval_metrics(x)["nll_exact"]
    torch.testing.assert_close(nll, -ref.log_prob(x).mean())


# ---------------------------------------------------------------------- prior sampling
@pytest.mark.parametrize("noise", ["shared", "diagonal"])
@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_prior_estimate_matches_brute_force(noise, decoder):
    model = _random_model(noise, decoder)
    x = torch.randn(40, 5, dtype=torch.float64) * 2
    out = model.log_prob(x, 300, torch.Generator().manual_seed(7), estimator="prior")
    torch.testing.assert_close(out, _brute_prior(model, x, 300, 7), rtol=1e-10, atol=1e-10)


def test_prior_estimate_decodes_in_chunks_and_float32_agrees():
    model = _random_model("diagonal", "mlp")
    x = model.sample(30, torch.Generator().manual_seed(1))
    ref = model.log_prob(x, 1000, torch.Generator().manual_seed(3))
    model.decode_chunk_elements = 640  # 10 rows per chunk through the 64-wide layers
    with torch.no_grad():
        chunked = model.log_prob(x, 1000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(chunked, ref.detach(), rtol=1e-12, atol=1e-12)
    # A float32 model draws the same z (and decodes them in float32) for float32 and float64
    # data; float64 data is evaluated in float64, so the two differ by the kernel's rounding.
    model, x = model.float(), x.float()
    single = model.log_prob(x, 1000, torch.Generator().manual_seed(3))
    double = model.log_prob(x.double(), 1000, torch.Generator().manual_seed(3))
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    err = (single.double() - double).detach().abs() / double.detach().abs().clamp_min(1.0)
    assert float(err.max()) < 1e-4


def test_prior_estimate_converges_to_exact():
    model = _random_model("shared", "linear", seed=3)
    model.noise_std = 0.5
    x = model.sample(32, torch.Generator().manual_seed(4))
    exact = model.exact_log_prob(x)
    abs_err, nll_err = [], []
    with torch.no_grad():
        for k in (2**7, 2**12, 2**17):
            err = model.log_prob(x, k, torch.Generator().manual_seed(k)) - exact
            abs_err.append(float(err.abs().mean()))
            nll_err.append(abs(float(err.mean())))
    assert abs_err[2] < 0.02 and nll_err[2] < 0.01, (abs_err, nll_err)
    assert abs_err[0] > abs_err[1] > abs_err[2] and abs_err[0] > 10 * abs_err[2], abs_err


def test_prior_gradient_matches_brute_force():
    model = _random_model("diagonal", "mlp", seed=2)
    x = torch.randn(20, 5, dtype=torch.float64)
    params = list(model.parameters())
    out = -model.log_prob(x, 64, torch.Generator().manual_seed(5)).mean()
    grads = torch.autograd.grad(out, params)
    ref = -_brute_prior_with_grad(model, x, 64, 5).mean()
    ref_grads = torch.autograd.grad(ref, params)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def _brute_prior_with_grad(model, x, k, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, model.latent_dim, generator=g, dtype=torch.float64)
    sigma = model.noise_std.expand(model.dim)
    log_lik = Normal(model.decoder(z).unsqueeze(0), sigma).log_prob(x.unsqueeze(1)).sum(-1)
    return torch.logsumexp(log_lik, dim=1) - math.log(k)


# ---------------------------------------------------------------------- importance sampling
def _brute_importance(model, x, chunks: list[int], seed: int) -> torch.Tensor:
    """IWAE estimate from torch.distributions, drawing ``eps`` chunk by chunk as the model."""
    g = torch.Generator().manual_seed(seed)
    mean, log_var = model.encoder(x)
    std = (0.5 * log_var).exp()
    eps = torch.cat(
        [torch.randn(x.shape[0], c, model.latent_dim, generator=g, dtype=x.dtype) for c in chunks],
        1,
    )
    z = mean.unsqueeze(1) + std.unsqueeze(1) * eps
    log_q = Normal(mean.unsqueeze(1), std.unsqueeze(1)).log_prob(z).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    sigma = model.noise_std.expand(model.dim)
    log_lik = Normal(model.decoder(z), sigma).log_prob(x.unsqueeze(1)).sum(-1)
    return torch.logsumexp(log_lik + log_pz - log_q, dim=1) - math.log(sum(chunks))


@pytest.mark.parametrize("noise", ["shared", "diagonal"])
def test_importance_estimate_matches_brute_force_in_chunks(noise):
    model = _random_model(noise, "mlp", estimator="importance")
    x = torch.randn(8, 5, dtype=torch.float64)
    out = model.log_prob(x, 50, torch.Generator().manual_seed(9))
    ref = _brute_importance(model, x, [50], 9)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    model.decode_chunk_elements = 8 * 64 * 16  # 16 draws per row per chunk: 16, 16, 16, 2
    out = model.log_prob(x, 50, torch.Generator().manual_seed(9))
    ref = _brute_importance(model, x, [16, 16, 16, 2], 9)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.sum(), list(model.encoder.parameters()))
    ref_grads = torch.autograd.grad(ref.sum(), list(model.encoder.parameters()))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_importance_with_the_exact_posterior_is_exact():
    """PPCA's posterior is N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I, diagonal
    when W's columns are orthogonal (as fit_ppca makes them): a linear encoder represents it,
    every importance weight then equals p(x), and the estimate is exact for any K."""
    x = _low_rank_data(dim=6, latent=3)
    model = LatentVariableModel(
        6, 3, decoder="linear", estimator="importance", encoder_hidden_sizes=()
    ).double()
    model.fit_ppca(x)
    weight, bias = model.decoder.weight.detach(), model.decoder.bias.detach()
    sigma2 = model.noise_std.detach().square()
    m_diag = (weight.square().sum(0) + sigma2).clone()
    assert torch.allclose(weight.T @ weight + sigma2 * torch.eye(3), torch.diag(m_diag))
    gain = weight.T / m_diag.unsqueeze(1)  # M^-1 W^T  [3, 6]
    with torch.no_grad():
        layer = model.encoder.net[0]
        layer.weight.copy_(torch.cat([gain, torch.zeros(3, 6, dtype=torch.float64)]))
        layer.bias.copy_(torch.cat([-gain @ bias, (sigma2 / m_diag).log()]))
    out = model.log_prob(x[:50], 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, model.exact_log_prob(x[:50]), rtol=1e-10, atol=1e-10)


def test_standard_normal_log_prob():
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    ref = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_prob(z), ref)
