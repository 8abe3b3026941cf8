"""precision="fp16x3" (the split-fp16 product of ``genmod.ops._triton_split``) in the Triton
forward, against a float64 brute force and against the tf32x3 forward.

Under Triton's interpreter (this file run as a script with ``TRITON_INTERPRET=1``, as
``tests/ops/test_triton.py`` does) the fp16 operands are real: ``.to(tl.float16)`` is numpy's
round-to-nearest-even conversion, and ``tl.dot`` of fp16 operands with a float32 accumulator is
``np.matmul(a, b, dtype=float32)``, i.e. the fp16 values multiplied and summed in float32
(triton/runtime/interpreter.py, ``create_dot``), as a tensor core's fp32 accumulation does. So
here the split, the scaling and the three products run as on a GPU up to the summation order;
the first case checks that on one tile (the split parts bit for bit against torch, the product
within 2^-20 of ``|a| |b|``, which an fp16 accumulation, 2^-11, could not meet). The tf32x3
forward is a plain float32 product under the interpreter; the compiled kernels are compared
at 20k x 20k x 64 in the ``gpu`` test. tests/ops/test_refine.py emulates the split in torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.ops._interpret import run_as_script
from tests.ops.test_triton import HAS_TRITON, make_case, reference

ROOT = Path(__file__).resolve().parents[2]
FP32_BOUND = 1e-4  # DESIGN.md section 3

# name: (make_case spec, magnitude): x, y and the scale multiplied by the magnitude (the
# scores are unchanged; the split's power-of-two scaling is exercised).
CASES = {
    "d16": ((1, 40, 70, 16, "random", True, True, "float32", "fp16x3", 1.5), 1.0),
    "d33_large": ((2, 40, 70, 33, "neginf", True, False, "float32", "fp16x3", 2.0), 1e4),
    "d33_small": ((1, 40, 70, 33, "none", False, True, "float32", "fp16x3", 1.0), 1e-3),
}
GRADS = ("x", "y", "scale", "log_weights")


def forward_errors(spec: tuple, magnitude: float, device: str) -> dict:
    """Max errors of the fp16x3 and tf32x3 forwards and of their gradients (relative to the
    largest reference value, at least 1 for the forward), and between the two forwards."""
    from genmod.ops._triton import triton_pairwise_lse

    x, y, scale, lw, ex, g = make_case(spec, device)
    x, y, scale = x * magnitude, y * magnitude, scale * magnitude
    ref, ref_grads = reference(x, y, scale, lw, ex, g)
    fin = torch.isfinite(ref)
    denom = ref.abs().clamp_min(1)
    res, outs = {}, {}
    for precision in ("tf32x3", "fp16x3"):
        leaves = [t.detach().requires_grad_(True) for t in (x, y, scale, lw)]
        out = triton_pairwise_lse(*leaves, exclude=ex, precision=precision)
        grads = torch.autograd.grad(out, leaves, g)
        outs[precision] = out.detach().double()
        res[precision] = ((outs[precision] - ref).abs() / denom)[fin].max().item()
        for name, got, want in zip(GRADS, grads, ref_grads, strict=True):
            err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)
            res[f"{precision}_{name}"] = err.item()
    res["diff"] = ((outs["fp16x3"] - outs["tf32x3"]).abs() / denom)[fin].max().item()
    res["inf_match"] = bool(torch.equal(torch.isneginf(outs["fp16x3"]), torch.isneginf(ref)))
    return res


def public_error(device: str) -> float:
    """``pairwise_logsumexp(..., precision="fp16x3")``: centring, the kernel, refinement."""
    from genmod.ops import pairwise_logsumexp
    from tests.conftest import brute_pairwise_logsumexp, nats_error

    gen = torch.Generator().manual_seed(3)
    y = 3 * torch.randn(70, 24, generator=gen) + 100.0
    x = torch.cat([3 * torch.randn(20, 24, generator=gen) + 100.0, y[:20] + 0.01])
    out = pairwise_logsumexp(x.to(device), y.to(device), 0.05, backend="triton",
                             precision="fp16x3")  # fmt: skip
    return nats_error(out.cpu(), brute_pairwise_logsumexp(x, y, 0.05))


def compile_sm90(precision: str, dim: int = 64) -> dict:
    """The forward compiled ahead of time for sm_90 (Hopper; no GPU needed) with the launch
    table's tiles: which matrix instructions its PTX uses, and how many."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from genmod.ops._triton_fwd import lse_fwd_kernel
    from genmod.ops._triton_launch import config

    meta = config("fwd", precision, dim, torch.float32)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    flags = dict(DIRECT=False, DIM=dim, PROFILE=0, HAS_EXCLUDE=False, PRECISION=precision, **meta)
    sig = {name: "constexpr" if name in flags else "*fp32" if name.endswith("_ptr") else "i32"
           for name in lse_fwd_kernel.arg_names}  # fmt: skip
    src = ASTSource(fn=lse_fwd_kernel, signature=sig, constexprs=flags)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    return {
        "f16": ".f32.f16.f16" in ptx,
        "tf32": ".tf32.tf32" in ptx,
        "wgmma": ptx.count("wgmma.mma_async"),
    }


