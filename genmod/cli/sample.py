"""``genmod-sample``: draw samples from a trained model, in data units.

    genmod-sample ckpt_path=outputs/train/runs/<run> n=1000

Writes ``samples.npy`` (``[n, D]``, float32) and ``samples.png`` (a density heat-map with
the samples for 2-D data, an image grid for images) to this command's run directory, or to
``out=PATH.npy`` and the picture beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genmod.cli._common import hydra_entry

__all__ = ["main", "sample_task", "sample_title"]

log = logging.getLogger(__name__)


def sample_title(model: str, n: int, shown: int, decoded_means: bool) -> str:
    """The picture's title: what it shows, e.g. ``"LatentVariableModel: 64 of 1000 decoded
    means"`` (``noise=false``: the decoder's means G(z), not samples of p(x))."""
    count = f"{shown} of {n}" if shown < n else f"{n}"
    return f"{model}: {count} {'decoded means' if decoded_means else 'samples'}"


def sample_task(cfg: DictConfig) -> dict[str, Any]:
    """Draw ``cfg.n`` samples from ``cfg.ckpt_path``; save them and their picture."""
    import numpy as np
    import torch

    from genmod.models.io import load_model, read_genmod_entry
    from genmod.training.callbacks import sample_kwargs
    from genmod.training.evaluate import load_split, resolve_device
    from genmod.training.figures import sample_figure

    n = cfg.n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    device = resolve_device(cfg.device)
    entry = read_genmod_entry(cfg.ckpt_path)
    model = load_model(entry["path"], map_location=device)
    image_shape = entry.get("image_shape")
    kwargs = sample_kwargs(model.model, images=True) if not cfg.noise else {}
    if not cfg.noise and not kwargs:
        raise ValueError(
            f"noise=false applies to latent-variable models, not {type(model.model).__name__}"
        )
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    with torch.no_grad():
        samples = model.sample(n, generator=generator, **kwargs).float().cpu()

    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "samples.npy"
    if out.suffix != ".npy":
        raise ValueError(f"out must end in .npy, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, samples.numpy())

    data = None
    if cfg.show_data and entry.get("data"):
        try:
            data = load_split(entry["data"], "test", stored=entry["path"])[0].float()
        except (OSError, ValueError) as err:
            log.warning("data not shown (%s)", " ".join(str(err).split()))

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.log_prob(part.to(device)).cpu() for part in x.split(4096)])

    shown = min(n, 64) if image_shape else n
    title = sample_title(type(model.model).__name__, n, shown, kwargs.get("noise") is False)
    fig = sample_figure(
        samples[:shown],
        image_shape=image_shape,
        data=data,
        log_density=log_density,
        title=title,
    )
    picture = out.with_suffix(".png")
    fig.savefig(picture, dpi=120)
    log.info("%d samples of %s written to %s (picture: %s)", n, entry["path"], out, picture)
    return {"samples": str(out), "picture": str(picture), "n": n, "dim": int(samples.shape[1])}


main = hydra_entry(sample_task, "sample", "genmod-sample")

if __name__ == "__main__":
    main()
