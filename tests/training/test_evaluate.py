"""Evaluation and paired comparison, against scipy; figures; DensityModule's checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy import stats

from genmod import KDE, Gaussian, LatentVariableModel
from genmod.training import DensityModule
from genmod.training.evaluate import (
    find_runs,
    log_likelihoods,
    nll_summary,
    paired_difference,
    resolve_device,
    verdict,
)
from genmod.training.figures import image_grid_figure, sample_figure


@pytest.fixture
def pair(gen) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.randn(500, generator=gen, dtype=torch.float64) - 1.0
    b = a - 0.1 + 0.3 * torch.randn(500, generator=gen, dtype=torch.float64)
    return a, b


def test_paired_difference_is_the_paired_t_statistic(pair):
    a, b = pair
    diff = paired_difference(a, b)
    t = stats.ttest_rel(a.numpy(), b.numpy())
    assert diff["z"] == pytest.approx(t.statistic, rel=1e-10)
    assert diff["mean"] == pytest.approx(float((a - b).mean()), rel=1e-12)
    assert diff["p"] == pytest.approx(2 * stats.norm.sf(abs(t.statistic)), rel=1e-8)
    assert diff["n"] == 500 and diff["zero_a"] == diff["zero_b"] == 0


def test_nll_summary_matches_numpy(pair):
    a, _ = pair
    summary = nll_summary(a)
    assert summary["nll"] == pytest.approx(-a.numpy().mean(), rel=1e-12)
    assert summary["nll_se"] == pytest.approx(stats.sem(a.numpy()), rel=1e-10)
    assert summary["n"] == 500


def test_verdict_names_the_better_model_and_how_sure(pair):
    a, b = pair  # a is better by about 0.1 nats with standard error about 0.013
    line = verdict("A", "B", paired_difference(a, b))
    assert line.startswith("A is better than B by 0.") and "clear" in line
    flipped = verdict("B", "A", paired_difference(b, a))
    assert flipped.startswith("A is better than B")
    same = verdict("A", "C", paired_difference(a, a + 1e-3 * torch.randn(500).double()))
    assert same.startswith("No significant difference between A and C")


def test_zero_density_points_decide_the_comparison(pair):
    a, b = pair
    b = b.clone()
    b[:3] = -math.inf  # e.g. test points outside a compact kernel's support
    diff = paired_difference(a, b)
    assert diff["zero_b"] == 3 and diff["n"] == 497
    assert verdict("A", "B", diff).startswith("A is better: B gives zero density to 3")


def test_paired_difference_needs_the_same_examples(pair):
    with pytest.raises(ValueError, match="same examples"):
        paired_difference(pair[0], pair[1][:-1])


def test_log_likelihoods_batches_and_checks_arguments(gen):
    model = Gaussian(2).fit(torch.randn(100, 2, generator=gen))
    x = torch.randn(37, 2, generator=gen)
    with torch.no_grad():
        expected = model.log_prob(x).double()
    torch.testing.assert_close(log_likelihoods(model, x, batch_size=5), expected)
    with pytest.raises(ValueError, match="batch_size"):
        log_likelihoods(model, x, batch_size=0)
    with pytest.raises(ValueError, match="num_samples applies to Monte Carlo models"):
        log_likelihoods(model, x, num_samples=10)
    with pytest.raises(ValueError, match="model's dimension is 2"):
        log_likelihoods(model, torch.zeros(3, 4))


def test_log_likelihoods_passes_num_samples_to_monte_carlo_models(gen):
    model = LatentVariableModel(2, 1, decoder="linear").eval()
    x = torch.randn(8, 2, generator=gen)
    torch.manual_seed(0)
    small = log_likelihoods(model, x, num_samples=1)
    torch.manual_seed(0)
    large = log_likelihoods(model, x, num_samples=50000)
    exact = model.exact_log_prob(x).double().detach()
    assert (large - exact).abs().max() < (small - exact).abs().max()
    assert (large - exact).abs().max() < 0.05


def test_find_runs_expands_sweep_directories(tmp_path):
    for job in ("0", "1", "10", "2"):
        (tmp_path / "sweep" / job / "checkpoints").mkdir(parents=True)
    (tmp_path / "sweep" / ".hydra").mkdir()
    runs = find_runs(tmp_path / "sweep")
    assert [r.name for r in runs] == ["0", "1", "2", "10"]
    assert find_runs(tmp_path / "sweep" / "1") == [tmp_path / "sweep" / "1"]
    with pytest.raises(FileNotFoundError, match="run not found"):
        find_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no genmod runs"):
        find_runs(tmp_path / "empty")


def test_resolve_device_rejects_unknown_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("dim", "image_shape", "axes"),
    [(1, None, 1), (2, None, 3), (5, None, 1), (16, (4, 4), 1)],
)
def test_sample_figure_fits_the_data(gen, dim, image_shape, axes):
    data = torch.randn(200, dim, generator=gen)
    samples = torch.randn(9 if image_shape else 100, dim, generator=gen)
    model = Gaussian(dim).fit(data)

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return model.log_prob(x)

    fig = sample_figure(samples, image_shape=image_shape, data=data, log_density=log_density)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == axes  # heat-map + colour bar + samples for 2-D; images: a mosaic


def test_image_grid_is_a_mosaic_of_the_images(gen):
    images = torch.rand(10, 12, generator=gen) * 16  # ten 3x4 images, pixel units
    fig = image_grid_figure(images, (3, 4), value_range=(0.0, 16.0))
    mosaic = torch.as_tensor(fig.axes[0].images[0].get_array())
    assert mosaic.shape == (3 * 4 - 1, 4 * 5 - 1)  # 4 columns x 3 rows of tiles, 1-px gaps
    for k in range(10):
        r, c = divmod(k, 4)
        tile = mosaic[r * 4 : r * 4 + 3, c * 5 : c * 5 + 4]
        torch.testing.assert_close(tile, images[k].reshape(3, 4) / 16.0)
    assert float(mosaic[3].abs().max()) == 0.0  # the gap row between tile rows is blank


def test_density_module_rejects_switches_the_model_cannot_honour(gen):
    data = torch.randn(50, 2, generator=gen)
    with pytest.raises(ValueError, match="fit_closed_form=true, but KDE has no closed-form"):
        DensityModule(KDE(data, learn_bandwidth=True), fit_closed_form=True)
    with pytest.raises(ValueError, match="fit_bandwidth=true, but Gaussian has no bandwidth"):
        DensityModule(Gaussian(2), fit_bandwidth=True)
    with pytest.raises(ValueError, match="scale must have shape"):
        DensityModule(Gaussian(2), scale=torch.ones(3))
    with pytest.raises(ValueError, match="model must be a genmod DensityModel"):
        DensityModule(torch.nn.Linear(2, 2))


def test_density_module_training_modes(gen):
    data = torch.randn(50, 2, generator=gen)
    assert DensityModule(Gaussian(2), fit_closed_form=True).training_mode == "closed-form fit"
    assert DensityModule(Gaussian(2)).training_mode == "gradient descent"
    rule = DensityModule(KDE(data))
    assert rule.training_mode == "evaluation only" and rule.configure_optimizers() == []
    learned = DensityModule(KDE(data, learn_bandwidth=True))
    assert learned.automatic_optimization
    optimizer = learned.configure_optimizers()
    assert [p for group in optimizer.param_groups for p in group["params"]] == [
        learned.model.log_bandwidth
    ]
    np.testing.assert_allclose(rule.log_scale_sum, 0.0)


def test_estimator_label_names_the_k_used(gen):
    from genmod.training.evaluate import estimator_label

    lvm = LatentVariableModel(2, 1, decoder="linear").eval()
    assert estimator_label(lvm) == lvm.estimator == f"prior, K={lvm.eval_num_samples}"
    assert estimator_label(lvm, 10) == "prior, K=10"
    gaussian = Gaussian(2).fit(torch.randn(50, 2, generator=gen))
    assert estimator_label(gaussian, 10) == estimator_label(gaussian) == "exact"
