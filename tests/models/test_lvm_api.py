"""LatentVariableModel: construction, bad input, sampling, labels, persistence and configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from genmod import LatentVariableModel
from genmod.models.io import Standardized

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"data_dim": 0}, "data_dim"),
        ({"data_dim": 2.0}, "data_dim"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": True}, "latent_dim"),
        ({"decoder": "conv"}, "decoder"),
        ({"decoder": 3}, "decoder"),
        ({"hidden_sizes": [64, 0]}, "hidden_sizes"),
        ({"hidden_sizes": "64"}, "hidden_sizes"),
        ({"encoder_hidden_sizes": [-1]}, "encoder_hidden_sizes"),
        ({"activation": "swish"}, "activation"),
        ({"noise": "full"}, "noise"),
        ({"min_noise_std": 0.0}, "min_noise_std"),
        ({"min_noise_std": -1e-3}, "min_noise_std"),
        ({"min_noise_std": math.nan}, "min_noise_std"),
        ({"init_noise_std": 1e-4}, "init_noise_std"),
        ({"init_noise_std": math.inf}, "init_noise_std"),
        ({"estimator": "vae"}, "estimator"),
        ({"estimator": "exact"}, "estimator"),  # the default decoder is an MLP
        ({"num_samples": 0}, "num_samples"),
        ({"eval_num_samples": 1e5}, "eval_num_samples"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    args = {"data_dim": 3, "latent_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        LatentVariableModel(**args)


def test_bad_inputs_name_the_argument_and_leave_the_model_unchanged():
    model = LatentVariableModel(3, 2, decoder="linear", estimator="importance")
    before = _state(model)
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="dimension 4"):
        model.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="x must be 2-D"):
        model.log_prob(torch.randn(3))
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="first bad row: 3"):
        model.log_prob(bad)
    bad[3, 1] = math.inf
    with pytest.raises(ValueError, match="first bad row: 3"):
        model.exact_log_prob(bad)
    with pytest.raises(ValueError, match="first bad row: 3"):
        model.fit_ppca(bad)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            model.log_prob(x, num_samples=k)
    with pytest.raises(ValueError, match="estimator"):
        model.log_prob(x, estimator="laplace")
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)
    for value in (0.0, -1.0, model.min_noise_std, math.nan, [1.0, 2.0]):
        with pytest.raises(ValueError, match="noise_std"):
            model.noise_std = value
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_models_without_what_an_estimator_needs_refuse_it():
    prior = LatentVariableModel(3, 2, decoder="linear")
    with pytest.raises(ValueError, match="importance"):
        prior.log_prob(torch.randn(4, 3), estimator="importance")
    diag = LatentVariableModel(3, 2, decoder="linear", noise="diagonal")
    with pytest.raises(ValueError, match="noise"):
        diag.fit_ppca(torch.randn(10, 3))
    with pytest.raises(ValueError, match="decoder"):
        LatentVariableModel(3, 2).fit_ppca(torch.randn(10, 3))
    wrong = LatentVariableModel(3, 2, decoder=torch.nn.Linear(2, 4))
    with pytest.raises(ValueError, match="decoder maps"):
        wrong.log_prob(torch.randn(4, 3))


# ---------------------------------------------------------------------- K, labels, modes
def test_num_samples_follow_the_mode_and_the_label_says_so():
    model = LatentVariableModel(3, 2, num_samples=16, eval_num_samples=300)
    x = torch.randn(6, 3)
    assert model.training and model.estimator == "prior, K=16"
    torch.testing.assert_close(
        model.log_prob(x, generator=torch.Generator().manual_seed(1)),
        model.log_prob(x, 16, torch.Generator().manual_seed(1)),
    )
    model.eval()
    assert model.estimator == "prior, K=300"
    torch.testing.assert_close(
        model.log_prob(x, generator=torch.Generator().manual_seed(1)),
        model.log_prob(x, 300, torch.Generator().manual_seed(1)),
    )
    iw = LatentVariableModel(3, 2, estimator="importance", eval_num_samples=4096).eval()
    assert iw.estimator == "importance, K=4096"
    exact = LatentVariableModel(3, 2, decoder="linear", estimator="exact")
    assert exact.estimator == "exact"
    torch.testing.assert_close(exact.log_prob(x, num_samples=5), exact.exact_log_prob(x))


def test_noise_std_floor_metrics_and_eval_metrics():
    model = LatentVariableModel(4, 2, decoder="linear", noise="diagonal", min_noise_std=0.1)
    torch.testing.assert_close(model.noise_std, torch.ones(4))
    with torch.no_grad():
        model.noise_log_excess.fill_(-50.0)
    assert bool((model.noise_std >= 0.1).all())
    model.noise_std = torch.tensor([0.2, 0.3, 0.4, 0.5])
    torch.testing.assert_close(model.noise_std, torch.tensor([0.2, 0.3, 0.4, 0.5]))
    assert model.metrics() == {"noise_std": pytest.approx(0.35)}
    x = torch.randn(9, 4)
    metrics = model.eval_metrics(x)
    assert set(metrics) == {"nll_exact"}
    torch.testing.assert_close(metrics["nll_exact"], -model.exact_log_prob(x).mean())


# ---------------------------------------------------------------------- sampling
def test_sample_is_reproducible_and_noise_false_gives_decoded_means():
    model = LatentVariableModel(3, 2, decoder="linear", noise="diagonal")
    a = model.sample(7, torch.Generator().manual_seed(0))
    b = model.sample(7, torch.Generator().manual_seed(0))
    assert a.shape == (7, 3) and not a.requires_grad and torch.equal(a, b)
    means = model.sample(7, torch.Generator().manual_seed(0), noise=False)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(means, model.decoder(z).detach())
    assert model.sample(0).shape == (0, 3)
    assert model.double().sample(2).dtype == torch.float64


def test_samples_have_the_model_covariance():
    model = LatentVariableModel(3, 2, decoder="linear", noise="diagonal").double()
    model.noise_std = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    x = model.sample(40_000, torch.Generator().manual_seed(1))
    weight, bias = model.decoder.weight.detach(), model.decoder.bias.detach()
    cov = weight @ weight.T + torch.diag(model.noise_std.detach().square())
    torch.testing.assert_close(x.mean(0), bias, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.06, rtol=0.03)


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_hparams_and_state_rebuild_the_model(estimator):
    model = LatentVariableModel(
        4, 3, hidden_sizes=[16], activation="tanh", noise="diagonal", estimator=estimator
    ).eval()
    hparams = model.hparams()
    assert yaml.safe_load(yaml.safe_dump(hparams)) == hparams  # plain Python values
    wrapped = Standardized(model, torch.zeros(4), 2 * torch.ones(4))
    clone = Standardized.from_state(wrapped.hparams(), wrapped.state_dict()).eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(
        clone.log_prob(x, num_samples=200, generator=torch.Generator().manual_seed(2)),
        wrapped.log_prob(x, num_samples=200, generator=torch.Generator().manual_seed(2)),
    )


def test_a_custom_decoder_cannot_be_rebuilt_from_hparams():
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = LatentVariableModel(3, 2, decoder=decoder)
    assert model.decoder is decoder and not model.is_linear
    assert model.hparams()["decoder"] is None
    with pytest.raises(ValueError, match="custom nn.Module decoder"):
        LatentVariableModel.from_state(model.hparams(), model.state_dict())


# ---------------------------------------------------------------------- configs
def test_model_config_lists_every_constructor_default():
    import inspect

    from hydra.utils import instantiate

    cfg = yaml.safe_load((CONFIGS / "model" / "lvm.yaml").read_text())
    assert cfg.pop("_target_") == "genmod.LatentVariableModel" and cfg.pop("_partial_") is True
    cfg.pop("lr", None)  # a training key (the optimizer's default lr), not an argument
    params = inspect.signature(LatentVariableModel).parameters
    defaults = {k: p.default for k, p in params.items() if k != "data_dim"}
    defaults["latent_dim"] = 2
    listed = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    assert listed == defaults
    factory = instantiate({"_target_": "genmod.LatentVariableModel", "_partial_": True, **cfg})
    assert factory(data_dim=5).hparams()["hidden_sizes"] == [64, 64]


def test_digits_experiment_builds_an_image_model():
    from hydra.utils import instantiate

    exp = yaml.safe_load((CONFIGS / "experiment" / "lvm_digits.yaml").read_text())
    assert {"override /data": "digits"} in exp["defaults"]
    assert {"override /model": "lvm"} in exp["defaults"]
    base = yaml.safe_load((CONFIGS / "model" / "lvm.yaml").read_text())
    base.pop("lr", None)
    model = instantiate({**base, **exp["model"]})(data_dim=64)
    assert model.estimator_type in ("prior", "importance") and model.latent_dim >= 8
    assert model.sample(4, noise=False).shape == (4, 64)
    assert instantiate(exp["optimizer"])(model.parameters()).defaults["lr"] > 0


# ---------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_cuda_float32_matches_float64_on_the_same_draws(estimator):
    model = LatentVariableModel(6, 3, noise="diagonal", estimator=estimator).cuda().eval()
    x = model.sample(64, torch.Generator(device="cuda").manual_seed(0))
    # Draws are made in the model's dtype, so float32 and float64 data see the same z.
    single = model.log_prob(x, 2000, torch.Generator(device="cuda").manual_seed(1))
    double = model.log_prob(x.double(), 2000, torch.Generator(device="cuda").manual_seed(1))
    assert single.device.type == "cuda" and single.dtype == torch.float32
    err = (single.double() - double).abs() / double.abs().clamp_min(1.0)
    assert float(err.max()) < 1e-4
    with pytest.raises(ValueError, match="generator"):
        model.log_prob(x, 10, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="x is on"):
        model.log_prob(x.cpu())
