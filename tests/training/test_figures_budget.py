"""DensityFigures spends at most its share of the run's time on figures (issue 12), and the
final model's figure is always drawn."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

import genmod.training.callbacks as callbacks_module
from genmod.training import DensityFigures
from genmod.training.module import DensityModule


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(
    callback: DensityFigures,
    tmp_path,
    epochs: int,
    *,
    max_epochs: int,
    train_s: float,
    figure_s: float,
    clock: Clock,
) -> list[str]:
    """Drive the callback's hooks like a Trainer: ``epochs`` validation epochs, each after
    ``train_s`` seconds of training; each figure takes ``figure_s`` seconds."""
    titles: list[str] = []

    def figure(module, data, title=""):
        clock.now += figure_s
        titles.append(title)
        return Figure()

    callback.figure = figure  # type: ignore[method-assign]
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        max_epochs=max_epochs,
        loggers=[logger],
        global_step=0,
        datamodule=SimpleNamespace(val_data=None),
    )
    module = mock.MagicMock(spec=DensityModule)
    callback.on_train_start(trainer, module)
    for epoch in range(epochs):
        clock.now += train_s
        trainer.current_epoch, trainer.global_step = epoch, 10 * (epoch + 1)
        callback.on_validation_epoch_end(trainer, module)
    callback.on_train_end(trainer, module)
    return titles


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(callbacks_module.time, "perf_counter", c)
    return c


def test_figures_take_at_most_their_share_of_the_run(tmp_path, clock):
    titles = _run(
        DensityFigures(max_time_share=0.1, first_cost=1.0),
        tmp_path,
        30,
        max_epochs=30,
        train_s=2.0,
        figure_s=1.0,
        clock=clock,
    )
    spent = len(titles) * 1.0
    # The first figure once the run has lasted first_cost / share = 10 s: epoch 4.
    assert titles[0] == "epoch 4" and titles[-1] == "epoch 29"
    assert 2 < len(titles) < 30
    # At most the share, plus the final figure that is drawn regardless.
    assert spent <= 0.1 * clock.now + 1.0


def test_without_a_share_every_due_epoch_is_drawn(tmp_path, clock):
    titles = _run(
        DensityFigures(max_time_share=None, every_n_epochs=2),
        tmp_path,
        6,
        max_epochs=6,
        train_s=2.0,
        figure_s=1.0,
        clock=clock,
    )
    assert titles == ["epoch 0", "epoch 2", "epoch 4", "epoch 5"]


def test_the_final_model_is_drawn_after_early_stopping(tmp_path, clock):
    # Stopped at epoch 4 of 100 after 2.5 s: too short for a figure within 10% of it (the
    # first is assumed to take 0.5 s), so the end draws the final model, epoch 4, only.
    titles = _run(
        DensityFigures(max_time_share=0.1),
        tmp_path,
        5,
        max_epochs=100,
        train_s=0.5,
        figure_s=1.0,
        clock=clock,
    )
    assert titles == ["epoch 4"]
    # Nothing pending: the end draws nothing more.
    titles = _run(
        DensityFigures(max_time_share=None),
        tmp_path,
        3,
        max_epochs=100,
        train_s=1.0,
        figure_s=1.0,
        clock=clock,
    )
    assert titles == ["epoch 0", "epoch 1", "epoch 2"]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_max_time_share_is_checked(bad):
    with pytest.raises(ValueError, match="max_time_share"):
        DensityFigures(max_time_share=bad)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), True, "1"])
def test_first_cost_is_checked(bad):
    with pytest.raises(ValueError, match="first_cost"):
        DensityFigures(first_cost=bad)
