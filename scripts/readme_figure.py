"""The README's picture: the density figure of the default run (``genmod-train`` with no
overrides: a KDE with a learned bandwidth on two moons), as TensorBoard shows it at the end.

    python scripts/readme_figure.py                      # trains the default run first
    python scripts/readme_figure.py --run outputs/train/runs/<run>   # an existing run
    python scripts/readme_figure.py --out docs/img/default_run.png --dpi 72

Left: the model density p(x) (data units) as a heat-map with the test points; right: the
model's samples beside the test points. Written small (< 150 KB) for the repository.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genmod.cli._common import config_dir  # noqa: E402
from genmod.models.io import load_model, read_genmod_entry  # noqa: E402
from genmod.training.evaluate import load_split  # noqa: E402
from genmod.training.figures import density_figure  # noqa: E402

LIMIT_BYTES = 150_000


def train_default(root: Path) -> Path:
    """Train the default run (no overrides; no TensorBoard, no figures) under ``root``."""
    from hydra import compose, initialize_config_dir

    from genmod.training import train

    run = root / "default_run"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={run}", "~logger", "~callbacks.density_figures"],
        )
    train(cfg)
    return run


def figure(run: Path, samples: int, seed: int):
    """The density figure of the run's best checkpoint: heat-map, test points, samples."""
    entry = read_genmod_entry(run)
    model = load_model(entry["path"])
    test = load_split(entry["data"], "test", stored=entry["path"])[0].float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        drawn = model.sample(samples, generator=generator).float()

    def log_density(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.log_prob(part) for part in x.split(4096)])

    inner = model.model
    h = float(inner.bandwidth.detach().mean()) if hasattr(inner, "bandwidth") else None
    title = f"{type(inner).__name__} ({getattr(inner, 'kernel', '')} kernel"
    title += f", h = {h:.3f} in standardised units)" if h is not None else ")"
    return density_figure(log_density, test, drawn, grid_size=150, title=f"{title} on two moons")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a genmod-train run directory or checkpoint")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "default_run.png")
    parser.add_argument("--dpi", type=int, default=72)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the run's progress lines

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run if args.run is not None else train_default(Path(tmp))
        fig = figure(run, args.samples, args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=args.dpi)
    size = args.out.stat().st_size
    print(f"{args.out}: {size / 1000:.0f} KB")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{args.out} is over {LIMIT_BYTES // 1000} KB: lower --dpi")


if __name__ == "__main__":
    main()
