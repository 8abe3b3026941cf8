"""A training step makes no host synchronisation of genmod's own (issue 13, point 3).

On CUDA a host sync (``.item()``, ``bool(t)``, a boolean mask index) stalls the queue once
per step; Lightning's logging aside, a step should be all device work. The counter is
``tests/ops/test_syncs.py``'s dispatch mode, which names each sync with its genmod line. The
step runs with ``GENMOD_COMPILE=0`` (the eager tile loop CUDA runs) inside
``genmod.ops.trusted_inputs``, as ``DensityModule.training_step`` does for batches of a
``DensityDataModule``; outside it the same step checks its inputs, so the count is not zero
by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import pytest
import torch

from genmod import Gaussian, LatentVariableModel
from genmod.data import DensityDataModule
from genmod.models import KDE
from genmod.ops import checks_values, min_scale, pairwise_logsumexp, trusted_inputs
from genmod.training.module import DensityModule
from tests.ops.test_syncs import CountSyncs

DATA = torch.randn(600, 2, generator=torch.Generator().manual_seed(0))
INDEX = torch.randperm(600, generator=torch.Generator().manual_seed(1))[:64]

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "kde": lambda: KDE(DATA, 0.1, learn_bandwidth=True),
    "kde_weighted": lambda: KDE(
        DATA, 0.1, learn_bandwidth=True, weights=torch.rand(600).index_fill(0, INDEX[:5], 0.0)
    ),
    "kde_diagonal": lambda: KDE(DATA, [0.1, 0.2], bandwidth_type="diagonal", learn_bandwidth=True),
    "kde_epanechnikov": lambda: KDE(DATA, 1.5, kernel="epanechnikov", learn_bandwidth=True),
    "gaussian": lambda: Gaussian(2),
    "lvm_prior": lambda: LatentVariableModel(2, latent_dim=2, num_samples=16),
    "lvm_importance": lambda: LatentVariableModel(
        2, latent_dim=2, num_samples=16, estimator="importance"
    ),
}


def step_syncs(model: torch.nn.Module, trusted: bool) -> list[str]:
    with trusted_inputs(trusted), CountSyncs() as mode:
        loss = model.training_loss(DATA[INDEX], INDEX)
        loss.backward()
    assert torch.isfinite(loss)
    return mode.ops


@pytest.mark.parametrize("name", MODELS)
def test_trusted_training_step_makes_no_host_sync(name: str, monkeypatch) -> None:
    monkeypatch.setenv("GENMOD_COMPILE", "0")
    torch.manual_seed(0)
    assert step_syncs(MODELS[name](), trusted=True) == []
    checked = step_syncs(MODELS[name](), trusted=False)
    assert any("models/base.py" in op for op in checked), checked  # the x check counts


def test_trusted_step_gives_the_checked_steps_loss_and_gradient() -> None:
    """Zero weights kept as -inf (trusted) or dropped (checked): the same loss and grads."""
    weights = torch.rand(600).index_fill(0, INDEX[:5], 0.0)
    results = []
    for trusted in (False, True):
        kde = KDE(DATA.double(), 0.1, learn_bandwidth=True, weights=weights.double())
        with trusted_inputs(trusted):
            loss = kde.training_loss(DATA.double()[INDEX], INDEX)
        loss.backward()
        results.append((loss.detach(), kde.log_bandwidth.grad.clone()))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_trusted_inputs_skips_value_checks_only() -> None:
    x, y = torch.randn(4, 2), torch.randn(5, 2)
    bad = x.clone()
    bad[1, 0] = math.nan
    assert checks_values()
    with pytest.raises(ValueError, match="x contains NaN"):
        pairwise_logsumexp(bad, y, 0.5)
    with trusted_inputs():
        assert not checks_values()
        assert pairwise_logsumexp(bad, y, 0.5)[1].isnan()  # the promise broken: NaN, no error
        with pytest.raises(ValueError, match="same dimension"):  # shapes are still checked
            pairwise_logsumexp(x, torch.randn(5, 3), 0.5)
        with trusted_inputs(False):
            assert checks_values()
        assert not checks_values()
    assert checks_values()


def test_bandwidth_below_the_floor_is_held_in_training_and_reported_by_validation() -> None:
    kde = KDE(DATA, 0.1, learn_bandwidth=True)
    with torch.no_grad():
        kde.log_bandwidth.fill_(math.log(min_scale(torch.float32)) - 5.0)
    with trusted_inputs():
        loss = kde.training_loss(DATA[INDEX], INDEX)
    assert not loss.isnan()
    with pytest.raises(ValueError, match="below the smallest float32"):
        kde.log_prob(DATA[:3])


def _trainer(**kwargs) -> L.Trainer:
    """A quiet one-epoch CPU trainer: no logger, checkpoint, progress bar or summary."""
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return L.Trainer(max_epochs=1, enable_model_summary=False, accelerator="cpu", **quiet, **kwargs)


def _fit_syncs(model: torch.nn.Module, steps: int, datamodule: L.LightningDataModule) -> list:
    """genmod's syncs in one ``fit`` of ``steps`` training steps (no validation)."""
    module = DensityModule(model, mean=datamodule.mean, scale=datamodule.scale)
    trainer = _trainer(limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0)
    with CountSyncs() as mode:
        trainer.fit(module, datamodule=datamodule)
    assert module._trusted
    return [op for op in mode.ops if " at " in op]  # those called from genmod's code


