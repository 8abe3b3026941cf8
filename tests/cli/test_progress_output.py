"""Progress on long waits (silent API by default, opt-in reporters, CLI lines off a terminal),
plain console output, and TensorBoard logs that tell a sweep's runs apart."""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from genmod import KDE
from genmod.cli import sample, train
from genmod.cli._common import sweep_subdir
from genmod.cli.sample import sample_title
from genmod.progress import LOGGER, LogReporter, Task, Update, reporting, resolve
from genmod.training.evaluate import find_runs, log_likelihoods
from genmod.training.tensorboard import flat_hparams
from tests.training.conftest import TINY, TINY_DATA

QUICK = (*TINY, *TINY_DATA)


@pytest.fixture
def kde() -> KDE:
    return KDE(torch.randn(150, 2, generator=torch.Generator().manual_seed(0)))


def test_the_api_is_silent_by_default(kde, capsys, caplog):
    caplog.set_level(logging.WARNING)  # an application's usual level
    assert resolve(None) is None
    kde.fit_bandwidth()
    log_likelihoods(kde, torch.randn(50, 2), batch_size=10)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith(LOGGER)]


def test_a_callable_gets_every_search_step_with_h_and_the_objective(kde):
    updates: list[Update] = []
    kde.fit_bandwidth(progress=updates.append)
    steps = [u for u in updates if not u.finished]
    assert len(steps) >= 11  # the grid alone has 11 points
    assert [u.done for u in steps] == list(range(1, len(steps) + 1))
    assert updates[-1].finished and updates[-1].done == len(steps)
    assert all(u.info["h"] > 0 and math.isfinite(u.info["objective"]) for u in steps[5:9])
    # The bandwidth chosen is the best float64 point reported, or the vertex of the float64
    # parabola through it and its neighbours (not evaluated again): within rtol of it.
    best = max(steps[-4:], key=lambda u: u.info["objective"])
    assert best.info["h"] == pytest.approx(float(kde.bandwidth), rel=1e-3)
    assert "h " in str(steps[0]) and "objective " in str(steps[0])


def test_logging_opt_in_and_progress_true_print_throttled_lines(kde, caplog, capsys, monkeypatch):
    monkeypatch.setenv("GENMOD_PROGRESS_EVERY", "0")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        kde.fit_bandwidth()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) >= 12 and lines[-1].endswith("s") and "done in" in lines[-1]

    kde.fit_bandwidth(progress=True)  # stderr is not a terminal here: plain lines
    err = capsys.readouterr().err
    assert err.count("bandwidth search") >= 12 and "\r" not in err

    monkeypatch.setenv("GENMOD_PROGRESS_EVERY", "60")  # a wait shorter than that: no line
    kde.fit_bandwidth(progress=True)
    assert capsys.readouterr().err == ""


def test_log_reporter_throttles_by_elapsed_time():
    seen: list[str] = []
    reporter = LogReporter(logging.getLogger("genmod.progress.test"), every=5.0)
    reporter.logger.info = lambda fmt, update: seen.append(str(update))  # type: ignore[method-assign]
    for elapsed in (0.1, 4.9, 5.2, 7.0, 10.3):
        reporter(Update("wait", 1, None, elapsed=elapsed))
    reporter(Update("wait", 1, None, elapsed=11.0, finished=True))
    reporter(Update("short", 1, None, elapsed=0.5, finished=True))
    assert [s.split("; ")[-1] for s in seen] == ["5.2 s so far", "10.3 s so far", "done in 11.0 s"]


def test_reporting_installs_a_reporter_for_nested_calls_and_rejects_junk(kde):
    got: list[Update] = []

    def reporter(update: Update) -> None:
        got.append(update)

    with reporting(reporter):
        with Task("outer", total=2) as task:
            task.update(2, value=1.0)
        log_likelihoods(kde, torch.randn(30, 2), batch_size=10)
    assert resolve(None) is not reporter  # the block's reporter is gone after it
    names = {u.task for u in got}
    assert names == {"outer", "log-likelihood of 30 examples (KDE)"}
    final = [u for u in got if u.finished and u.task.startswith("log-likelihood")][0]
    assert final.done == 30 and final.total == 30 and final.info["nll"] > 0
    with pytest.raises(ValueError, match="progress must be"):
        resolve("yes")  # type: ignore[arg-type]


