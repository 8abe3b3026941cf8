"""A KDE's reference set split across the ranks of a ``torch.distributed`` process group.

``KDE(..., reference="sharded")`` keeps the whole reference set until :func:`shard` is called
(by the training loop once the process group exists); rank ``s`` then keeps the contiguous
rows ``offset_s .. offset_s + M_s - 1`` (:func:`genmod.ops.distributed.shard_bounds`) and every
likelihood runs through :func:`genmod.ops.distributed.sharded_pairwise_logsumexp` with each
rank's own queries. The ``[M]`` weights, the rule bandwidth of the whole set and the global
row count stay on every rank. On one process (or without a process group) there is one shard:
the model is exactly the replicated one.

Every function here that communicates is a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from genmod.models.bandwidth import rule_bandwidth
from genmod.ops.distributed import _CopyToGroup, shard_bounds

__all__ = [
    "Shard",
    "check_reference",
    "gather_rows",
    "global_sum",
    "own_part",
    "own_rows",
    "replicate",
    "rows_of",
    "sample_rows",
    "shard",
    "split_rows",
]

REFERENCES = ("replicated", "sharded")


@dataclass(frozen=True)
class Shard:
    """Where this rank's rows sit in the global reference set."""

    rank: int
    world: int
    offset: int
    total: int
    rule: Tensor  # the Scott rule of the whole set (fit_bandwidth's search centre)
    group: Any = None


def check_reference(reference: Any) -> str:
    """``reference`` if it is ``"replicated"`` or ``"sharded"``, else a ``ValueError``."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return reference


def world_of(group: Any = None) -> tuple[int, int]:
    """``(rank, world size)`` of ``group``; ``(0, 1)`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def split_rows(full: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s contiguous rows of ``full`` ``[M, ...]`` among ``world`` ranks."""
    offset, size = shard_bounds(full.shape[0], world)[rank]
    return full[offset : offset + size]


def shard(model: Any, group: Any = None) -> bool:
    """Keep only this rank's rows of ``model.data`` (a KDE with ``reference="sharded"``);
    returns whether the model is now sharded. Idempotent; a no-op on one process.

    Raises:
        ValueError: when there are more ranks than reference points.
    """
    rank, world = world_of(group)
    if model.reference != "sharded" or world == 1 or model._shard is not None:
        return model._shard is not None
    total = int(model.data.shape[0])
    if world > total:
        raise ValueError(
            f"reference: sharded needs at least one reference point per process, but "
            f"{world} processes share {total} points (use reference: replicated)"
        )
    try:
        rule = rule_bandwidth(model.data, "scott", model._weights(), model.bandwidth_type)
    except ValueError:  # e.g. a constant dimension: fit_bandwidth then centres on h itself
        rule = model.bandwidth.detach().double()
    offset = shard_bounds(total, world)[rank][0]
    model.data = split_rows(model.data, rank, world).clone()
    model._shard = Shard(rank, world, offset, total, rule.cpu(), group)
    return True


def gather_rows(model: Any) -> Tensor:
    """The whole reference set ``[M, D]`` (a collective when sharded: all-gather of the
    shards), for checkpoints: a checkpoint always holds every row once."""
    info = model._shard
    if info is None:
        return model.data
    sizes = [size for _, size in shard_bounds(info.total, info.world)]
    padded = model.data.new_zeros((max(sizes), model.data.shape[1]))
    padded[: model.data.shape[0]] = model.data
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=info.group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def own_rows(model: Any) -> Tensor:
    """Global indices of this rank's reference rows (all rows when not sharded)."""
    info, device = model._shard, model.data.device
    if info is None:
        return torch.arange(model.num_points, device=device)
    return torch.arange(info.offset, info.offset + model.data.shape[0], device=device)


def rows_of(model: Any, index: Tensor) -> Tensor:
    """Reference rows at global ``index`` (which must be this rank's when sharded)."""
    info = model._shard
    if info is None:
        return model.data[index]
    local = index - info.offset
    if bool(((local < 0) | (local >= model.data.shape[0])).any()):
        raise ValueError(
            f"index: rank {info.rank} holds reference rows [{info.offset}, "
            f"{info.offset + model.data.shape[0]}) of the sharded KDE; ask each rank for its own"
        )
    return model.data[local]


def own_part(model: Any, x: Tensor) -> Tensor:
    """This rank's contiguous part of ``x`` (replicated on every rank), or all of it."""
    info = model._shard
    return x if info is None else split_rows(x, info.rank, info.world)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum forward; identity backward (each rank differentiates its own term)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:  # noqa: ANN001
        out = t.detach().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return grad, None


def global_sum(model: Any, t: Tensor) -> Tensor:
    """``sum_ranks t``: the same value on every rank (``t`` when not sharded). Gradients go
    to each rank's own term; pair with :func:`replicate` on the parameter."""
    info = model._shard
    return t if info is None else _SumOverRanks.apply(t, info.group)


def replicate(model: Any, t: Tensor) -> Tensor:
    """``t`` itself, whose gradient is summed over the ranks in the backward (so every rank
    gets the gradient of a :func:`global_sum` objective); ``t`` when not sharded."""
    info = model._shard
    if info is None or not t.requires_grad:
        return t
    return _CopyToGroup.apply(t, t.new_zeros((), requires_grad=True), info.group)


def sample_rows(model: Any, idx: Tensor, noise: Tensor) -> Tensor:
    """``data[idx] + h * noise`` for global row indices ``idx``: rank 0's draws are broadcast,
    each rank fills the rows it holds and an all-reduce assembles them (a collective when
    sharded, so every rank returns the same sample)."""
    info = model._shard
    if info is None:
        return model.data[idx] + model.bandwidth * noise
    src = dist.get_global_rank(info.group, 0) if info.group is not None else 0
    idx, noise = idx.contiguous(), noise.contiguous()
    dist.broadcast(idx, src=src, group=info.group)
    dist.broadcast(noise, src=src, group=info.group)
    local = idx - info.offset
    mine = (local >= 0) & (local < model.data.shape[0])
    rows = noise.new_zeros(noise.shape)
    rows[mine] = model.data[local[mine]]
    dist.all_reduce(rows, group=info.group)
    return rows + model.bandwidth * noise