@pytest.mark.parametrize("name", ["kde", "lvm_prior"])
def test_fit_makes_no_per_step_sync_of_genmods_own(name: str, monkeypatch) -> None:
    """Through Lightning: genmod's syncs do not grow with the number of steps (torch's Adam
    reads its CPU step counter, a CPU-only ``.item()``, and is not genmod's)."""
    monkeypatch.setenv("GENMOD_COMPILE", "0")
    dm = DensityDataModule("moons", n_samples=1000, batch_size=64)
    dm.setup()
    make = {
        "kde": lambda: KDE(dm.train_data, 0.3, learn_bandwidth=True),
        "lvm_prior": lambda: LatentVariableModel(2, latent_dim=2, num_samples=16),
    }[name]
    few, many = _fit_syncs(make(), 2, dm), _fit_syncs(make(), 6, dm)
    assert few == many, (few, many)


def test_batches_of_other_loaders_are_checked() -> None:
    """A plain DataLoader's batches are not trusted: NaN in them is an error naming x."""
    from torch.utils.data import DataLoader

    from genmod.data.batches import IndexedTensorDataset, collate_indexed

    bad = DATA.clone()
    bad[7, 1] = math.inf
    loader = DataLoader(IndexedTensorDataset(bad), batch_size=32, collate_fn=collate_indexed)
    module = DensityModule(Gaussian(2))
    trainer = _trainer()
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        trainer.fit(module, train_dataloaders=loader)
    assert not module._trusted


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["kde", "kde_weighted", "gaussian", "lvm_prior"])
def test_trusted_training_step_never_syncs_cuda(name: str) -> None:
    """On CUDA the runtime's own count (``set_sync_debug_mode("warn")`` warns once per sync)
    of a trusted step (D = 2: the Triton explicit-difference kernels, no refinement for
    the unweighted KDE), after a warm-up step that compiles the kernels."""
    import warnings

    torch.manual_seed(0)
    model = MODELS[name]().cuda()
    x, index = DATA[INDEX].cuda(), INDEX.cuda()
    with trusted_inputs():
        model.training_loss(x, index).backward()  # compiles the kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.training_loss(x, index).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    limit = 1 if name == "kde_weighted" else 0  # weighted rows: refinement counts its rows
    assert len(syncs) <= limit, syncs


def test_a_trusted_run_that_diverges_stops_with_an_error_naming_the_parameter() -> None:
    """No per-step check sees a NaN bandwidth inside a trusted step; the epoch's end does,
    even without validation."""
    dm = DensityDataModule("moons", n_samples=500, batch_size=64)
    dm.setup()
    kde = KDE(dm.train_data, 0.3, learn_bandwidth=True)
    with torch.no_grad():
        kde.log_bandwidth.fill_(math.nan)
    module = DensityModule(kde, mean=dm.mean, scale=dm.scale)
    trainer = _trainer(limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="parameter log_bandwidth holds NaN or Inf after epoch 0"):
        trainer.fit(module, datamodule=dm)
    assert module._trusted


def test_a_single_positive_weight_is_still_an_error_when_trusted() -> None:
    """Leave-one-out of the row holding all the weight has no density: the same clear error
    inside ``trusted_inputs`` (the positive rows are counted once, on the host)."""
    weights = torch.zeros(600).index_fill(0, INDEX[:1], 1.0)
    kde = KDE(DATA, 0.5, weights=weights, learn_bandwidth=True)
    for trusted in (False, True):
        with trusted_inputs(trusted), pytest.raises(ValueError, match="holds all of it"):
            kde.training_loss(DATA[INDEX], INDEX)
