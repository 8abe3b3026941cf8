"""The compiled low-dimensional CPU path (D <= 4) against float64 brute force and gradcheck:
every kernel, near and far queries, tiny and huge bandwidths, zero weights and exclude."""

from __future__ import annotations

import math

import pytest
import torch

from genmod.ops import KERNELS, _lowd, log_profile, pairwise_logsumexp
from tests.conftest import brute_pairwise_logsumexp, nats_error


@pytest.fixture(params=["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def lowd(request, monkeypatch):
    """Route every call of the test through the compiled path (it normally starts at 1M
    pairs), and count the calls that took it. The default run traces the graphs with
    TorchDynamo and runs them eagerly (seconds); Inductor's C++ for all of them is the
    ``slow`` run's (minutes on two cores); ``test_inductor_builds_the_common_cases`` covers
    the common ones in the default run."""
    monkeypatch.setenv("GENMOD_COMPILE_BACKEND", request.param)
    monkeypatch.setattr(_lowd, "_compiled", {})
    monkeypatch.setattr(_lowd, "MIN_PAIRS", 1)
    monkeypatch.setattr(_lowd, "_state", {"active": True, "eager_pairs": 0})
    monkeypatch.setattr(_lowd, "_TILE", (64, 96))  # several tiles in both directions
    calls = {"forward": 0, "backward": 0}
    forward, backward = _lowd.lowd_forward, _lowd.lowd_backward

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(_lowd, "lowd_forward", count("forward", forward))
    monkeypatch.setattr(_lowd, "lowd_backward", count("backward", backward))
    monkeypatch.setattr(_lowd, "_failed", False)
    yield calls
    assert not _lowd._failed, "the compiled path failed and fell back to the eager loop"


def _problem(dim, dtype, gen, n=150, m=230, weights=True):
    y = torch.randn(m, dim, generator=gen, dtype=torch.float64)
    x = torch.cat([y[:20] + 0.01 * torch.randn(20, dim, generator=gen, dtype=y.dtype),
                   torch.randn(n - 25, dim, generator=gen, dtype=y.dtype),
                   torch.full((5, dim), 6.0, dtype=y.dtype)])  # fmt: skip
    lw = None
    if weights:
        lw = torch.randn(m, generator=gen, dtype=torch.float64)
        lw[3:9] = -math.inf
    exclude = torch.randint(-1, m, (n,), generator=gen)
    cast = None if lw is None else lw.to(dtype)
    return x.to(dtype), y.to(dtype), cast, exclude


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dim", [1, 2, 3, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_brute_force(kernel, dim, dtype, lowd, gen):
    dtype = getattr(torch, dtype)
    x, y, lw, exclude = _problem(dim, dtype, gen)
    for scale in (0.05, 0.7, 40.0):
        for ex in (None, exclude):
            out = pairwise_logsumexp(x, y, scale, lw, kernel=kernel, exclude=ex)
            ref = brute_pairwise_logsumexp(x, y, scale, lw, kernel, ex)
            bound = 1e-5 if dtype == torch.float32 else 1e-12
            assert out.dtype == dtype
            assert nats_error(out, ref) < bound, (scale, ex is not None)
    assert lowd["forward"] == 6


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dim", [1, 3])
def test_gradients_pass_gradcheck(kernel, dim, lowd, gen):
    x, y, lw, exclude = _problem(dim, torch.float64, gen, n=30, m=31)
    scale = torch.tensor(0.9, dtype=torch.float64)
    if kernel != "gaussian":  # keep pairs off the kinks of |x - y| and of the support edge
        x, scale = x * 0.1, torch.tensor(2.5, dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (x, y, scale, lw.clamp_min(-30.0))]

    def f(x, y, s, lw):
        return pairwise_logsumexp(x, y, s, lw, kernel=kernel, exclude=exclude)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert lowd["backward"] > 0


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "exponential"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_the_eager_path(kernel, dtype, lowd, gen, monkeypatch):
    """Every subset of gradients the caller can ask for (the bandwidth alone is a KDE's)."""
    x, y, lw, exclude = _problem(2, dtype, gen)
    scale = torch.tensor(0.8, dtype=dtype)
    for want in ([0, 1, 2, 3], [2], [1, 3], [0]):

        def grads(fast: bool, want: list[int] = want) -> list[torch.Tensor]:
            monkeypatch.setattr(_lowd, "_state", {"active": fast, "eager_pairs": 0})
            monkeypatch.setattr(_lowd, "COMPILE_PAIRS", 1 if fast else 1 << 62)
            ins = [t.clone().requires_grad_(i in want) for i, t in enumerate((x, y, scale, lw))]
            out = pairwise_logsumexp(*ins, kernel=kernel, exclude=exclude)
            weights = torch.linspace(-1.0, 2.0, out.shape[0], dtype=dtype)
            return torch.autograd.grad((out * weights).sum(), [ins[i] for i in want])

        tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
        for fast, eager in zip(grads(True), grads(False), strict=True):
            torch.testing.assert_close(fast, eager, **tol)


def test_the_compiled_path_is_rented_before_it_is_bought(monkeypatch, gen):
    """Small calls stay eager; a process compiles after one huge call, or once its eager
    calls add up to about twice the compile cost."""
    monkeypatch.setattr(_lowd, "_state", {"active": False, "eager_pairs": 0})
    x, y, *_ = _problem(2, torch.float32, gen)
    assert not _lowd.use_lowd(x, x.shape[0] * y.shape[0])  # below MIN_PAIRS
    assert not _lowd.use_lowd(torch.zeros(3, 5), _lowd.COMPILE_PAIRS)  # D = 5: the GEMM path
    calls = _lowd.COMPILE_AFTER_PAIRS // (4 * _lowd.MIN_PAIRS)
    assert not any(_lowd.use_lowd(x, 4 * _lowd.MIN_PAIRS) for _ in range(calls - 1))
    assert _lowd.use_lowd(x, 4 * _lowd.MIN_PAIRS)  # the calls add up: compiled from now on
    assert _lowd.use_lowd(x, _lowd.MIN_PAIRS)
    monkeypatch.setattr(_lowd, "_state", {"active": False, "eager_pairs": 0})
    assert _lowd.use_lowd(x, _lowd.COMPILE_PAIRS)  # one huge call


def test_inductor_builds_the_common_cases(monkeypatch, gen):
    """Inductor's C++ for the cases users run most (float32, gaussian and a compact kernel,
    D = 2, with and without exclude, the bandwidth's gradient) matches brute force."""
    monkeypatch.delenv("GENMOD_COMPILE_BACKEND", raising=False)
    monkeypatch.setattr(_lowd, "MIN_PAIRS", 1)
    monkeypatch.setattr(_lowd, "_state", {"active": True, "eager_pairs": 0})
    x, y, lw, exclude = _problem(2, torch.float32, gen)
    for kernel in ("gaussian", "epanechnikov"):
        for ex in (None, exclude):
            scale = torch.tensor(0.6, requires_grad=True)
            out = pairwise_logsumexp(x, y, scale, lw, kernel=kernel, exclude=ex)
            ref = brute_pairwise_logsumexp(x, y, 0.6, lw, kernel, ex)
            assert nats_error(out.detach(), ref) < 1e-5
            (grad,) = torch.autograd.grad(out.sum(), scale)
            s64 = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
            d2 = (x.double().unsqueeze(1) - y.double().unsqueeze(0)).square().sum(-1)
            terms = log_profile(d2 / s64**2, kernel) + lw.double()
            if ex is not None:
                terms = terms.masked_fill(torch.arange(len(y)) == ex.unsqueeze(1), -math.inf)
            ref = torch.logsumexp(terms, 1)
            (expected,) = torch.autograd.grad(ref[torch.isfinite(ref)].sum(), s64)
            assert float(grad) == pytest.approx(float(expected), rel=1e-4)
    assert any(key[0] == "_sum_tile" for key in _lowd._compiled)