def run_script(*args: str, **env_vars: str) -> dict:
    """This file run as a script (interpreted unless ``TRITON_INTERPRET="0"`` is given)."""
    return run_as_script(__file__, *args, **env_vars)


needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture(scope="module")
def results() -> dict:
    return run_script()


@needs_triton
def test_interpreter_runs_fp16_operands_with_float32_accumulation(results: dict) -> None:
    tile = results["tile"]
    assert tile["hi_exact"] and tile["lo_exact"], tile
    assert tile["fp16x3"] <= 2.0**-20, tile  # units of |a_i| |b_j|
    assert tile["hi_only"] > 2.0**-14, tile  # the lo parts matter: the check is not vacuous


@needs_triton
@pytest.mark.parametrize("name", CASES)
def test_interpreted_forward_and_gradients(name: str, results: dict) -> None:
    res = results[name]
    assert res["inf_match"], res
    assert res["fp16x3"] <= FP32_BOUND, res
    # Within tf32x3's own error of the tf32x3 forward (a float32 product here).
    assert res["diff"] <= max(4 * res["tf32x3"], 1e-6), res
    for name in GRADS:  # the backward recomputes the scores with tf32x3
        assert res[f"fp16x3_{name}"] <= FP32_BOUND, (name, res)


@needs_triton
def test_interpreted_public_function_meets_the_bound(results: dict) -> None:
    assert results["public"] <= FP32_BOUND


@pytest.mark.skipif(
    importlib.util.find_spec("triton.backends.nvidia") is None,
    reason="needs triton's NVIDIA backend (ptxas) to compile for sm_90",
)
def test_fp16x3_forward_compiles_to_half_the_hopper_matrix_instructions(tmp_path: Path) -> None:
    """Compiled for sm_90 without a GPU: fp16x3's three products are fp16 wgmma instructions
    accumulating in float32, with K = 16 per instruction against tf32x3's 8, so half as many."""
    res = run_script("compile", TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    assert res["fp16x3"]["f16"] and not res["fp16x3"]["tf32"], res
    assert res["tf32x3"]["tf32"] and not res["tf32x3"]["f16"], res
    assert 2 * res["fp16x3"]["wgmma"] == res["tf32x3"]["wgmma"] > 0, res


def test_bad_precision_names_list_the_choices() -> None:
    from genmod.ops import pairwise_logsumexp
    from genmod.ops._triton import triton_pairwise_lse

    x, y, lw = torch.zeros(1, 4, 16), torch.zeros(1, 5, 16), torch.zeros(1, 5)
    for bad in ("fp16", "fp16x2", "FP16X3"):
        with pytest.raises(ValueError, match=r"precision must be one of .*'fp16x3'.*got '"):
            pairwise_logsumexp(x, y, 1.0, precision=bad)
        with pytest.raises(ValueError, match=r"precision must be one of .*'fp16x3'.*got '"):
            triton_pairwise_lse(x, y, torch.tensor(1.0), lw, precision=bad)


cuda = pytest.mark.skipif(
    not (HAS_TRITON and torch.cuda.is_available()) or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs triton and a CUDA device (compiled kernels)",
)


@pytest.mark.gpu
@cuda
def test_cuda_fp16x3_accuracy_20k() -> None:
    """The compiled fp16x3 forward at 20k x 20k x 64 (the first 1024 rows against float64):
    within the 1e-4 bound and within about tf32x3's error, at magnitudes 1e-3 to 1e4."""
    from genmod.ops._triton import triton_pairwise_lse

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 20000, 64, device="cuda", generator=gen)
    y = torch.randn(1, 20000, 64, device="cuda", generator=gen)
    lw = torch.zeros(1, 20000, device="cuda")
    rows = 1024
    for mag in (1e-3, 1.0, 1e4):
        d2 = torch.cdist(x[0, :rows].double(), y[0].double()) ** 2
        for h in (0.5, 1.0, 3.0):
            ref = torch.logsumexp(-d2 / (2 * h * h), -1)
            scale = torch.tensor(h * mag, device="cuda")
            err = {}
            for precision in ("tf32x3", "fp16x3"):
                got = triton_pairwise_lse(x * mag, y * mag, scale, lw, precision=precision)
                got = got[0, :rows].double()
                err[precision] = ((got - ref).abs() / ref.abs().clamp_min(1)).max().item()
            assert err["fp16x3"] <= FP32_BOUND, (mag, h, err)
            assert err["fp16x3"] <= 2 * err["tf32x3"] + 1e-6, (mag, h, err)


