"""The compiled CPU fast path gives the same numbers as the float64 brute force."""

from __future__ import annotations

import math

import pytest
import torch

from genmod.ops import _fused, pairwise_logsumexp, set_tile_budget
from tests.conftest import brute_pairwise_logsumexp, nats_error


@pytest.fixture
def fused_everywhere(monkeypatch):
    monkeypatch.setattr(_fused, "MIN_PAIRS", 0)
    set_tile_budget(64 * 1024)  # several tiles per row at these sizes
    yield
    set_tile_budget(None)


def test_fused_forward_matches_brute_force_across_tile_shapes(fused_everywhere):
    g = torch.Generator().manual_seed(3)
    for n, m, d in [(300, 1000, 16), (77, 513, 64), (5, 9, 8)]:
        x = torch.randn(2, n, d, generator=g)
        y = torch.randn(2, m, d, generator=g) + 3.0
        lw = torch.randn(2, m, generator=g)
        ex = torch.randint(-1, m, (2, n), generator=g)
        assert _fused.use_fused(x, n * m)
        out = pairwise_logsumexp(x, y, 0.6, lw, exclude=ex)
        ref = brute_pairwise_logsumexp(x, y, 0.6, lw, exclude=ex)
        assert nats_error(out, ref) < 1e-4


def test_fused_path_backward_still_exact(fused_everywhere):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(50, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    lw = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    ex = torch.randint(-1, 50, (40,), generator=g)

    def f(x, y, s, lw):
        return pairwise_logsumexp(x, y, s, lw, exclude=ex)

    assert torch.autograd.gradcheck(f, (x, y, s, lw))


@pytest.mark.parametrize("wrt", ["x", "y", "s", "lw", "ys", "xs", "xy", "xysw"])
def test_fused_backward_for_each_subset_of_inputs(fused_everywhere, wrt):
    """The backward skips the GEMMs of gradients nobody asked for; what it returns is still
    the float64 brute force's gradient (batch dims, weights and exclusions included)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 70, 5, generator=g, dtype=torch.float64) + 2.0
    s = torch.tensor(0.8, dtype=torch.float64)
    lw = torch.randn(2, 70, generator=g, dtype=torch.float64)
    ex = torch.randint(-1, 70, (2, 30), generator=g)
    inputs = {"x": x, "y": y, "s": s, "lw": lw}
    names = [wrt] if wrt == "lw" else [{"w": "lw"}.get(c, c) for c in wrt]
    for name in names:
        inputs[name].requires_grad_(True)
    w = torch.randn(2, 30, generator=g, dtype=torch.float64)  # a non-uniform upstream grad
    grads = torch.autograd.grad(
        (pairwise_logsumexp(x, y, s, lw, exclude=ex) * w).sum(), [inputs[n] for n in names]
    )
    # The brute force with a differentiable scale (its helper takes a float).
    d2 = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    a = (lw.unsqueeze(-2) - d2 / (2 * s**2)).masked_fill(
        torch.arange(70) == ex.unsqueeze(-1), float("-inf")
    )
    refs = torch.autograd.grad((torch.logsumexp(a, -1) * w).sum(), [inputs[n] for n in names])
    for got, ref in zip(grads, refs, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wrt", ["s", "ys", "xs"])
def test_fused_backward_rows_without_any_finite_score(fused_everywhere, wrt):
    """A row whose every pair is excluded or has weight -inf has out = -inf and contributes
    nothing to any gradient (the bandwidth's GEMM-free path included): the gradients equal
    those of the problem without that row, and stay finite."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 25, 4, generator=g, dtype=torch.float64)
    y = torch.randn(1, 40, 4, generator=g, dtype=torch.float64)
    lw = torch.randn(1, 40, generator=g, dtype=torch.float64)
    lw[0, 1:] = float("-inf")  # only column 0 can be reached ...
    ex = torch.full((1, 25), -1)
    ex[0, 3] = 0  # ... and row 3 excludes it
    w = torch.randn(1, 25, generator=g, dtype=torch.float64)
    keep = torch.arange(25) != 3

    def grads(xx, ee, ww):
        s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        xx = xx.clone().requires_grad_("x" in wrt)
        yy = y.clone().requires_grad_("y" in wrt)
        out = pairwise_logsumexp(xx, yy, s, lw, exclude=ee)
        want = [t for t, c in ((xx, "x"), (yy, "y"), (s, "s")) if c in wrt]
        return out, torch.autograd.grad((out.masked_fill(out == -math.inf, 0) * ww).sum(), want)

    out, got = grads(x, ex, w)
    assert out[0, 3] == -math.inf
    _, ref = grads(x[:, keep], ex[:, keep], w[:, keep])
    for a, b in zip(got, ref, strict=True):
        if a.shape != b.shape:  # x's gradient: row 3 is zero, the others match
            assert torch.all(a[:, 3] == 0)
            a = a[:, keep]
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wrt", ["s", "ys", "xs"])
@pytest.mark.parametrize("shift", [0.0, 30.0])
def test_fused_float32_bandwidth_gradient_matches_float64(fused_everywhere, wrt, shift):
    """Each way the backward gets the bandwidth's gradient (the GEMM-free row sums for ``s``
    alone, the column GEMM with ``y``, the row GEMM with ``x``) is float32-accurate, also for
    data far from the origin where the expansion |x|^2 + |y|^2 - 2 x.y cancels (measured
    <= 7e-8 relative)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64) + shift
    y = torch.randn(700, 16, generator=g, dtype=torch.float64) + shift
    grads = []
    for dtype in (torch.float32, torch.float64):
        xx = x.to(dtype).requires_grad_("x" in wrt)
        yy = y.to(dtype).requires_grad_("y" in wrt)
        s = torch.tensor(2.0, dtype=dtype, requires_grad=True)
        (gs,) = torch.autograd.grad(pairwise_logsumexp(xx, yy, s).mean(), [s])
        grads.append(gs.double())
    assert abs(grads[0] - grads[1]) <= 1e-5 * abs(grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epilogue_exp_has_no_subnormal_results(dtype):
    """The epilogues' exp gives 0 instead of a subnormal (slow on x86) and the exact exp
    elsewhere, -inf included."""
    tiny = torch.finfo(dtype).tiny
    low = math.log(tiny)
    t = torch.tensor(
        [0.0, -1.0, low + 0.6, low + 0.4, low - 1.0, low - 30.0, -math.inf], dtype=dtype
    )
    got = _fused._exp_normal(t)
    assert torch.equal(got[:3], torch.exp(t[:3]))
    assert torch.all(got[3:] == 0)
    assert torch.exp(t[4]) < tiny  # what is dropped would have been subnormal
    assert not torch.any((got != 0) & (got.abs() < tiny))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [384, 391, 100])
def test_rows_gemm_split_by_thread_equals_one_gemm(threads, n):
    """The rows GEMM split into one batch per thread (when the rows divide evenly and are
    many; 391 rows and 100 rows take the single ``addmm``) accumulates what one ``addmm``
    would, to float32 rounding."""
    g = torch.Generator().manual_seed(n)
    p, yv = torch.rand(n, 200, generator=g), torch.randn(200, 16, generator=g)
    acc = torch.randn(n, 16, generator=g)
    want = acc.double() + p.double() @ yv.double()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _fused._rows_gemm(acc, p, yv)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(acc.double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 1e-30])
def test_fused_float32_gradients_at_full_tile_size(monkeypatch, scale):
    """float32 gradients of every input through full-size tiles (the thread-split rows
    GEMM, the transposed column GEMM) against float64, also for an upstream gradient of
    1e-30, which the column GEMM scales up so that its products are not subnormal."""
    monkeypatch.setattr(_fused, "MIN_PAIRS", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 8, generator=g, dtype=torch.float64)
    y = torch.randn(600, 8, generator=g, dtype=torch.float64) + 0.5
    lw = torch.randn(600, generator=g, dtype=torch.float64)
    w = torch.rand(512, generator=g, dtype=torch.float64)
    grads = []
    try:
        for dtype in (torch.float32, torch.float64):
            inputs = [t.to(dtype).requires_grad_() for t in (x, y, lw)]
            s = torch.tensor(0.7, dtype=dtype, requires_grad=True)
            out = pairwise_logsumexp(inputs[0], inputs[1], s, inputs[2])
            loss = (out * (w.to(dtype) * scale)).sum()
            grads.append([gr.double() / scale for gr in torch.autograd.grad(loss, [*inputs, s])])
    finally:
        torch.set_num_threads(before)
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_backward_epilogue_floors_weights_and_sums_rows():
    """The backward tile pass writes ``exp(t)`` floored at 2^-100 (never subnormal, -inf
    included) and returns the row sums of ``p`` and ``p |y|^2`` added to its inputs."""
    t = torch.tensor([[0.0, -1.0, -60.0, -80.0, -math.inf], [-3.0, -200.0, 0.5, -69.0, -70.0]])
    bias, ref = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0])
    y2 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    a0, c0 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    tile = t.clone()
    a, c = _fused._backward_epilogue(tile, bias, ref, y2, a0, c0)
    floor = math.exp(_fused.LOG_MIN_WEIGHT)
    assert math.isclose(floor, 2.0**-100, rel_tol=1e-12)
    want = torch.exp(t).clamp(min=floor)
    # float32 rounding of an exponent near -69 is ~69 * 6e-8 = 4e-6 relative in exp.
    torch.testing.assert_close(tile, want, rtol=1e-5, atol=0.0)
    assert torch.all(tile >= torch.finfo(torch.float32).tiny)
    torch.testing.assert_close(a, a0 + want.sum(1))
    torch.testing.assert_close(c, c0 + (want * y2).sum(1))
