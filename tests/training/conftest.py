"""Compose ``train.yaml`` with Hydra's compose API into a temporary run directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from genmod.cli import config_dir

TINY_DATA = ("data.n_samples=400", "data.batch_size=64", "data.eval_batch_size=256")
"""A 400-point toy: 320 training points in 5 batches."""

TINY = (
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.density_figures.grid_size=24",
    "callbacks.density_figures.num_samples=100",
    "callbacks.density_figures.max_time_share=null",  # every epoch drawn, whatever the time
)
"""Overrides that make a run take seconds: one epoch, small figures, no progress bar."""


def compose_train(
    output_dir: Path, *overrides: str, data: tuple[str, ...] = TINY_DATA
) -> DictConfig:
    """``train.yaml`` with :data:`TINY`, ``data`` and ``overrides``, writing to ``output_dir``."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(
            "train", overrides=[f"paths.output_dir={output_dir}", *TINY, *data, *overrides]
        )


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``train_cfg(*overrides, name="run", data=TINY_DATA)``: a tiny config writing to
    ``tmp_path / name``."""

    def make(*overrides: str, name: str = "run", data: tuple[str, ...] = TINY_DATA) -> DictConfig:
        return compose_train(tmp_path / name, *overrides, data=data)

    return make
