"""Monte Carlo estimators of the marginal likelihood of a Gaussian decoder model.

For ``z ~ N(0, I_m)`` and ``x | z ~ N(G(z), diag(sigma^2))``,

    log p(x | z) = -||(x - G(z)) / sigma||^2 / 2 - (D/2) log(2 pi) - sum_d log sigma_d,

a Gaussian kernel between ``x`` and ``G(z)``. Both estimators below are therefore one call of
:func:`genmod.ops.pairwise_logsumexp` (per chunk) plus the kernel's normaliser:

* prior sampling, one set of ``z_k ~ p(z)`` shared by every row of ``x``:
  ``log p(x) ~= logsumexp_k log p(x | z_k) - log K``, a Gaussian KDE at ``G(z_1..K)``;
* importance sampling with per-row ``z_k ~ q(z | x)``:
  ``log p(x) ~= logsumexp_k [log p(x | z_k) + log p(z_k) - log q(z_k | x)] - log K``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genmod.models.decoders import GaussianEncoder, gaussian_rsample, standard_normal_log_prob
from genmod.ops import pairwise_logsumexp
from genmod.progress import Task

__all__ = ["decode_chunked", "prior_log_marginal", "importance_log_marginal"]

_LOG_2PI = math.log(2.0 * math.pi)

Decoder = Callable[[Tensor], Tensor]


def decode_chunked(decoder: Decoder, z: Tensor, out_dim: int, chunk_rows: int) -> Tensor:
    """``decoder(z)`` ``[..., out_dim]`` for codes ``z`` ``[..., m]``, ``chunk_rows`` rows at
    a time, so that no ``K x hidden`` activation exists at once when gradients are off (with
    gradients autograd keeps every chunk's activations for the backward pass anyway).

    Raises:
        ValueError: naming ``decoder`` when it does not map ``[n, m]`` to ``[n, out_dim]``.
    """
    flat = z.reshape(-1, z.shape[-1])
    rows = flat.shape[0]

    def run(block: Tensor) -> Tensor:
        out = decoder(block)
        if out.shape != (block.shape[0], out_dim):
            raise ValueError(
                f"decoder maps {list(block.shape)} to {list(out.shape)}, "
                f"expected [{block.shape[0]}, {out_dim}]"
            )
        return out

    if rows <= chunk_rows:
        out = run(flat)
    elif torch.is_grad_enabled():
        out = torch.cat([run(flat[i : i + chunk_rows]) for i in range(0, rows, chunk_rows)])
    else:
        out = flat.new_empty(rows, out_dim)
        for i in range(0, rows, chunk_rows):
            out[i : i + chunk_rows] = run(flat[i : i + chunk_rows])
    return out.reshape(*z.shape[:-1], out_dim)


def _kernel_inputs(x: Tensor, means: Tensor, noise_std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, means, scale)`` for an isotropic Gaussian kernel: shared noise is the kernel's
    scale; per-dimension noise rescales both sides by ``1 / sigma_d`` (scale 1)."""
    if noise_std.dim() == 0:
        return x, means, noise_std
    # ``means`` is a fresh tensor of the caller's: rescale it in place when nothing records it.
    means = means.div_(noise_std) if not torch.is_grad_enabled() else means / noise_std
    return x / noise_std, means, torch.ones((), dtype=x.dtype, device=x.device)


def _log_normaliser(noise_std: Tensor, dim: int) -> Tensor:
    """``(D / 2) log(2 pi) + sum_d log sigma_d`` in nats."""
    return 0.5 * dim * _LOG_2PI + noise_std.log().expand(dim).sum()


def prior_log_marginal(
    x: Tensor,
    decode: Decoder,
    noise_std: Tensor,
    latent_dim: int,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Prior-sampling estimate of ``log p(x_i)`` (nats) with one shared set of draws.

    ``z_k ~ N(0, I)`` for ``k = 1..K`` (``[K, m]``, drawn in ``noise_std``'s dtype), decoded
    to ``G(z_k)`` ``[K, D]``; the estimate is ``pairwise_logsumexp(x, G(z), sigma)`` minus
    the normaliser and ``log K``. Memory ``O((n + K) D)`` plus the decoder's chunks.

    Args:
        x: points ``[n, D]`` in the compute dtype.
        decode: ``[K, m] -> [K, D]`` (e.g. chunked decoding).
        noise_std: ``sigma``, 0-d or ``[D]``, in the dtype of the latent draws.
        latent_dim: ``m``.
        num_samples: ``K >= 1``.
        generator: optional ``torch.Generator`` for ``z``.

    Returns:
        ``[n]`` estimates, differentiable in ``decode``'s parameters and ``noise_std``.
    """
    z = torch.randn(
        num_samples, latent_dim, generator=generator, dtype=noise_std.dtype, device=x.device
    )
    sigma = noise_std.to(x.dtype)
    qx, qy, scale = _kernel_inputs(x, decode(z).to(x.dtype), sigma)
    lse = pairwise_logsumexp(qx, qy, scale)
    return lse - _log_normaliser(sigma, x.shape[-1]) - math.log(num_samples)


def importance_log_marginal(
    x: Tensor,
    decode: Decoder,
    noise_std: Tensor,
    encoder: GaussianEncoder,
    num_samples: int,
    chunk_rows: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-weighted (IWAE) estimate of ``log p(x_i)`` (nats), ``z_k ~ q(z | x_i)``.

    ``K`` draws per row are taken ``c = max(1, chunk_rows // n)`` at a time: each chunk's
    decoded points ``[n, c, D]`` meet ``x`` as ``[n, 1, D]`` through the kernel's batch
    dimensions, with ``log p(z) - log q(z | x)`` as log-weights, and the chunks' results are
    combined by a logsumexp, so memory is ``O(n c D)`` without gradients. The draws done are
    reported to the active progress reporter, if any (:mod:`genmod.progress`).

    Args:
        x: points ``[n, D]`` in the compute dtype.
        decode: ``[..., m] -> [..., D]``.
        noise_std: ``sigma``, 0-d or ``[D]``, in the encoder's dtype.
        encoder: the amortised ``q(z | x)``.
        num_samples: ``K >= 1``.
        chunk_rows: bound on the decoded rows ``n c`` per chunk.
        generator: optional ``torch.Generator`` for the draws.

    Returns:
        ``[n]`` estimates, differentiable in the decoder, the encoder and ``noise_std``.
    """
    n = x.shape[0]
    chunk = max(1, chunk_rows // max(1, n))
    sigma = noise_std.to(x.dtype)
    mean, log_var = encoder(x.to(noise_std.dtype))
    parts = []
    name = f"importance sampling of {n} examples"
    with Task(name, None, total=num_samples, unit="draw") as task:
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            z, log_q = gaussian_rsample(mean, log_var, k, generator)
            log_w = (standard_normal_log_prob(z) - log_q).to(x.dtype)
            qx, qy, scale = _kernel_inputs(x.unsqueeze(1), decode(z).to(x.dtype), sigma)
            parts.append(pairwise_logsumexp(qx, qy, scale, log_w).squeeze(1))
            task.update(k)
    lse = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)
    return lse - _log_normaliser(sigma, x.shape[-1]) - math.log(num_samples)
