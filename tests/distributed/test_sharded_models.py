"""Models on 2 gloo processes against one process: a KDE whose reference set is sharded
(leave-one-out training steps, bandwidth search, weights, sampling, whole-set state) and the
Gaussian fitted from all-reduced sufficient statistics.

One spawn runs every case (process start-up dominates); the parent recomputes each in one
process and compares.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from genmod import KDE, Gaussian
from genmod.models import _sharding
from genmod.training import _distributed
from tests.distributed._spawn import run_ranks

STEPS, BATCH = 3, 12


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "x": torch.randn(41, 2, generator=g, dtype=torch.float64),
        "x3": torch.randn(30, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3]),
        "w": torch.rand(41, generator=g, dtype=torch.float64) * (torch.arange(41) != 5),
        "gauss": torch.randn(101, 3, generator=g, dtype=torch.float64)
        @ torch.randn(3, 3, generator=g, dtype=torch.float64),
    }


def _batches() -> list[torch.Tensor]:
    return [
        torch.randperm(41, generator=torch.Generator().manual_seed(s))[:BATCH] for s in range(STEPS)
    ]


def _train(kde: KDE, data: torch.Tensor, rank: int, world: int) -> list[float]:
    """SGD on log h over the leave-one-out loss; on several ranks, each rank takes its part
    of the global batch and the gradients are averaged as DDP averages them."""
    opt = torch.optim.SGD([kde.log_bandwidth], lr=0.5)
    trajectory = []
    for batch in _batches():
        mine = _sharding.split_rows(batch, rank, world)
        opt.zero_grad()
        kde.training_loss(data[mine], mine).backward()
        if world > 1:
            dist.all_reduce(kde.log_bandwidth.grad)
            kde.log_bandwidth.grad /= world
        opt.step()
        trajectory.append(float(kde.bandwidth.detach()))
    return trajectory


def _cases(rank: int, world: int) -> dict:
    d = _data()
    out = {}
    kde = KDE(d["x"], bandwidth=0.5, learn_bandwidth=True, reference="sharded")
    out["sharded"] = _sharding.shard(kde)
    out["shard_rows"] = kde.data.shape[0]
    out["trajectory"] = _train(kde, d["x"], rank, world)
    out["log_prob"] = kde.log_prob(d["x"][:7] + 0.1).detach()  # every rank, the same queries
    out["whole"] = _distributed.whole_state(kde)["data"]
    weighted = KDE(d["x"], bandwidth=0.4, weights=d["w"], reference="sharded")
    _sharding.shard(weighted)
    out["loo_weighted"] = weighted.loo_log_prob()  # this rank's own rows
    out["fit"] = float(KDE(d["x"], reference="sharded").fit_bandwidth().bandwidth)
    search = KDE(d["x"], reference="sharded")
    _sharding.shard(search)
    out["fit_sharded"] = float(search.fit_bandwidth().bandwidth)
    out["fit_held_out"] = float(search.fit_bandwidth(held_out=d["x3"][:, :2]).bandwidth)
    diagonal = KDE(d["x3"], bandwidth_type="diagonal", reference="sharded")
    _sharding.shard(diagonal)
    out["fit_diagonal"] = diagonal.fit_bandwidth().bandwidth.detach()
    sampler = KDE(d["x"], bandwidth=0.3, weights=d["w"], reference="sharded")
    _sharding.shard(sampler)
    out["sample"] = sampler.sample(9, generator=torch.Generator().manual_seed(1))
    gaussian = Gaussian(3, covariance="full").double()
    _distributed.fit_gaussian(gaussian, d["gauss"])
    out["gaussian"] = {k: v.detach() for k, v in gaussian.state_dict().items()}
    try:
        _sharding.shard(KDE(d["x"][:1], bandwidth=1.0, reference="sharded"))
    except ValueError as err:
        out["too_many_ranks"] = str(err)
    return out


def test_sharded_kde_and_gaussian_equal_one_process(tmp_path):
    results = run_ranks(_cases, 2, tmp_path)
    d = _data()
    one = KDE(d["x"], bandwidth=0.5, learn_bandwidth=True)
    trajectory = _train(one, d["x"], 0, 1)
    weighted = KDE(d["x"], bandwidth=0.4, weights=d["w"])
    search = KDE(d["x"])
    fit = float(search.fit_bandwidth().bandwidth)
    close = {"rtol": 1e-10, "atol": 1e-12}
    for rank, res in enumerate(results):
        assert res["sharded"] and res["shard_rows"] == (21, 20)[rank]
        # The leave-one-out objective, its gradient and so the bandwidth trajectory.
        torch.testing.assert_close(
            torch.tensor(res["trajectory"]), torch.tensor(trajectory), **close
        )
        torch.testing.assert_close(
            res["log_prob"], one.log_prob(d["x"][:7] + 0.1).detach(), **close
        )
        torch.testing.assert_close(res["whole"], d["x"], rtol=0, atol=0)
        rows = slice((0, 21)[rank], (21, 41)[rank])
        torch.testing.assert_close(res["loo_weighted"], weighted.loo_log_prob()[rows], **close)
        assert res["fit"] == fit  # not sharded until shard(): the plain model
        torch.testing.assert_close(res["fit_sharded"], fit, rtol=1e-9, atol=0)
        held = float(KDE(d["x"]).fit_bandwidth(held_out=d["x3"][:, :2]).bandwidth)
        torch.testing.assert_close(res["fit_held_out"], held, rtol=1e-9, atol=0)
        diagonal = KDE(d["x3"], bandwidth_type="diagonal").fit_bandwidth().bandwidth.detach()
        torch.testing.assert_close(res["fit_diagonal"], diagonal, rtol=1e-6, atol=0)
        torch.testing.assert_close(
            res["sample"],
            KDE(d["x"], bandwidth=0.3, weights=d["w"]).sample(9, torch.Generator().manual_seed(1)),
        )
        gaussian = Gaussian(3, covariance="full").double().fit(d["gauss"])
        for key, value in gaussian.state_dict().items():
            torch.testing.assert_close(res["gaussian"][key], value, **close)
        assert "2 processes share 1 points" in res["too_many_ranks"]
