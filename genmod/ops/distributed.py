"""``sharded_pairwise_logsumexp``: the pairwise reduction over a reference set split across
the ranks of a ``torch.distributed`` process group.

Rank ``s`` holds the reference shard ``y_s`` (rows ``offset_s .. offset_s + M_s - 1`` of the
global reference set ``y = cat_s y_s``). Each rank reduces the queries against its own shard
with :func:`genmod.ops.pairwise_logsumexp`, ``l_s = log sum_{j in shard s} ...``, and the
per-query partial results are combined by a log-sum-exp all-reduce::

    m = max_s l_s                    (all-reduce MAX, [N])
    out = m + log sum_s exp(l_s - m) (all-reduce SUM of the rescaled sums, [N])

which equals the single-process ``pairwise_logsumexp(x, y)``. The traffic per call is
``O(N)`` numbers (plus ``O(N D)`` to share the queries when each rank has its own); nothing of
size ``N x M`` is ever gathered. The backward weighs each rank's local gradient by its
softmax share ``exp(l_s - out)``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from genmod.ops.pairwise import pairwise_logsumexp

__all__ = ["QUERIES", "sharded_pairwise_logsumexp", "shard_bounds"]

QUERIES = ("replicated", "local")

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shard_bounds(num_points: int, world_size: int) -> list[tuple[int, int]]:
    """``[(offset_s, size_s)]`` of the contiguous split of ``num_points`` rows over
    ``world_size`` ranks used by genmod (``torch.tensor_split``: sizes differ by at most one,
    the first ``num_points % world_size`` ranks hold one more)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    base, extra = divmod(int(num_points), world_size)
    bounds, offset = [], 0
    for rank in range(world_size):
        size = base + (1 if rank < extra else 0)
        bounds.append((offset, size))
        offset += size
    return bounds


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_gather_rows(t: Tensor, group: dist.ProcessGroup | None, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``t`` ``[n_r, ...]`` (``n_r = sizes[r]``) along dim 0."""
    width = max(sizes)
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _CopyToGroup(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over the ranks (every rank used the
    same value, so its total gradient is the sum of the ranks' partial ones). ``anchor``: see
    :class:`_LogSumExpAllReduce`."""

    @staticmethod
    def forward(ctx, t: Tensor, anchor: Tensor, group) -> Tensor:  # noqa: ANN001
        ctx.group = group
        return t.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, grad.new_zeros(()), None


class _GatherQueries(torch.autograd.Function):
    """All-gather of every rank's own queries; the backward sums the gradient of the gathered
    queries over the ranks (each shard's share) and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor, group, sizes: list[int], rank: int) -> Tensor:  # noqa: ANN001
        ctx.group, ctx.start, ctx.n = group, sum(sizes[:rank]), sizes[rank]
        return _all_gather_rows(x.detach(), group, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.n], grad.new_zeros(()), None, None, None


class _LogSumExpAllReduce(torch.autograd.Function):
    """``out = log sum_s exp(l_s)`` over the ranks, per query.

    Backward: ``d out / d l_s = exp(l_s - out)``. With ``local`` queries each rank's loss
    reads only its own rows of ``out``, so the incoming gradients are first summed over the
    ranks; with replicated queries they are the same on every rank and used as they are.
    ``anchor`` (a 0-d tensor that requires grad) makes the output require grad on every rank
    whenever any rank's inputs do, so every rank reaches the backward's collectives.
    """

    @staticmethod
    def forward(ctx, local: Tensor, anchor: Tensor, group, sum_grads: bool) -> Tensor:  # noqa: ANN001
        top = local.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = (local.detach() - safe).exp()
        dist.all_reduce(total, group=group)
        out = safe + total.log()
        ctx.save_for_backward(local, out)
        ctx.group, ctx.sum_grads = group, sum_grads
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # noqa: ANN001
        local, out = ctx.saved_tensors
        grad = grad.contiguous().clone()
        if ctx.sum_grads:
            dist.all_reduce(grad, group=ctx.group)
        share = torch.where(local > -math.inf, (local - out).exp(), torch.zeros_like(local))
        return grad * share, grad.new_zeros(()), None, None


def _metadata(x: Tensor, y: Tensor, grads: list[bool], group, world: int) -> Tensor:  # noqa: ANN001
    """Every rank's ``[M_s, N_s, D_y, D_x, dtype code, *grads]`` (a ``[world, 8]`` table)."""
    dtype = _DTYPES.index(y.dtype) if y.dtype in _DTYPES else -1
    row = torch.tensor(
        [y.shape[-2], x.shape[-2], y.shape[-1], x.shape[-1], dtype, *map(int, grads)],
        dtype=torch.int64,
    )
    if dist.get_backend(group) == "nccl":
        row = row.to(x.device)
    table = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(table, row, group=group)
    return torch.stack(table).cpu()


def _check_agreement(table: Tensor, queries: str, x: Tensor) -> None:
    """Raise the same ``ValueError`` on every rank when the ranks disagree."""
    dims = set(table[:, 2].tolist()) | set(table[:, 3].tolist())
    if len(dims) != 1:
        raise ValueError(
            f"the ranks disagree on the dimension D of x / y_shard: {sorted(dims)} "
            "(every rank must pass points of the same dimension)"
        )
    codes = set(table[:, 4].tolist())
    if len(codes) != 1 or -1 in codes:
        names = sorted(str(_DTYPES[c]) if c >= 0 else "non-floating" for c in codes)
        raise ValueError(f"the ranks disagree on the dtype of y_shard: {names}")
    if int(table[:, 0].sum()) == 0:
        raise ValueError("y_shard is empty on every rank: at least one reference point is needed")
    if queries == "replicated" and len(set(table[:, 1].tolist())) != 1:
        raise ValueError(
            "queries='replicated' needs the same x on every rank, but the ranks pass "
            f"{table[:, 1].tolist()} rows; use queries='local' for each rank's own queries"
        )
    if queries == "local" and x.dim() != 2:
        raise ValueError(f"queries='local' needs x of shape [N, D], got {tuple(x.shape)}")


def sharded_pairwise_logsumexp(
    x: Tensor,
    y_shard: Tensor,
    scale: float | Tensor = 1.0,
    log_weights: Tensor | None = None,
    *,
    kernel: str = "gaussian",
    exclude: Tensor | None = None,
    queries: str = "replicated",
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> Tensor:
    """:func:`genmod.ops.pairwise_logsumexp` over a reference set sharded across ranks.

    ``out[i] = logsumexp_j (log_weights[j] + log k(||x_i - y_j|| / scale))`` with ``j``
    running over the *global* reference set, the concatenation of every rank's ``y_shard`` in
    rank order. A collective: every rank of ``group`` must call it, in the same order, with
    the same ``kernel``, ``queries`` and ``scale``. Without an initialised process group it is
    exactly ``pairwise_logsumexp`` (one shard).

    Args:
        x: queries ``[..., N, D]``. ``queries="replicated"``: the same ``x`` on every rank, and
            every rank gets the whole result. ``queries="local"``: each rank's own ``[N_r, D]``
            queries (``N_r`` may differ, or be 0), and each rank gets its own rows: the
            queries are all-gathered (``O(sum_r N_r D)`` numbers), reduced against the local
            shard, and combined.
        y_shard: this rank's reference points ``[..., M_s, D]``; ``M_s`` may differ between
            ranks and may be 0 (at least one rank must hold a point).
        scale: kernel scale ``> 0`` (float or 0-d tensor), the same on every rank.
        log_weights: this rank's log-weights ``[..., M_s]`` or None.
        kernel: as in :func:`genmod.ops.pairwise_logsumexp`.
        exclude: ``[..., N]`` *global* reference index to leave out of each query's sum
            (``-1``: none). Rank ``s`` knows its offset ``sum_{r < s} M_r`` from the shard
            sizes (all-gathered with the other metadata).
        queries: ``"replicated"`` or ``"local"`` (see ``x``).
        group: the process group (default: the world).
        backend, precision: passed to :func:`genmod.ops.pairwise_logsumexp`.

    Gradients reach ``x``, ``y_shard``, ``log_weights`` and ``scale``. Every rank must run
    the backward when any does. ``y_shard`` and ``log_weights`` get the gradient of the
    objective through the whole reduction. Replicated queries (the same loss on every rank):
    ``x`` and ``scale`` get the full single-process gradient on every rank. Local queries (the
    objective is the sum of the ranks' losses): each rank's ``x`` gets its full gradient, and
    ``scale`` gets this shard's share, the shares summing over the ranks to the total, so
    DDP's gradient averaging gives the gradient of the mean loss.

    Returns:
        ``[..., N]`` (replicated) or ``[N_r]`` (local), in nats, dtype of x.

    Raises:
        ValueError: on every rank, when the ranks disagree on D or dtype, every shard is
            empty, replicated queries differ in number, or for the arguments
            :func:`genmod.ops.pairwise_logsumexp` rejects.

    Example:
        >>> # on each of W ranks, with its shard of the reference set
        >>> out = sharded_pairwise_logsumexp(x, y[rank::W], 0.5)  # doctest: +SKIP
    """
    if queries not in QUERIES:
        raise ValueError(f"queries must be one of {QUERIES}, got {queries!r}")
    rank, world = _world(group)
    if world == 1:
        return pairwise_logsumexp(
            x,
            y_shard,
            scale,
            log_weights,
            kernel=kernel,
            exclude=exclude,
            backend=backend,
            precision=precision,
        )
    for name, t in (("x", x), ("y_shard", y_shard)):
        if not isinstance(t, Tensor) or t.dim() < 2:
            raise ValueError(f"{name} must be a tensor of shape [..., n, D]")
    leaves = [t for t in (x, y_shard, log_weights, scale) if isinstance(t, Tensor)]
    grad_on = torch.is_grad_enabled()
    scale_grad = isinstance(scale, Tensor) and scale.requires_grad
    grads = [grad_on and any(t.requires_grad for t in leaves), x.requires_grad, scale_grad]
    table = _metadata(x, y_shard, grads, group, world)
    _check_agreement(table, queries, x)
    # Decided from every rank's flags, so that all ranks build the same collectives.
    needs_grad, x_grad, scale_grad = (grad_on and bool(table[:, c].any()) for c in (5, 6, 7))
    anchor = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=needs_grad)
    shard_sizes = table[:, 0].tolist()
    offset = sum(shard_sizes[:rank])
    if scale_grad and queries == "replicated":
        scale = _CopyToGroup.apply(
            torch.as_tensor(scale, dtype=x.dtype, device=x.device), anchor, group
        )
    if queries == "local":
        query_sizes = table[:, 1].tolist()
        if x_grad:
            x_all = _GatherQueries.apply(x, anchor, group, query_sizes, rank)
        else:
            x_all = _all_gather_rows(x.detach(), group, query_sizes)
        if exclude is not None:
            exclude = exclude.to(device=x.device, dtype=torch.int64)
            exclude = _all_gather_rows(exclude, group, query_sizes)
    else:
        x_all = _CopyToGroup.apply(x, anchor, group) if x_grad else x
    local_exclude = None
    if exclude is not None:
        exclude = exclude.to(device=x.device, dtype=torch.int64)
        inside = (exclude >= offset) & (exclude < offset + y_shard.shape[-2])
        local_exclude = torch.where(inside, exclude - offset, torch.full_like(exclude, -1))
    if y_shard.shape[-2] > 0:
        local = pairwise_logsumexp(
            x_all,
            y_shard,
            scale,
            log_weights,
            kernel=kernel,
            exclude=local_exclude,
            backend=backend,
            precision=precision,
        )
    else:
        # An empty shard adds exp(-inf) = 0; the zero terms keep this rank's graph (and the
        # collectives in its backward) in step with the other ranks'.
        lead = torch.broadcast_shapes(x_all.shape[:-2], y_shard.shape[:-2])
        local = x_all.new_full((*lead, x_all.shape[-2]), -math.inf)
        if needs_grad:
            terms = (x_all, y_shard, log_weights, scale)
            local = local + sum(t.sum().to(local.dtype) * 0 for t in terms if isinstance(t, Tensor))
    out = _LogSumExpAllReduce.apply(local, anchor, group, queries == "local")
    if queries == "local":
        start = sum(table[:rank, 1].tolist())
        out = out[start : start + x.shape[0]]
    return out
