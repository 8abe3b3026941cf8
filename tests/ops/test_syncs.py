"""Host synchronisations of ``pairwise_logsumexp``: a constant number per call, whatever the
number of tiles (issue 13: on CUDA a sync per tile stalls the GPU for every tile).

A ``TorchDispatchMode`` counts the aten ops that need a value on the host (``.item()``,
``bool()``, ``int()``: ``_local_scalar_dense``) or have data-dependent output shapes
(``nonzero``, ``masked_select``, ...), during forward and backward with ``exclude`` and with
rows that refinement recomputes; the same call in one tile and in 10 (forward) and 40
(backward) tiles must count the same.
On CUDA the same holds for the syncs the CUDA runtime reports
(``torch.cuda.set_sync_debug_mode``).
"""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genmod.ops import pairwise_logsumexp, set_tile_budget

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.item.default,
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.allclose.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
}
# Ops that sync only with a boolean (mask) index, which they turn into positions on the host.
MASK_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
MAX_SYNCS = 12  # input checks, the overflow check, the refinement's row count: per call


def _mask_indexed(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class CountSyncs(TorchDispatchMode):
    """Counts the aten ops that need a device value on the host (see the module docstring);
    ``ops`` names each, with the genmod line that called it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS or (func in MASK_INDEX_OPS and _mask_indexed(args)):
            self.count += 1
            frames = [f for f in traceback.extract_stack() if "/genmod/" in f.filename]
            last = frames[-1] if frames else None
            where = f" at {last.filename.rsplit('/genmod/', 1)[-1]}:{last.lineno}" if last else ""
            self.ops.append(str(func) + where)
        return func(*args, **(kwargs or {}))


def case(dim: int, device: str, dtype: torch.dtype) -> tuple:
    """64 queries against 640 references offset from the origin; the first 8 queries sit
    within 0.01 of a reference point they exclude, so some rows are refined at h = 0.02."""
    gen = torch.Generator().manual_seed(dim)
    y = 4.0 + torch.randn(640, dim, generator=gen, dtype=dtype)
    x = 4.0 + torch.randn(64, dim, generator=gen, dtype=dtype)
    x[:8] = y[:8] + 0.01 * torch.randn(8, dim, generator=gen, dtype=dtype)
    ex = torch.randint(-1, 640, (64,), generator=gen)
    ex[:8] = torch.arange(8)
    return x.to(device), y.to(device), ex.to(device)


def syncs(dim: int, device: str, budget: int, h: float = 0.02, **kw) -> tuple[int, list[str]]:
    """Counted sync ops of one forward + backward (grads x, y, scale), tile budget ``budget``."""
    x, y, ex = case(dim, device, kw.pop("dtype", torch.float32))
    x.requires_grad_(True)
    y.requires_grad_(True)
    scale = torch.tensor(h, device=device, dtype=x.dtype, requires_grad=True)
    set_tile_budget(budget)
    try:
        with CountSyncs() as mode:
            out = pairwise_logsumexp(x, y, scale, exclude=ex, **kw)
            out.sum().backward()
    finally:
        set_tile_budget(None)
    return mode.count, mode.ops


@pytest.mark.parametrize("dim", [2, 6])
def test_sync_count_does_not_grow_with_tiles_cpu(dim: int, monkeypatch) -> None:
    """D = 2 (explicit differences) and D = 6 (expansion, float64 refinement of the near
    rows); GENMOD_COMPILE=0 keeps the eager tile loop that CUDA runs."""
    monkeypatch.setenv("GENMOD_COMPILE", "0")
    one, ops_one = syncs(dim, "cpu", 1 << 26)
    many, ops_many = syncs(dim, "cpu", 16384)  # 64-column tiles: 10 forward, 40 backward
    assert one == many, (ops_one, ops_many)
    assert many <= MAX_SYNCS, ops_many


def test_refinement_runs_once_per_call(monkeypatch) -> None:
    """Flagged rows of several batch elements are recomputed in one float64 call."""
    from genmod.ops import _refine

    calls = []
    real = _refine._recompute
    monkeypatch.setattr(_refine, "_recompute", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y, ex = case(6, "cpu", torch.float32)
    xb, exb = torch.stack([x, x.flip(0), x[:32].repeat(2, 1)]), torch.stack([ex, ex.flip(0), ex])
    out = pairwise_logsumexp(xb, y, 0.02, exclude=exb)
    assert len(calls) == 1
    a = -torch.cdist(xb.double(), y.double()).square() / (2 * 0.02**2)
    a = a.masked_fill(torch.arange(640) == exb.unsqueeze(2), -torch.inf)
    ref = torch.logsumexp(a, 2)
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(1)).max() <= 1e-4


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dim", [2, 6])
def test_sync_count_does_not_grow_with_tiles_cuda(dim: int, backend: str) -> None:
    """The CUDA runtime's own count (``set_sync_debug_mode("warn")`` warns once per sync)
    and the dispatch count: the same at 1 and 10-40 tiles, and at most a constant."""
    counts = []
    for budget in (1 << 28, 16384):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                n, ops = syncs(dim, "cuda", budget, backend=backend)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runtime = sum("synchroniz" in str(w.message) for w in caught)
        counts.append((n, runtime))
        assert n <= MAX_SYNCS and runtime <= MAX_SYNCS, (budget, n, runtime, ops)
    assert counts[0] == counts[1], counts


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dim", [2, 6])
def test_tile_loop_never_syncs_cuda(dim: int) -> None:
    """The blocked torch path itself (no input checks, no refinement) under
    ``set_sync_debug_mode("error")``: forward and backward with ``exclude`` in 1 and in many
    tiles raise on any synchronisation."""
    from genmod.ops._blocked import BlockedPairwiseLSE

    x, y, ex = case(dim, "cuda", torch.float32)
    for budget in (1 << 28, 16384):
        xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        scale = torch.tensor(0.5, device="cuda", requires_grad=True)
        set_tile_budget(budget)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = BlockedPairwiseLSE.apply(xs[None], ys[None], scale, None, ex[None], "gaussian")
            out.sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            set_tile_budget(None)
        assert torch.isfinite(xs.grad).all() and torch.isfinite(scale.grad)
