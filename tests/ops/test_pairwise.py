"""pairwise_logsumexp against a float64 brute force: values, gradients, tails, bad input."""

from __future__ import annotations

import math
import os

import pytest
import torch

from genmod.ops import KERNELS, pairwise_logsumexp, set_tile_budget
from tests.conftest import brute_pairwise_logsumexp, nats_error


@pytest.fixture
def tiny_tiles():
    """Force many tiles so the online reduction and tile borders are exercised."""
    set_tile_budget(4096)
    yield
    set_tile_budget(None)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dim", [1, 3, 16, 64])
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_matches_float64_brute_force(kernel, dim, weighted, gen):
    x = torch.randn(2, 70, dim, generator=gen)
    y = torch.randn(2, 90, dim, generator=gen)
    lw = torch.randn(2, 90, generator=gen) if weighted else None
    for scale in (0.01, 0.1, 1.0, 3.0):
        out = pairwise_logsumexp(x, y, scale, lw, kernel=kernel)
        ref = brute_pairwise_logsumexp(x, y, scale, lw, kernel)
        assert out.dtype == torch.float32 and out.shape == (2, 70)
        assert nats_error(out, ref) < 1e-4, (kernel, dim, scale)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float64_is_float64_accurate(kernel, gen, tiny_tiles):
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(55, 5, generator=gen, dtype=torch.float64)
    out = pairwise_logsumexp(x, y, 2.5, kernel=kernel)
    assert out.dtype == torch.float64
    assert nats_error(out, brute_pairwise_logsumexp(x, y, 2.5, kernel=kernel)) < 1e-12


def test_tiles_do_not_change_the_result(gen, tiny_tiles):
    x = torch.randn(3, 130, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 170, 8, generator=gen, dtype=torch.float64)
    lw = torch.randn(3, 170, generator=gen, dtype=torch.float64)
    tiled = pairwise_logsumexp(x, y, 0.7, lw)
    set_tile_budget(None)
    whole = pairwise_logsumexp(x, y, 0.7, lw)
    torch.testing.assert_close(tiled, whole, rtol=1e-13, atol=1e-13)


def test_batch_dims_broadcast(gen):
    x = torch.randn(4, 1, 10, 3, generator=gen)
    y = torch.randn(5, 12, 3, generator=gen)
    lw = torch.randn(12, generator=gen)
    out = pairwise_logsumexp(x, y, 0.5, lw)
    assert out.shape == (4, 5, 10)
    for a in range(4):
        for b in range(5):
            ref = brute_pairwise_logsumexp(x[a, 0], y[b], 0.5, lw)
            assert nats_error(out[a, b], ref) < 1e-5


