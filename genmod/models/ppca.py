"""The linear-Gaussian latent-variable model in closed form (probabilistic PCA).

With ``z ~ N(0, I_m)`` and ``x | z ~ N(W z + b, diag(sigma^2))`` the marginal is Gaussian,

    p(x) = N(x | b, C),    C = W W^T + diag(sigma^2),

and the Woodbury identity evaluates it in ``O(D m^2)`` per model plus ``O(D m)`` per point,
never forming the ``D x D`` matrix ``C``. For shared noise the maximum-likelihood parameters
are those of Tipping & Bishop (1999), from the eigendecomposition of the sample covariance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["linear_gaussian_log_prob", "low_rank_gaussian_log_prob", "ppca_mle"]

_LOG_2PI = math.log(2.0 * math.pi)


def low_rank_gaussian_log_prob(x: Tensor, loc: Tensor, weight: Tensor, noise_var: Tensor) -> Tensor:
    """``log N(x_i | loc, W W^T + diag(noise_var))`` in nats for each row of ``x``.

    With ``Psi = diag(noise_var)`` and the capacitance ``K = I_m + W^T Psi^{-1} W = L L^T``:

        log det C = log det K + sum_d log noise_var_d
        r^T C^{-1} r = r^T Psi^{-1} r - || L^{-1} W^T Psi^{-1} r ||^2,    r = x - loc

    Args:
        x: points ``[n, D]``.
        loc: mean ``[D]``.
        weight: loading matrix ``W`` ``[D, m]``.
        noise_var: per-dimension noise variance ``[D]`` (or ``[]``, broadcast), ``> 0``.

    Returns:
        ``[n]`` log densities in the dtype of the inputs.
    """
    dim, latent = weight.shape
    inv_var = noise_var.reciprocal().expand(dim)
    resid = x - loc
    scaled_w = weight * inv_var.unsqueeze(1)  # Psi^{-1} W  [D, m]
    cap = torch.eye(latent, dtype=weight.dtype, device=weight.device) + weight.mT @ scaled_w
    chol = torch.linalg.cholesky(cap)
    proj = torch.linalg.solve_triangular(chol, (resid @ scaled_w).mT, upper=False)  # [m, n]
    maha = (resid.square() * inv_var).sum(-1) - proj.square().sum(0)
    log_det = 2.0 * chol.diagonal().log().sum() + noise_var.log().expand(dim).sum()
    return -0.5 * (dim * _LOG_2PI + log_det + maha)


def linear_gaussian_log_prob(x: Tensor, decoder: nn.Linear, noise_std: Tensor) -> Tensor:
    """``log N(x_i | b, W W^T + diag(sigma^2))`` (nats) of the model with decoder
    ``G(z) = W z + b`` (``b = 0`` without a bias) and noise ``sigma`` (0-d or ``[D]``),
    computed in the promoted dtype of ``x`` and the parameters."""
    weight = decoder.weight
    dtype = torch.promote_types(x.dtype, weight.dtype)
    bias = decoder.bias
    loc = torch.zeros(weight.shape[0], dtype=dtype, device=x.device) if bias is None else bias
    noise_var = noise_std.to(dtype).square()
    return low_rank_gaussian_log_prob(x.to(dtype), loc.to(dtype), weight.to(dtype), noise_var)


def ppca_mle(
    x: Tensor, latent_dim: int, min_noise_std: float = 0.0
) -> tuple[Tensor, Tensor, float]:
    """Maximum-likelihood probabilistic PCA (shared noise) of data ``x``.

    With the sample covariance ``S = mean_i (x_i - b)(x_i - b)^T`` (``ddof = 0``, ``b`` the
    sample mean) and its eigenvalues ``lambda_1 >= ... >= lambda_D`` with eigenvectors ``U``:

        sigma^2 = mean(lambda_{m+1}, ..., lambda_D),    W = U_m (Lambda_m - sigma^2 I)^{1/2}

    (Tipping & Bishop 1999; ``W`` is unique up to a rotation of the latent space). ``sigma``
    is raised to just above ``min_noise_std`` when the MLE lies below that floor (and when
    ``latent_dim >= D``, where the unconstrained MLE is ``sigma = 0``); ``W`` is then the
    optimum for that ``sigma``. Computed in float64.

    Args:
        x: training points ``[n, D]``, ``n >= 1``.
        latent_dim: ``m >= 1``.
        min_noise_std: the floor of ``sigma`` (``>= 0``).

    Returns:
        ``(W [D, m], b [D], sigma)``: float64 tensors and a float, data units.
    """
    data = x.detach().to(torch.float64)
    bias = data.mean(0)
    centred = data - bias
    cov = centred.mT @ centred / data.shape[0]
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.mT))
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0.0), eigvecs.flip(1)
    dim = data.shape[1]
    rest = eigvals[latent_dim:]
    noise_var = float(rest.mean()) if rest.numel() else 0.0
    floor = min_noise_std * (1.0 + 1e-6) if min_noise_std > 0 else 0.0
    noise_var = max(noise_var, floor * floor)
    keep = min(latent_dim, dim)
    loading = eigvecs[:, :keep] * (eigvals[:keep] - noise_var).clamp_min(0.0).sqrt()
    weight = torch.zeros(dim, latent_dim, dtype=torch.float64, device=data.device)
    weight[:, :keep] = loading
    return weight, bias, math.sqrt(noise_var)
