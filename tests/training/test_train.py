"""End-to-end training runs through the composed config: one short epoch per model, then
the files a user looks at (TensorBoard tags, metrics.json, checkpoints, load_model)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from genmod import KDE, load_model
from genmod.training import build_datamodule, train

SCALARS = {"train/nll", "val/nll", "val/nll_best", "test/nll", "test/nll_se", "test/bpd"}


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"images": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def hparams_logged(acc: EventAccumulator) -> tuple[set[str], set[str]]:
    """(hyperparameter names, metric tags) of TensorBoard's HPARAMS tab."""
    content = acc.PluginTagToContent("hparams")
    names: set[str] = set()
    metric_tags: set[str] = set()
    for blob in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.HasField("session_start_info"):
            names |= set(data.session_start_info.hparams)
        if data.HasField("experiment"):
            metric_tags |= {m.name.tag for m in data.experiment.metric_infos}
    return names, metric_tags


def data_units_test_nll(run_dir: Path, cfg) -> float:
    """-mean log p(test) of the loaded model on the raw (data-unit) test split."""
    model = load_model(run_dir)
    datamodule = build_datamodule(cfg.data)
    with torch.no_grad():
        return float(-model.log_prob(datamodule.raw_split("test", torch.float64)).mean())


def test_kde_learned_bandwidth_logs_checkpoints_and_round_trips(train_cfg, tmp_path):
    cfg = train_cfg("trainer.max_epochs=2")
    metrics = train(cfg)
    run = tmp_path / "run"

    assert metrics["training"] == "gradient descent" and metrics["epochs"] == 2
    saved = json.loads((run / "metrics.json").read_text())
    for key in (*SCALARS, "model/bandwidth", "estimator", "best_checkpoint"):
        assert saved[key] == pytest.approx(metrics[key]) if key in SCALARS else key in saved
    assert saved["estimator"] == "exact"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / saved["best_checkpoint"]).is_file()

    acc = events(run)
    tags = acc.Tags()
    assert SCALARS | {"model/bandwidth"} <= set(tags["scalars"])
    assert "figures/model" in tags["images"]
    assert "test/log_prob" in tags["histograms"]
    assert len(acc.Images("figures/model")) == 2  # one per validation epoch
    names, metric_tags = hparams_logged(acc)
    assert {"model.kernel", "model.learn_bandwidth", "optimizer.lr", "seed"} <= names
    # No run defines the experiment: TensorBoard builds it from all runs under --logdir
    # (hyperparameters that differ first), its metric columns the scalars logged above.
    assert metric_tags == set()
    assert "hp_metric" not in tags["scalars"]

    # Learning moves h from the Scott rule towards the smaller leave-one-out optimum.
    datamodule = build_datamodule(cfg.data)
    scott = float(KDE(datamodule.train_data).bandwidth)
    bandwidths = [e.value for e in acc.Scalars("model/bandwidth")]
    assert bandwidths[-1] < bandwidths[0] < scott
    val = [e.value for e in acc.Scalars("val/nll")]
    assert val[-1] < val[0]
    assert metrics["val/nll_best"] == pytest.approx(min(val))

    # The checkpoint alone reproduces the test NLL in data units.
    assert data_units_test_nll(run, cfg) == pytest.approx(metrics["test/nll"], rel=1e-5)
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll"] / (2 * math.log(2)))


