"""What :class:`~genmod.training.DensityModule` does differently on several processes (DDP).

* :class:`DDPStrategy`: Lightning's DDP, except that a model with nothing to train by
  gradient (a Gaussian fitted in closed form, a KDE with a fixed or searched bandwidth) is
  not wrapped in ``DistributedDataParallel`` (which refuses modules without trainable
  parameters); the process group still serves the collectives below.
* :func:`real_count`: how many of the examples a rank evaluates are not padding. Lightning's
  ``DistributedSampler`` pads every rank to the same length by repeating examples; the
  repeats are left out of every metric, so each example counts once.
* :func:`fit_gaussian`: the closed-form Gaussian fit from sufficient statistics all-reduced
  over the ranks, each contributing its own contiguous part of the training set.
* :func:`shard_model`, :func:`whole_state`, :func:`split_state`: a KDE with
  ``reference="sharded"`` keeps its shard while training; checkpoints hold every row once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from torch import Tensor
from torch.utils.data import DistributedSampler

from genmod.models import _sharding
from genmod.models.gaussian import Gaussian

__all__ = [
    "DDPStrategy",
    "fit_gaussian",
    "ignore_shards",
    "keep_mask",
    "real_count",
    "shard_model",
    "split_state",
    "whole_state",
]


class DDPStrategy(_LightningDDP):
    """Lightning's ``DDPStrategy`` (same arguments; ``process_group_backend="gloo"`` for CPU
    processes) that leaves a model without trainable parameters unwrapped."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if not any(p.requires_grad for p in model.parameters()):
            return model
        return super()._setup_model(model)

    def _register_ddp_hooks(self) -> None:
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            super()._register_ddp_hooks()

    def configure_ddp(self) -> None:
        super().configure_ddp()
        if not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            # Unwrapped: the ranks start from rank 0's state, as DDP's wrapper would ensure
            # (a sharded KDE's rows are excluded: see ``ignore_shards``).
            _sync_module_states(self.model)


def ignore_shards(module: torch.nn.Module) -> None:
    """Keep DDP (and Lightning's state sync) from broadcasting rank 0's buffers over a
    sharded KDE's rows, which differ between ranks by design."""
    names = [
        f"{name}.data"
        for name, sub in module.named_modules()
        if getattr(sub, "_shard", None) is not None and name
    ]
    if names:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, names
        )


def real_count(dataloader: Any) -> int | None:
    """How many of this rank's examples are not padding, or ``None`` when the loader's
    sampler is not a ``DistributedSampler`` (nothing is padded).

    A ``DistributedSampler`` without ``drop_last`` lists the ``n`` examples, appends the
    first ``pad`` of them again so that ``world`` divides the length, and gives rank ``r``
    positions ``r, r + world, ...``: its examples at positions ``>= n`` are the repeats,
    always its last ones, and it has ``len(range(r, n, world))`` real ones.
    """
    sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n = len(sampler.dataset)
    return len(range(sampler.rank, n, sampler.num_replicas))


def keep_mask(seen: int, batch: int, real: int | None, device: torch.device) -> Tensor:
    """Rows ``seen .. seen + batch - 1`` of this rank's epoch that are not padding."""
    positions = torch.arange(seen, seen + batch, device=device)
    return positions < (batch + seen if real is None else real)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fit_gaussian(model: Gaussian, train: Tensor) -> None:
    """``model.fit`` from all-reduced sufficient statistics: each rank contributes its own
    contiguous part of ``train`` (the rows the datamodule holds), ``n``, ``sum x`` and then
    ``sum (x - mu)(x - mu)^T`` in float64, and the fit is made from them (the same mean and
    covariance as one process, up to the order of the float64 sums)."""
    if not _distributed():
        model.fit(train)
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    part = _sharding.split_rows(train.detach(), rank, world).double()
    first = torch.cat([part.new_tensor([part.shape[0]]), part.sum(0)])
    dist.all_reduce(first)
    n = int(first[0])
    if n == 0:
        model.fit(train)  # raises its own "no rows" error on every rank
        return
    mu = first[1:] / n
    centred = part - mu
    scatter = centred.T @ centred
    dist.all_reduce(scatter)
    model.fit(_points_with_moments(mu, scatter / n))


def _points_with_moments(mu: Tensor, cov: Tensor) -> Tensor:
    """``2 D`` points ``mu +- sqrt(D) r_k`` (``r_k`` the columns of the symmetric square root
    of ``cov``): their mean is ``mu`` and their covariance (ddof 0) is ``cov``, so
    ``Gaussian.fit`` of them is the fit of any data with these moments."""
    dim = mu.shape[0]
    values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    root = vectors * values.clamp_min(0).sqrt()
    offsets = root.T * dim**0.5
    return torch.cat([mu + offsets, mu - offsets])


def shard_model(model: Any) -> None:
    """Split a ``reference="sharded"`` KDE over the ranks (idempotent; else nothing)."""
    if getattr(model, "reference", None) == "sharded":
        _sharding.shard(model)


def whole_state(model: Any, prefix: str = "") -> dict[str, Tensor]:
    """``model.state_dict()`` on the CPU, with a sharded KDE's rows gathered (a collective)."""
    state = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    if getattr(model, "_shard", None) is not None:
        state[prefix + "data"] = _sharding.gather_rows(model).detach().cpu()
    return state


def split_state(model: Any, state: dict[str, Tensor], prefix: str = "") -> None:
    """In place: a checkpoint's whole reference set -> this rank's rows (sharded KDE)."""
    info = getattr(model, "_shard", None)
    key = prefix + "data"
    if info is None or key not in state:
        return
    full = state[key]
    if full.shape[0] != info.total:
        raise ValueError(
            f"the checkpoint's KDE holds {full.shape[0]} reference points, this run's "
            f"{info.total}: pass the data= settings of the run that wrote it"
        )
    state[key] = _sharding.split_rows(full, info.rank, info.world).clone()