def _events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_cli_output_off_a_terminal_has_lines_not_bars_and_a_plain_summary(
    cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("GENMOD_PROGRESS_EVERY", "0")
    run = tmp_path / "run"
    argv = [a for a in QUICK if not a.startswith("trainer.enable_progress_bar")]
    status, out, err = cli(
        train, *argv, "model.fit_bandwidth=true", "model.learn_bandwidth=false",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    assert status == 0, err
    search = [line for line in out.splitlines() if "] bandwidth search (" in line]
    assert len(search) >= 12 and all("h " in s and "objective " in s for s in search[:-1])
    assert "[genmod.progress][INFO]" in search[0] and "done in" in search[-1]
    assert "epoch 1/1: train/nll" in out and "\r" not in out + err
    summary = out[out.index("KDE (bandwidth search) on moons") :]
    assert "\n  test/nll " in summary and "[genmod" not in summary
    assert "test/nll" in (run / "train.log").read_text()  # the log file keeps the summary

    # TensorBoard: flat hyperparameters as typed, no experiment claimed by one run, the
    # custom layout, and no ``epoch`` group before train / val / test.
    acc = _events(run)
    names, experiments = set(), 0
    for blob in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        experiments += data.HasField("experiment")
        if data.HasField("session_start_info"):
            hparams = data.session_start_info.hparams
            names |= set(hparams)
    assert experiments == 0
    assert {"model.kernel", "model.fit_bandwidth", "data.n_samples", "seed"} <= names
    assert not [n for n in names if "_target_" in n or "_partial_" in n or "/" in n]
    assert hparams["data.n_samples"].number_value == 400
    assert hparams["model.kernel"].string_value == "gaussian"
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    assert "epoch" not in acc.Tags()["scalars"]


def test_sweep_directories_are_named_by_the_overrides_that_vary(monkeypatch, tmp_path):
    argv = ["genmod-train", "-m", "model.kernel=gaussian,tophat", "trainer.max_epochs=3"]
    monkeypatch.setattr(sys, "argv", argv)
    job = ["model.kernel=tophat", "trainer.max_epochs=3"]
    assert sweep_subdir(1, job) == "1_model.kernel=tophat"
    monkeypatch.setattr(sys, "argv", ["genmod-train", "-m", "data.path=/a/b.npy,/c/d.npy"])
    assert sweep_subdir(0, ["data.path=/a/b.npy"]) == "0_data.path=_a_b.npy"
    monkeypatch.setattr(sys, "argv", ["python", "job.py"])  # a launcher in another process
    assert sweep_subdir(2, job) == "2_model.kernel=tophat_trainer.max_epochs=3"

    for name in ("10_model.kernel=a", "2_model.kernel=b", "0_model.kernel=c"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    assert [p.name.split("_")[0] for p in find_runs(tmp_path)] == ["0", "2", "10"]


def test_flat_hparams_spell_keys_as_overrides_and_keep_values_as_typed():
    config = {
        "model": {"_target_": "genmod.KDE", "_partial_": True, "kernel": "tophat", "lr": 0.05},
        "data": {"sizes": [1, 2], "path": None, "standardize": False},
        "seed": 0,
    }
    assert flat_hparams(config) == {
        "model.kernel": "tophat",
        "model.lr": 0.05,
        "data.sizes": "[1, 2]",
        "data.path": "null",
        "data.standardize": False,
        "seed": 0,
    }


def test_sample_titles_say_what_they_show():
    title = sample_title("LatentVariableModel", 64, 64, True)
    assert title == "LatentVariableModel: 64 decoded means"
    assert sample_title("KDE", 1000, 64, False) == "KDE: 64 of 1000 samples"


def test_sample_noise_false_of_a_latent_variable_model_is_titled_decoded_means(
    cli, tmp_path, monkeypatch
):
    from genmod.training import train as train_run
    from tests.training.conftest import compose_train

    run = tmp_path / "lvm"
    small = ("model.hidden_sizes=[8]", "model.num_samples=8", "model.eval_num_samples=16")
    train_run(
        compose_train(
            run, "model=lvm", *small, "test=false", "~callbacks.density_figures", "~logger"
        )
    )
    titles: list[str] = []
    import genmod.training.figures as figures

    original = figures.sample_figure

    def spy(*args, **kwargs):
        titles.append(kwargs["title"])
        return original(*args, **kwargs)

    monkeypatch.setattr(figures, "sample_figure", spy)
    out = f"hydra.run.dir={tmp_path / 's'}"
    status, _, err = cli(sample, f"ckpt_path={run}", "n=10", "noise=false", out)
    assert status == 0, err
    assert titles == ["LatentVariableModel: 10 decoded means"]


def test_a_long_title_of_an_image_grid_is_wrapped_inside_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from genmod.training.figures import image_grid_figure

    title = "LatentVariableModel, prior, K=4096: 64 decoded means, epoch 12"
    fig = image_grid_figure(torch.rand(64, 64), (8, 8), title=title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert fig._suptitle.get_text().replace("\n", " ") == title


def test_a_sweep_job_defines_the_experiment_with_the_swept_keys_and_nll_columns_first(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from genmod.training.tensorboard import METRICS, log_hparams

    params = {"data.n_samples": 400, "model.kernel": "tophat", "seed": 0, "model": "kde"}
    writer = SummaryWriter(str(tmp_path))
    log_hparams(writer, params, 3, varying={"model.kernel"})
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    blobs = [
        plugin_data_pb2.HParamsPluginData.FromString(blob)
        for blob in acc.PluginTagToContent("hparams").values()
    ]
    (experiment,) = [b.experiment for b in blobs if b.HasField("experiment")]
    names = [info.name for info in experiment.hparam_infos]
    assert names == ["model.kernel", "data.n_samples", "model", "seed"]
    assert [info.differs for info in experiment.hparam_infos] == [True, False, False, False]
    assert [m.name.tag for m in experiment.metric_infos] == list(METRICS)
    assert METRICS[0] == "val/nll_best"


def test_reading_a_large_csv_reports_the_rows_read(tmp_path):
    from genmod.data.files import load_array

    path = tmp_path / "big.csv"
    values = np.random.default_rng(0).normal(size=(40_001, 2))
    np.savetxt(path, values, delimiter=",", header="a,b", comments="")
    got: list[Update] = []
    with reporting(got.append):
        x = load_array(path)
    assert x.shape == (40_001, 2)
    assert [(u.done, u.finished) for u in got] == [(20_000, False), (40_000, False), (40_001, True)]
    assert got[0].task == "reading big.csv" and got[0].unit == "row"