def test_gaussian_closed_form_matches_scipy_without_warnings(train_cfg, tmp_path):
    cfg = train_cfg("model=gaussian", "trainer.max_epochs=5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    ours = [w for w in caught if "lightning" in w.filename or "genmod" in w.filename]
    assert not ours, [str(w.message) for w in ours]

    assert metrics["training"] == "closed-form fit"
    assert metrics["epochs"] == 1 and metrics["global_step"] == 0  # fitted, not descended
    datamodule = build_datamodule(cfg.data)
    train_x = datamodule.raw_split("train", torch.float64).numpy()
    test_x = datamodule.raw_split("test", torch.float64).numpy()
    reference = stats.multivariate_normal(train_x.mean(0), np.cov(train_x.T, bias=True))
    expected = -reference.logpdf(test_x).mean()
    assert metrics["test/nll"] == pytest.approx(expected, rel=1e-5)
    assert data_units_test_nll(tmp_path / "run", cfg) == pytest.approx(expected, rel=1e-5)
    assert "figures/model" in events(tmp_path / "run").Tags()["images"]


def test_gaussian_gradient_descent_approaches_closed_form(train_cfg, tmp_path):
    """The closed form is the exact minimiser of the training NLL: gradient descent ends
    just above it."""
    cfg = train_cfg("model=gaussian", name="closed")
    closed = train(cfg)
    descended = train(
        train_cfg(
            "model=gaussian",
            "model.fit_closed_form=false",
            "trainer.max_epochs=12",
            "callbacks.early_stopping.patience=100",
            name="descended",
        )
    )
    assert closed["training"] == "closed-form fit"
    assert descended["training"] == "gradient descent" and descended["global_step"] == 60
    x = build_datamodule(cfg.data).raw_split("train", torch.float64)
    with torch.no_grad():
        nll_closed = float(load_model(tmp_path / "closed").nll(x))
        last = tmp_path / "descended" / "checkpoints" / "last.ckpt"
        nll_descended = float(load_model(last).nll(x))
    assert nll_closed <= nll_descended + 1e-6
    assert nll_descended - nll_closed < 0.01


def test_kde_rule_bandwidth_has_no_parameters_and_is_only_evaluated(train_cfg, tmp_path):
    cfg = train_cfg("model.learn_bandwidth=false", "trainer.max_epochs=3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    assert not [w for w in caught if "lightning" in w.filename], [str(w.message) for w in caught]
    assert metrics["training"] == "evaluation only" and metrics["epochs"] == 1
    datamodule = build_datamodule(cfg.data)
    assert metrics["model/bandwidth"] == pytest.approx(float(KDE(datamodule.train_data).bandwidth))
    assert data_units_test_nll(tmp_path / "run", cfg) == pytest.approx(
        metrics["test/nll"], rel=1e-5
    )


def test_kde_bandwidth_search_equals_fit_bandwidth(train_cfg):
    cfg = train_cfg("model.learn_bandwidth=false", "model.fit_bandwidth=true")
    metrics = train(cfg)
    assert metrics["training"] == "bandwidth search"
    datamodule = build_datamodule(cfg.data)
    expected = KDE(datamodule.train_data).fit_bandwidth()
    assert metrics["model/bandwidth"] == pytest.approx(float(expected.bandwidth), rel=1e-6)


def test_image_data_gets_a_sample_grid(train_cfg, tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 4, (300, 16), generator=generator).double().numpy()
    path = tmp_path / "images.npy"
    np.save(path, images)
    cfg = train_cfg(
        "data=file",
        f"data.path={path}",
        "data.image_shape=[4,4]",
        "model=lvm",
        "model.num_samples=16",
        "model.eval_num_samples=256",
        data=("data.batch_size=64",),
    )
    metrics = train(cfg)
    assert metrics["dim"] == 16 and metrics["estimator"] == "prior, K=256"
    acc = events(tmp_path / "run")
    assert "figures/model" in acc.Tags()["images"]
    entry = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["genmod"]
    assert entry["image_shape"] == [4, 4] and entry["data"]["path"] == str(path.resolve())


def test_linear_latent_variable_model_logs_estimator_and_exact_nll(train_cfg, tmp_path):
    cfg = train_cfg(
        "model=lvm",
        "model.decoder=linear",
        "model.num_samples=32",
        "model.eval_num_samples=2048",
        "optimizer.lr=0.02",
        "trainer.max_epochs=2",
        "~callbacks.density_figures",  # a 2-D heat-map costs grid x K kernel evaluations
    )
    metrics = train(cfg)
    run = tmp_path / "run"
    assert metrics["training"] == "gradient descent"
    assert metrics["estimator"] == "prior, K=2048"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["estimator"] == "prior, K=2048"
    tags = set(events(run).Tags()["scalars"])
    assert {"model/noise_std", "val/nll_exact", "test/nll_exact"} <= tags

    # The Monte Carlo NLL is an upper bound in expectation on the exact one (log-likelihood
    # lower bound); with latent_dim = D = 2 and K = 2048 it is close.
    assert metrics["test/nll"] >= metrics["test/nll_exact"] - 0.02
    assert metrics["test/nll"] - metrics["test/nll_exact"] < 0.1

    model = load_model(run)
    x = build_datamodule(cfg.data).raw_split("test", torch.float64)
    with torch.no_grad():
        exact = model.eval_metrics(x)["nll_exact"]
    assert float(exact) == pytest.approx(metrics["test/nll_exact"], rel=1e-5)
    assert model.estimator == "prior, K=2048"