def test_exclude_leaves_out_one_point(gen):
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    idx = torch.arange(30)
    loo = pairwise_logsumexp(y, y, 0.4, exclude=idx)
    for i in range(30):
        keep = torch.arange(30) != i
        ref = torch.logsumexp(-((y[i] - y[keep]) ** 2).sum(-1) / (2 * 0.4**2), 0)
        assert abs(float(loo[i] - ref)) < 1e-12
    none = pairwise_logsumexp(y, y, 0.4, exclude=torch.full((30,), -1))
    torch.testing.assert_close(none, pairwise_logsumexp(y, y, 0.4))


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_float64(kernel, tiny_tiles):
    g = torch.Generator().manual_seed(1)
    for dim in (2, 7):
        x = torch.randn(2, 9, dim, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randn(1, 13, dim, generator=g, dtype=torch.float64, requires_grad=True)
        # Compact kernels: a scale that keeps every pair inside the support (finite out).
        s0 = 0.8 if kernel in ("gaussian", "exponential") else 9.0
        s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
        lw = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
        ex = torch.randint(-1, 13, (2, 9), generator=g)

        def f(x, y, s, lw, ex=ex):
            return pairwise_logsumexp(x, y, s, lw, kernel=kernel, exclude=ex)

        assert torch.autograd.gradcheck(f, (x, y, s, lw), eps=1e-6, atol=1e-5)


def test_far_tail_is_exact_and_finite():
    y = torch.randn(200, 4, generator=torch.Generator().manual_seed(2))
    x = torch.full((3, 4), 50.0) * torch.tensor([1.0, -1.0, 0.5, 2.0])
    out = pairwise_logsumexp(x, y, 1.0)
    ref = brute_pairwise_logsumexp(x, y, 1.0)
    assert torch.isfinite(out).all() and (out < -1000).all()
    assert nats_error(out, ref) < 1e-6
    # 50 bandwidths from a single point: exactly -50^2 / 2.
    one = pairwise_logsumexp(torch.tensor([[50.0]]), torch.tensor([[0.0]]), 1.0)
    assert float(one) == -1250.0


def test_far_tail_gradient_is_finite():
    y = torch.randn(20, 3, dtype=torch.float64)
    x = torch.full((2, 3), 80.0, dtype=torch.float64, requires_grad=True)
    pairwise_logsumexp(x, y, 0.5).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dim", [2, 64])
def test_data_far_from_origin(dim, gen):
    shift = 1e3
    x = torch.randn(50, dim, generator=gen) + shift
    y = torch.randn(60, dim, generator=gen) + shift
    for scale in (0.3, 1.0):
        out = pairwise_logsumexp(x, y, scale)
        assert nats_error(out, brute_pairwise_logsumexp(x, y, scale)) < 1e-4


def test_compact_kernel_out_of_reach_is_minus_inf_without_nan():
    x = torch.tensor([[0.0], [10.0]], requires_grad=True)
    y = torch.tensor([[0.5], [0.2]])
    out = pairwise_logsumexp(x, y, 1.0, kernel="epanechnikov")
    assert math.isfinite(float(out[0].detach())) and float(out[1].detach()) == -math.inf
    out[0].backward()
    assert torch.isfinite(x.grad).all()


def test_empty_queries_and_zero_weights():
    y = torch.randn(5, 2)
    assert pairwise_logsumexp(torch.zeros(0, 2), y).shape == (0,)
    lw = torch.full((5,), -math.inf)
    assert float(pairwise_logsumexp(torch.zeros(1, 2), y, 1.0, lw)) == -math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": torch.randn(4, 3)}, "same dimension"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"x": torch.tensor([[float("nan"), 0.0]])}, "x contains NaN"),
        ({"y": torch.tensor([[float("inf"), 0.0]])}, "y contains NaN"),
        ({"y": torch.zeros(0, 2)}, "y is empty"),
        ({"x": torch.zeros(3, 2, dtype=torch.int64)}, "x must have a floating dtype"),
        ({"x": torch.zeros(2)}, "x must have shape"),
        ({"y": torch.zeros(4, 2, dtype=torch.float64)}, "same dtype"),
        ({"log_weights": torch.zeros(3)}, "log_weights"),
        ({"log_weights": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "log_weights"),
        ({"kernel": "box"}, "kernel"),
        ({"exclude": torch.tensor([0, 9])}, "exclude"),
        ({"backend": "cuda"}, "backend"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"x": torch.zeros(2, 2), "y": torch.zeros(4, 2), "scale": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pairwise_logsumexp(**args)


@pytest.mark.parametrize(
    ("dtype", "precision", "expected"),
    [
        (torch.float32, "auto", "tf32x3"),
        (torch.float64, "auto", "ieee"),
        (torch.float32, "ieee", "ieee"),
        (torch.float32, "tf32", "tf32"),
        (torch.float32, "fp16x3", "fp16x3"),  # opt-in: "auto" stays tf32x3
    ],
)
def test_triton_precision_default(monkeypatch, dtype, precision, expected):
    """The Triton kernel gets the split TF32 product for float32 unless told otherwise
    (tests/ops/test_refine.py shows it meets the same bound), full precision for float64."""
    import genmod.ops._triton as triton_backend
    from genmod.ops import pairwise

    seen = []

    def fake(x, y, scale, lw, ex, precision, kernel="gaussian"):
        seen.append(precision)
        return x.new_zeros(x.shape[:2])

    monkeypatch.setattr(pairwise, "_use_triton", lambda *args: True)
    monkeypatch.setattr(triton_backend, "triton_pairwise_lse", fake)
    x, y = torch.randn(3, 2, dtype=dtype), torch.randn(4, 2, dtype=dtype)
    pairwise_logsumexp(x, y, 1.0, precision=precision)
    assert seen == [expected]


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 16])  # explicit differences; the compiled GEMM path
def test_memory_stays_bounded_at_a_10gb_problem(dim):
    """N x M = 60k x 60k float32 would be 14 GB; the peak resident memory of forward and
    backward (the high-water mark reset just before, so the import's peak cannot hide it)
    must stay far below."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from genmod.ops import pairwise_logsumexp\n"
        "def status(key):\n"
        "    with open('/proc/self/status') as f:\n"
        "        return int(next(ln for ln in f if ln.startswith(key + ':')).split()[1])\n"
        "torch.manual_seed(0)\n"
        f"x = torch.randn(60000, {dim}, requires_grad=True)\n"
        f"y = torch.randn(60000, {dim}, requires_grad=True)\n"
        "pairwise_logsumexp(x[:2000], y, 0.5).sum().backward()  # compile outside the peak\n"
        "with open('/proc/self/clear_refs', 'w') as f:\n"
        "    f.write('5')  # VmHWM := VmRSS\n"
        "before = status('VmRSS')\n"
        "out = pairwise_logsumexp(x, y, 0.5)\n"
        "out.sum().backward()\n"
        "print((status('VmHWM') - before) / 1024)\n"
    )
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=900
    )
    growth_mib = float(res.stdout.strip().splitlines()[-1])
    print(f"peak RSS growth for 60k x 60k x {dim} forward+backward: {growth_mib:.1f} MiB")
    assert growth_mib < 200.0


@pytest.mark.parametrize("scale", [0.01, 0.1, 0.3])
def test_near_queries_in_high_dimension_stay_accurate(scale, gen):
    """A query half a bandwidth from a reference point, D = 64, data std 1.5: the GEMM
    expansion alone is off by up to 0.5 nats here; adaptive refinement restores 1e-4."""
    y = 1.5 * torch.randn(300, 64, generator=gen)
    direction = torch.nn.functional.normalize(torch.randn(20, 64, generator=gen), dim=1)
    x = (y[:20] + 0.5 * scale * direction).requires_grad_()
    out = pairwise_logsumexp(x, y, scale)
    ref = brute_pairwise_logsumexp(x.detach(), y, scale)
    assert nats_error(out.detach(), ref) < 1e-4
    # The refined rows are differentiable and their gradients accurate too.
    out.sum().backward()
    x64 = x.detach().double().requires_grad_()
    brute = brute_pairwise_logsumexp(x64, y, scale)
    (g64,) = torch.autograd.grad(brute.sum(), x64)
    torch.testing.assert_close(x.grad.double(), g64, rtol=1e-4, atol=1e-4 / scale)
