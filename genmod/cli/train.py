"""``genmod-train``: fit a density model by maximum likelihood from the command line.

    genmod-train                                  # KDE with a learned bandwidth on two moons
    genmod-train model=gaussian data=circles
    genmod-train -m model.kernel=gaussian,epanechnikov
    python -m genmod.cli.train --help

The configuration is ``configs/train.yaml`` (see the README's configuration reference).
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from genmod.cli._common import hydra_entry

__all__ = ["main", "train_task"]


def train_task(cfg: DictConfig) -> float:
    """Train, test and record one run; return ``val/nll_best`` (nats per example, data
    units) for Hydra sweepers to minimise (``inf`` when no validation ran)."""
    from genmod.training.run import train

    metrics: dict[str, Any] = train(cfg)
    best = metrics.get("val/nll_best")
    return float(best) if isinstance(best, int | float) else math.inf


main = hydra_entry(train_task, "train", "genmod-train")

if __name__ == "__main__":
    main()
