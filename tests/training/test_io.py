"""Standardized (models in data units) and load_model, against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import genmod
from genmod import KDE, Gaussian, Standardized, load_model
from genmod.models import MODEL_CLASSES
from genmod.models.base import DensityModel
from genmod.models.io import CHECKPOINT_FORMAT, model_class_name, resolve_checkpoint
from genmod.training import DensityModule

MEAN = torch.tensor([10.0, -3.0], dtype=torch.float64)
SCALE = torch.tensor([2.0, 0.5], dtype=torch.float64)


@pytest.fixture
def inner(gen) -> Gaussian:
    z = torch.randn(500, 2, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64
    )
    return Gaussian(2).double().fit(z)


def test_standardized_log_prob_is_the_change_of_variables(inner, gen):
    model = Standardized(inner, MEAN, SCALE)
    # x = mean + scale * z with z ~ N(mu, Sigma)  =>  x ~ N(mean + scale mu, S Sigma S).
    mu = MEAN + SCALE * inner.mean.detach()
    cov = torch.diag(SCALE) @ inner.covariance.detach() @ torch.diag(SCALE)
    x = mu + torch.randn(200, 2, generator=gen, dtype=torch.float64) * 3
    expected = stats.multivariate_normal(mu.numpy(), cov.numpy()).logpdf(x.numpy())
    with torch.no_grad():
        got = model.log_prob(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert float(model.log_scale_sum) == pytest.approx(math.log(2.0) + math.log(0.5))


def test_standardized_samples_are_in_data_units(inner):
    model = Standardized(inner, MEAN, SCALE)
    draws = model.sample(20000, generator=torch.Generator().manual_seed(1))
    expected_mean = MEAN + SCALE * inner.mean.detach()
    np.testing.assert_allclose(draws.mean(0).numpy(), expected_mean.numpy(), atol=0.05)
    first = model.sample(5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.sample(5, generator=torch.Generator().manual_seed(2)), first)


def test_standardized_forwards_fit_and_metrics(gen):
    x = MEAN + SCALE * torch.randn(400, 2, generator=gen, dtype=torch.float64)
    model = Standardized(Gaussian(2).double(), MEAN, SCALE).fit(x)
    reference = stats.multivariate_normal(x.mean(0).numpy(), np.cov(x.T.numpy(), bias=True))
    with torch.no_grad():
        nll = float(model.nll(x))
    assert nll == pytest.approx(-reference.logpdf(x.numpy()).mean(), rel=1e-10)
    assert model.estimator == "exact" and model.has_closed_form
    assert set(model.metrics()) == set(model.model.metrics())


@pytest.mark.parametrize(
    ("mean", "scale", "match"),
    [
        (torch.zeros(3), torch.ones(2), "mean must have shape"),
        (torch.zeros(2), torch.tensor([1.0, 0.0]), "scale must be > 0"),
        (torch.zeros(2), torch.tensor([1.0, math.nan]), "scale must hold finite"),
    ],
)
def test_standardized_rejects_bad_standardisation(mean, scale, match):
    with pytest.raises(ValueError, match=match):
        Standardized(Gaussian(2), mean, scale)


def test_standardized_rejects_bad_points(inner):
    model = Standardized(inner, MEAN, SCALE)
    with pytest.raises(ValueError, match="x has dimension 3"):
        model.log_prob(torch.zeros(4, 3, dtype=torch.float64))


def _save(module: DensityModule, path) -> None:
    """What Lightning's checkpoint hook adds, written with torch.save."""
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def test_load_model_round_trips_a_kde(tmp_path, gen):
    data = torch.randn(300, 2, generator=gen)
    kde = KDE(data, bandwidth=0.3, kernel="epanechnikov")
    mean, scale = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    _save(
        DensityModule(kde, mean=mean, scale=scale, data_config={"name": "x"}), tmp_path / "a.ckpt"
    )

    loaded = load_model(tmp_path / "a.ckpt")
    assert isinstance(loaded, Standardized) and not loaded.training
    assert isinstance(loaded.model, KDE) and loaded.model.kernel == "epanechnikov"
    x = mean + scale * torch.randn(50, 2, generator=gen)
    with torch.no_grad():
        expected = kde.log_prob((x - mean) / scale) - scale.log().sum()
        torch.testing.assert_close(loaded.log_prob(x).float(), expected)


def test_load_model_from_state_rebuilds_standardized(inner):
    model = Standardized(inner, MEAN, SCALE)
    again = Standardized.from_state(model.hparams(), model.state_dict())
    assert again.model.mean.dtype == torch.float64
    x = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again.log_prob(x), model.log_prob(x))


class _Shifted(Gaussian):
    """A DensityModel that is not built in: stored as ``module:QualName``."""


def test_other_model_classes_load_only_once_registered(tmp_path, monkeypatch):
    from genmod.models import io

    model = _Shifted(2)
    assert model_class_name(model) == f"{__name__}:_Shifted"
    assert model_class_name(Gaussian(2)) == "Gaussian"
    _save(DensityModule(model), tmp_path / "c.ckpt")
    monkeypatch.setattr(io, "_REGISTERED", {})
    with pytest.raises(ValueError, match="not a registered genmod model"):
        load_model(tmp_path / "c.ckpt")
    assert genmod.register_model(_Shifted) is _Shifted
    assert type(load_model(tmp_path / "c.ckpt").model) is _Shifted
    assert f"{__name__}:_Shifted" in MODEL_CLASSES
    with pytest.raises(ValueError, match="DensityModel subclass"):
        genmod.register_model(dict)


def test_model_classes_resolve_lazily():
    assert {"Gaussian", "KDE", "LatentVariableModel"} <= set(MODEL_CLASSES)
    assert all(issubclass(MODEL_CLASSES[name], DensityModel) for name in MODEL_CLASSES)
    with pytest.raises(KeyError):
        MODEL_CLASSES["Flow"]


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in run directory"):
        load_model(tmp_path / "run")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="no 'genmod' entry"):
        load_model(tmp_path / "plain.ckpt")
    torch.save({"genmod": {"format": CHECKPOINT_FORMAT + 1}}, tmp_path / "future.ckpt")
    with pytest.raises(ValueError, match="format 2 is not supported"):
        load_model(tmp_path / "future.ckpt")
    entry = {"format": CHECKPOINT_FORMAT, "model_class": "Flow"}
    torch.save({"genmod": entry}, tmp_path / "f.ckpt")
    with pytest.raises(ValueError, match="lacks hparams, state_dict, mean, scale"):
        load_model(tmp_path / "f.ckpt")
    entry.update(hparams={}, state_dict={}, mean=torch.zeros(2), scale=torch.ones(2))
    torch.save({"genmod": entry}, tmp_path / "f.ckpt")
    with pytest.raises(ValueError, match="unknown model_class 'Flow'"):
        load_model(tmp_path / "f.ckpt")


def test_resolve_checkpoint_prefers_the_best_of_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    (run / "checkpoints" / "epoch_003.ckpt").write_bytes(b"")
    (run / "metrics.json").write_text('{"best_checkpoint": "checkpoints/epoch_003.ckpt"}')
    assert resolve_checkpoint(run) == run / "checkpoints" / "epoch_003.ckpt"
