"""``sharded_pairwise_logsumexp`` on 1, 2 and 3 gloo processes against one process.

Each spawned rank builds the same global problem from a seed, keeps its shard (unequal sizes,
one empty shard), and returns its outputs and gradients; the parent compares them with the
single-process op on the whole reference set (float64 autograd) and a brute-force reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from genmod.ops import pairwise_logsumexp
from genmod.ops.distributed import shard_bounds, sharded_pairwise_logsumexp
from tests.conftest import brute_pairwise_logsumexp
from tests.distributed._spawn import run_ranks

SHARDS = {1: [14], 2: [3, 11], 3: [5, 0, 9]}
"""Reference rows per rank: unequal, and an empty shard at world size 3."""
QUERIES = {1: [9], 2: [4, 5], 3: [4, 0, 5]}
"""Local queries per rank (9 in all; one rank without queries)."""


def _problem(dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    y = torch.randn(14, 3, generator=g, dtype=torch.float64)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    x[0] += 40.0  # a far query: finite and exact, never -inf
    return {
        "x": x.to(dtype),
        "y": y.to(dtype),
        "lw": torch.randn(14, generator=g, dtype=torch.float64).to(dtype),
        "c": torch.randn(9, generator=g, dtype=torch.float64).to(dtype),
        "exclude": torch.tensor([-1, 2, 13, 0, 5, -1, 7, 3, 12]),
    }


def _slices(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _ranks_case(rank: int, world: int) -> dict:
    p = _problem()
    rows = _slices(SHARDS[world], rank)
    out = {}
    for mode in ("replicated", "local"):
        own = slice(None) if mode == "replicated" else _slices(QUERIES[world], rank)
        x = p["x"][own].clone().requires_grad_()
        y = p["y"][rows].clone().requires_grad_()
        lw = p["lw"][rows].clone().requires_grad_()
        scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        lse = sharded_pairwise_logsumexp(x, y, scale, lw, exclude=p["exclude"][own], queries=mode)
        (lse * p["c"][own]).sum().backward()
        out[mode] = {
            "out": lse.detach(),
            "x": x.grad,
            "y": y.grad,
            "lw": lw.grad,
            "scale": scale.grad,
        }
    # float32, no weights, default exclude: the float32 single-process call to 1e-5 relative.
    p32 = _problem(torch.float32)
    out["float32"] = sharded_pairwise_logsumexp(p32["x"], p32["y"][rows], 0.3).detach()
    # A compact kernel: the far query has no reference in reach on any shard (-inf).
    out["tophat"] = sharded_pairwise_logsumexp(p["x"], p["y"][rows], 1.5, kernel="tophat")
    out["errors"] = _disagree(rank)
    return out


def _reference(mode: str) -> dict[str, torch.Tensor]:
    p = _problem()
    x = p["x"].clone().requires_grad_()
    y = p["y"].clone().requires_grad_()
    lw = p["lw"].clone().requires_grad_()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    lse = pairwise_logsumexp(x, y, scale, lw, exclude=p["exclude"])
    (lse * p["c"]).sum().backward()
    ref = brute_pairwise_logsumexp(p["x"], p["y"], 0.7, p["lw"], exclude=p["exclude"])
    torch.testing.assert_close(lse.detach(), ref, rtol=1e-12, atol=0)
    return {"out": lse.detach(), "x": x.grad, "y": y.grad, "lw": lw.grad, "scale": scale.grad}


@pytest.mark.parametrize(
    "world", [pytest.param(2, marks=pytest.mark.slow), 3]
)  # each spawn costs a few seconds of imports; world 3 covers both unequal and empty shards
def test_sharded_equals_one_process(world, tmp_path):
    results = run_ranks(_ranks_case, world, tmp_path)
    p32 = _problem(torch.float32)
    single32 = pairwise_logsumexp(p32["x"], p32["y"], 0.3)
    tophat = brute_pairwise_logsumexp(_problem()["x"], _problem()["y"], 1.5, kernel="tophat")
    assert tophat[0] == -math.inf and bool(torch.isfinite(tophat[1:]).all())
    close = {"rtol": 1e-10, "atol": 1e-12}
    for mode in ("replicated", "local"):
        ref = _reference(mode)
        scale_grads = []
        for rank, res in enumerate(results):
            got = res[mode]
            own = slice(None) if mode == "replicated" else _slices(QUERIES[world], rank)
            rows = _slices(SHARDS[world], rank)
            torch.testing.assert_close(got["out"], ref["out"][own], **close)
            torch.testing.assert_close(got["x"], ref["x"][own], **close)
            torch.testing.assert_close(got["y"], ref["y"][rows], **close)
            torch.testing.assert_close(got["lw"], ref["lw"][rows], **close)
            scale_grads.append(got["scale"])
            if mode == "replicated":  # every rank gets the whole gradient
                torch.testing.assert_close(got["scale"], ref["scale"], **close)
        if mode == "local":  # each rank its share; the shares add up to the total
            torch.testing.assert_close(sum(scale_grads), ref["scale"], **close)
    for res in results:
        torch.testing.assert_close(res["float32"], single32, rtol=1e-5, atol=0)
        torch.testing.assert_close(res["tophat"], tophat, rtol=1e-12, atol=0)
        # Ranks that disagree all get the same one-line error (none hangs).
        assert "disagree on the dimension D" in res["errors"]["dim"]
        assert "disagree on the dtype" in res["errors"]["dtype"]
        assert "empty on every rank" in res["errors"]["empty"]


def _disagree(rank: int) -> dict[str, str]:
    messages = {}
    wide = torch.float64 if rank else torch.float32
    checks = {
        "dim": (torch.randn(4, 3 + rank), torch.randn(5, 3 + rank)),
        "dtype": (torch.randn(4, 3), torch.randn(5, 3, dtype=wide)),
        "empty": (torch.randn(4, 3), torch.randn(0, 3)),
    }
    for name, (x, y) in checks.items():
        try:
            sharded_pairwise_logsumexp(x.to(y.dtype), y, 1.0)
        except ValueError as err:
            messages[name] = str(err)
    return messages


def test_without_a_process_group_it_is_the_plain_op_and_bounds_split_evenly():
    p = _problem()
    out = sharded_pairwise_logsumexp(p["x"], p["y"], 0.5, p["lw"], exclude=p["exclude"])
    torch.testing.assert_close(
        out, pairwise_logsumexp(p["x"], p["y"], 0.5, p["lw"], exclude=p["exclude"])
    )
    assert shard_bounds(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert shard_bounds(2, 3) == [(0, 1), (1, 1), (2, 0)]
    with pytest.raises(ValueError, match="queries must be one of"):
        sharded_pairwise_logsumexp(p["x"], p["y"], queries="mine")
