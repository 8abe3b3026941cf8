"""Where does ``genmod-train`` spend its time? Profile a KDE run on digits.

    python scripts/profile_train.py                      # KDE, learned bandwidth, digits
    python scripts/profile_train.py model=lvm trainer.max_epochs=1
    python scripts/profile_train.py data=moons trainer.max_epochs=30   # genmod-train's defaults

Runs the same code path as ``genmod-train`` (Hydra compose + ``genmod.training.train``)
under cProfile, then reports the wall time, the share spent inside
``genmod.ops.pairwise_logsumexp`` (forward and backward, all callers) and the functions
with the most exclusive time. Extra arguments are Hydra overrides.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time

from hydra import compose, initialize_config_dir

from genmod.cli import config_dir
from genmod.training import train

DEFAULTS = [
    "data=digits",
    "model=kde",
    "model.learn_bandwidth=true",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]

# Functions whose cumulative time is "in the kernel": the op's entry point and the
# autograd backward (called by the engine, not by pairwise_logsumexp).
KERNEL_FUNCS = (("pairwise.py", "pairwise_logsumexp"), ("_blocked.py", "backward"))
# The per-epoch figure of the model (DensityFigures), evaluation and rendering together.
FIGURE_FUNCS = (("callbacks.py", "_draw"),)  # every figure drawn, at any hook


def _cumulative(stats: pstats.Stats, funcs: tuple[tuple[str, str], ...]) -> float:
    total = 0.0
    for (file, _, func), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(file.endswith(f) and func == name for f, name in funcs):
            total += cum
    return total


def main(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"paths.output_dir={out}", *DEFAULTS, *argv]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        metrics = train(cfg)
        prof.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(prof)
    kernel = _cumulative(stats, KERNEL_FUNCS)
    figures = _cumulative(stats, FIGURE_FUNCS)
    print(f"overrides: {' '.join(DEFAULTS + argv)}")
    print(f"test/nll = {metrics.get('test/nll')} ({metrics.get('estimator')})")
    print(f"wall time of train(): {wall:.1f} s")
    print(f"inside pairwise_logsumexp (forward + backward): {kernel:.1f} s ({kernel / wall:.0%})")
    print(f"density figures (evaluation + rendering): {figures:.1f} s ({figures / wall:.0%})")
    print("\nTop functions by exclusive time:")
    stats.sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main(sys.argv[1:])