def _tile_check() -> dict:
    """One tile through ``fp16_split`` and ``dot_fp16x3`` under the interpreter."""
    import numpy as np

    from genmod.ops._triton_split import split_coefficients

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(32, 32, generator=gen) * torch.logspace(-4, 3, 32)
    b = torch.randn(16, 32, generator=gen) * torch.logspace(-4, 3, 32)
    s = split_coefficients(a, b, torch.ones(1))[1:].clone()
    hi, lo, ab = torch.empty(32, 32), torch.empty(32, 32), torch.empty(32, 16)
    _tile_kernel[(1,)](a, b, s, hi, lo, ab, N=32, M=16, K=32)
    want_hi = (a * s).half()
    want_lo = ((a * s - want_hi.float()) * 2048.0).half()
    exact = a.double() @ b.double().T
    norms = a.double().norm(dim=1)[:, None] * b.double().norm(dim=1)
    hi_b = (b * s).half().double() / s.double()
    hi_only = (want_hi.double() / s.double()) @ hi_b.T
    return {
        "hi_exact": bool(np.array_equal(hi.numpy(), want_hi.float().numpy())),
        "lo_exact": bool(np.array_equal(lo.numpy(), want_lo.float().numpy())),
        "fp16x3": ((ab.double() / s.double() ** 2 - exact).abs() / norms).max().item(),
        "hi_only": ((hi_only - exact).abs() / norms).max().item(),
    }


if __name__ == "__main__":
    import triton
    import triton.language as tl

    from genmod.ops._triton_split import dot_fp16x3, fp16_split

    @triton.jit
    def _tile_kernel(a_ptr, b_ptr, s_ptr, hi_ptr, lo_ptr, ab_ptr, N: tl.constexpr,
                     M: tl.constexpr, K: tl.constexpr):  # fmt: skip
        rn, rm, rk = tl.arange(0, N), tl.arange(0, M), tl.arange(0, K)
        a = tl.load(a_ptr + rn[:, None] * K + rk[None, :])
        b = tl.load(b_ptr + rm[:, None] * K + rk[None, :])
        s = tl.load(s_ptr)
        a_hi, a_lo = fp16_split(a, s)
        tl.store(hi_ptr + rn[:, None] * K + rk[None, :], a_hi.to(tl.float32))
        tl.store(lo_ptr + rn[:, None] * K + rk[None, :], a_lo.to(tl.float32))
        tl.store(ab_ptr + rn[:, None] * M + rm[None, :], dot_fp16x3(a_hi, a_lo, b, s))

    if sys.argv[1:] == ["compile"]:
        print(json.dumps({p: compile_sm90(p) for p in ("tf32x3", "fp16x3")}))
        sys.exit(0)
    res = {"tile": _tile_check(), "public": public_error("cpu")}
    res |= {name: forward_errors(spec, mag, "cpu") for name, (spec, mag) in CASES.items()}
    print(json.dumps(res))
