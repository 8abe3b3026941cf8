"""Fused Triton kernels (genmod.ops._triton) against a float64 brute force.

On CPU the kernels run under Triton's interpreter, which Triton selects when it decorates the
kernels (``TRITON_INTERPRET=1`` at import time). So those cases run in a fresh subprocess (this
file run as a script) whatever the parent process imported before; the parent asserts on the
errors it reports. Under the interpreter ``tl.dot`` is a numpy float32 product whatever the
``precision``, so the "tf32x3"/"tf32" cases check the plumbing there and their numerics only on
CUDA (the ``gpu`` tests), where the same cases also run on the compiled kernels.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.ops._interpret import run_as_script

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
FP32_BOUND = 1e-4  # DESIGN.md section 3: relative to |out|, absolute when |out| < 1

# name: (B, N, M, D, weights, exclude, far, dtype, precision, scale)
FAST = {
    "mixed": (2, 45, 70, 3, "neginf", True, True, "float32", "ieee", 0.7),
    "empty_rows": (2, 40, 33, 2, "single", True, False, "float32", "ieee", 1.0),
}
SLOW = {
    "d1_b1_plain": (1, 33, 100, 1, "none", False, False, "float32", "ieee", 0.3),
    "d3_b2_weights": (2, 64, 57, 3, "random", False, False, "float32", "ieee", 0.8),
    "d16_b1_exclude": (1, 100, 100, 16, "none", True, False, "float32", "ieee", 1.5),
    "d16_b2_all": (2, 77, 90, 16, "neginf", True, True, "float32", "ieee", 2.0),
    "d17_padded": (1, 50, 41, 17, "random", False, True, "float32", "ieee", 3.0),
    "d256": (1, 35, 34, 256, "random", True, False, "float32", "ieee", 12.0),
    "tf32x3": (2, 60, 70, 16, "neginf", True, True, "float32", "tf32x3", 1.5),
    "tf32": (1, 60, 70, 3, "random", True, False, "float32", "tf32", 1.0),
    "float64": (2, 50, 66, 16, "neginf", True, True, "float64", "ieee", 1.5),
}
GPU = {
    "gpu_d64_exclude": (2, 700, 900, 64, "neginf", True, True, "float32", "ieee", 4.0),
    "gpu_d64_tf32x3": (2, 700, 900, 64, "neginf", True, True, "float32", "tf32x3", 4.0),
    "gpu_d5_float64": (1, 300, 500, 5, "neginf", True, True, "float64", "ieee", 0.5),
    "gpu_d200": (1, 300, 257, 200, "random", True, False, "float32", "ieee", 10.0),
}


def make_case(spec: tuple, device: str) -> tuple:
    """Seeded standardised inputs; 'far' moves query 0 50 scales away from every y."""
    b, n, m, d, weights, exclude, far, dtype, _, scale = spec
    gen = torch.Generator().manual_seed(1000 * n + m + d)
    dt = getattr(torch, dtype)
    x = torch.randn(b, n, d, generator=gen, dtype=dt)
    y = torch.randn(b, m, d, generator=gen, dtype=dt)
    if far:  # |x_0 - y_j| >= |x_0| - |y_j| >= 50 scale for every j
        radius = y.norm(dim=-1).amax(1, keepdim=True) + 50 * scale
        x[:, 0] = radius * torch.ones(d, dtype=dt) / math.sqrt(d)
    lw = torch.zeros(b, m, dtype=dt)
    if weights in ("random", "neginf"):
        lw = torch.randn(b, m, generator=gen, dtype=dt)
    if weights == "neginf":
        lw[:, ::3] = -math.inf
    if weights == "single":  # one admissible y per batch; rows excluding it have no term at all
        lw.fill_(-math.inf)
        lw[0, 5] = 0.0
    ex = None
    if exclude:
        ex = torch.randint(-1, m, (b, n), generator=gen)
        if weights == "single":
            ex[0, ::2] = 5
    g = torch.randn(b, n, generator=gen, dtype=dt)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(x), to(y), torch.tensor(scale, dtype=dt, device=device), to(lw), to(ex), to(g)


def reference(x, y, scale, lw, ex, g):
    """Float64 brute force by explicit differences; empty rows are -inf and get no gradient."""
    x, y, scale, lw = (t.detach().double().requires_grad_(True) for t in (x, y, scale, lw))
    a = lw[:, None, :] - ((x[:, :, None] - y[:, None]) ** 2).sum(-1) / (2 * scale**2)
    if ex is not None:
        a = a.masked_fill(torch.arange(y.shape[1], device=y.device) == ex[..., None], -math.inf)
    empty = torch.isneginf(a).all(-1)
    out = torch.logsumexp(a.masked_fill(empty[..., None], 0.0), -1)
    grads = torch.autograd.grad(out[~empty] @ g[~empty].double(), (x, y, scale, lw))
    return out.masked_fill(empty, -math.inf).detach(), grads


def errors(spec: tuple, device: str) -> dict:
    """Max errors of the Triton kernel against the reference for one case."""
    from genmod.ops._triton import triton_pairwise_lse

    x, y, scale, lw, ex, g = make_case(spec, device)
    ref, ref_grads = reference(x, y, scale, lw, ex, g)
    leaves = [t.requires_grad_(True) for t in (x, y, scale, lw)]
    out = triton_pairwise_lse(*leaves, exclude=ex, precision=spec[8])
    grads = torch.autograd.grad(out, leaves, g)
    fin = torch.isfinite(ref)
    res = {
        "dtype": str(out.dtype),
        "nan": bool(out.isnan().any() or any(t.isnan().any() for t in grads)),
        "inf_match": bool(torch.equal(torch.isneginf(out), torch.isneginf(ref))),
        "empty_rows": int((~fin).sum()),
        "out": ((out.double() - ref).abs() / ref.abs().clamp_min(1))[fin].max().item(),
    }
    # A bandwidth step asks for scale (and weights) only: the kernels skip the P @ x products.
    part = [scale.detach().requires_grad_(True), lw.detach().requires_grad_(True)]
    out = triton_pairwise_lse(x.detach(), y.detach(), *part, exclude=ex, precision=spec[8])
    part = torch.autograd.grad(out, part, g)
    names = ("x", "y", "scale", "log_weights", "scale_only", "log_weights_only")
    wants = (*ref_grads, *ref_grads[2:])
    for name, got, want in zip(names, (*grads, *part), wants, strict=True):
        res[name] = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1)).item()
    return res


def run_interpreted(cases: dict) -> dict:
    return run_as_script(__file__, json.dumps(cases))


def check(res: dict, spec: tuple) -> None:
    tol = 1e-10 if spec[7] == "float64" else FP32_BOUND
    assert res["dtype"] == f"torch.{spec[7]}"
    assert not res["nan"] and res["inf_match"], res
    for key in ("out", "x", "y", "scale", "log_weights", "scale_only", "log_weights_only"):
        assert res[key] <= tol, (key, res)


needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture(scope="module")
def fast_results() -> dict:
    return run_interpreted(FAST)


@pytest.fixture(scope="module")
def slow_results() -> dict:
    return run_interpreted(SLOW)


@needs_triton
@pytest.mark.parametrize("name", FAST)
def test_interpreted_fast(name: str, fast_results: dict) -> None:
    check(fast_results[name], FAST[name])
    if name == "empty_rows":  # batch 1 is all -inf, batch 0 has 20 rows that exclude the only y
        assert fast_results[name]["empty_rows"] == 40 + 20


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_interpreted(name: str, slow_results: dict) -> None:
    check(slow_results[name], SLOW[name])


def test_available_and_input_checks() -> None:
    from genmod.ops._triton import triton_available, triton_pairwise_lse

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    assert triton_available(torch.device("cpu")) == (HAS_TRITON and interp)
    x, y, s, lw = torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), torch.tensor(1.0), torch.zeros(1, 5)
    bad = {
        "precision": dict(precision="bf16"),
        "y must be": dict(y=torch.zeros(1, 5, 2)),
        "log_weights": dict(log_weights=torch.zeros(1, 4)),
        "exclude": dict(exclude=torch.zeros(1, 4, dtype=torch.int32)),
        "scale": dict(scale=torch.ones(1)),
        "D <= 256": dict(x=torch.zeros(1, 4, 257), y=torch.zeros(1, 5, 257)),
        "float32 or float64": dict(x=x.half(), y=y.half(), log_weights=lw.half()),
    }
    for message, change in bad.items():
        args = dict(x=x, y=y, scale=s, log_weights=lw) | change
        with pytest.raises(ValueError, match=message):
            triton_pairwise_lse(**args)


@needs_triton
def test_launch_sheds_stages_then_tiles_on_out_of_resources(monkeypatch) -> None:
    from triton.runtime.errors import OutOfResources

    from genmod.ops import _triton_launch as launcher

    monkeypatch.setattr(launcher, "interpreting", lambda: False)
    monkeypatch.setattr(launcher, "_FITTED", {})
    calls = []

    class Kernel:  # fits in "shared memory" when BLOCK_N * BLOCK_M * num_stages <= limit
        limit = 4096

        def __getitem__(self, grid):
            def run(*args, **meta):
                calls.append((grid, args, meta))
                if meta["BLOCK_N"] * meta["BLOCK_M"] * meta["num_stages"] > self.limit:
                    raise OutOfResources(1, 0, "shared memory")

            return run

    kernel, x = Kernel(), torch.zeros(2, 1000, 64)
    launcher.launch(kernel, "fwd", "tf32x3", x, 1000, "BLOCK_N", ("a",), HAS_EXCLUDE=False)
    # the table's 128 x 64 tiles with 2 stages -> 1 stage -> 64 x 64
    assert len(calls) == 3
    grid, args, meta = calls[-1]
    assert (meta["BLOCK_N"], meta["BLOCK_M"], meta["num_stages"]) == (64, 64, 1)
    assert grid == (2 * 16,) and args == ("a", 16) and meta["HAS_EXCLUDE"] is False
    calls.clear()  # the fit is remembered: one launch next time
    launcher.launch(kernel, "fwd", "tf32x3", x, 1000, "BLOCK_N", ("a",), HAS_EXCLUDE=False)
    assert len(calls) == 1
    kernel.limit = 0
    with pytest.raises(OutOfResources):
        launcher.launch(kernel, "bwd_y", "ieee", x, 1000, "BLOCK_M", ("a",), NEED_GRAD=True)


cuda = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()) or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs triton and a CUDA device (compiled kernels)",
)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name", [*FAST, *GPU])
def test_cuda_cases(name: str) -> None:
    spec = {**FAST, **GPU}[name]
    check(errors(spec, "cuda"), spec)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_cuda_accuracy_4096(precision: str) -> None:
    from genmod.ops._triton import triton_pairwise_lse

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 4096, 64, device="cuda", generator=gen)
    y = torch.randn(1, 4096, 64, device="cuda", generator=gen)
    for h in (0.5, 1.0, 3.0):
        scale, lw = torch.tensor(h, device="cuda"), torch.zeros(1, 4096, device="cuda")
        got = triton_pairwise_lse(x, y, scale, lw, precision=precision).double()
        d2 = torch.cdist(x[0].double(), y[0].double()) ** 2
        ref = torch.logsumexp(-d2 / (2 * h * h), -1)
        err = ((got[0] - ref).abs() / ref.abs().clamp_min(1)).max().item()
        # TF32 keeps ~11 bits of x.y: rounding the operands on CPU gives at most 1.3e-3 here.
        bound = FP32_BOUND if precision != "tf32" else 2e-3
        assert err <= bound, (precision, h, err)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dim", [2, 64])
def test_cuda_default_path_meets_the_bound(dim: int) -> None:
    """The public function on CUDA float32: the default split-TF32 kernel, then the rows the
    error estimate flags refined in float64, at D <= 4 too (the kernel expands there)."""
    from genmod.ops import pairwise_logsumexp
    from tests.conftest import brute_pairwise_logsumexp, nats_error

    gen = torch.Generator().manual_seed(dim)
    y = 3 * torch.randn(2000, dim, generator=gen) + 0.5
    near = y[:200] + 0.003 * torch.randn(200, dim, generator=gen)
    x = torch.cat([3 * torch.randn(200, dim, generator=gen), near])
    for h in (0.01, 0.3, 3.0):
        out = pairwise_logsumexp(x.cuda(), y.cuda(), h)
        assert nats_error(out.cpu(), brute_pairwise_logsumexp(x, y, h)) <= FP32_BOUND, h


@pytest.mark.gpu
@cuda
def test_cuda_memory_100k() -> None:
    from genmod.ops._triton import triton_pairwise_lse

    n, d = 100_000, 64
    x = torch.randn(1, n, d, device="cuda", requires_grad=True)
    y = torch.randn(1, n, d, device="cuda", requires_grad=True)
    s = torch.tensor(1.0, device="cuda", requires_grad=True)
    lw = torch.zeros(1, n, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    triton_pairwise_lse(x, y, s, lw).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    inputs = (x.numel() + y.numel()) * 4
    assert extra <= 3 * inputs, (extra, inputs)  # grads + O(N + M) vectors; N x M is 10^4 x more
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


if __name__ == "__main__":
    specs = json.loads(sys.argv[1])
    print(json.dumps({name: errors(tuple(spec), "cpu") for name, spec in specs.items()}))
