"""``genmod-eval``: the NLL of a trained model on any split of any data config.

    genmod-eval ckpt_path=outputs/train/runs/<run>              # run dir or .ckpt; test split
    genmod-eval ckpt_path=<run> split=val data=circles

Prints the NLL (nats per example, data units) with its standard error, bits per dimension
and the likelihood estimator, and writes them to ``eval.json`` in this command's run directory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genmod.cli._common import hydra_entry

__all__ = ["eval_task", "main"]

log = logging.getLogger(__name__)


def eval_task(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; return and save the results."""
    import torch

    from genmod.models.io import load_model, read_genmod_entry
    from genmod.training.build import to_container
    from genmod.training.console import print_table
    from genmod.training.evaluate import (
        checkpoint_split,
        estimator_label,
        log_likelihoods,
        mean_eval_metrics,
        nll_summary,
        resolve_device,
        zero_density_note,
    )
    from genmod.training.run import write_metrics

    device = resolve_device(cfg.device)
    entry = read_genmod_entry(cfg.ckpt_path)
    model = load_model(entry["path"], map_location=device)
    x, datamodule, data_config = checkpoint_split(to_container(cfg.get("data")), entry, cfg.split)
    torch.manual_seed(cfg.seed)
    log_probs = log_likelihoods(
        model, x, batch_size=cfg.batch_size, num_samples=cfg.num_samples, device=device
    )
    summary = nll_summary(log_probs)
    extra = mean_eval_metrics(model, x, batch_size=cfg.batch_size, device=device)
    results = {
        "checkpoint": entry["path"],
        "model": type(model.model).__name__,
        "estimator": estimator_label(model, cfg.num_samples),
        "split": cfg.split,
        "data": datamodule.describe() if hasattr(datamodule, "describe") else str(data_config),
        f"{cfg.split}/nll": summary["nll"],
        f"{cfg.split}/nll_se": summary["nll_se"],
        f"{cfg.split}/bpd": summary["nll"] / (model.dim * math.log(2.0)),
        "n": summary["n"],
        **{f"{cfg.split}/{k}": v for k, v in extra.items()},
    }
    if summary["zero_density"]:
        results[f"{cfg.split}/zero_density"] = summary["zero_density"]
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "eval.json", results)
    if cfg.split == "train" and results["model"] == "KDE":
        log.warning("a KDE's own training points include their own kernel: use val or test")
    note = zero_density_note(summary)
    if note:
        log.warning(note)
    lines = [f"{results['model']} ({results['estimator']}) on {results['data']}"]
    if note:
        lines.append(f"{cfg.split}/nll = inf nats/example ({summary['n']} examples)")
    else:
        lines.append(
            f"{cfg.split}/nll = {summary['nll']:.4f} +- {summary['nll_se']:.4f} nats/example "
            f"({summary['n']} examples), {results[f'{cfg.split}/bpd']:.4f} bits/dim"
        )
    lines += [f"{cfg.split}/{key} = {value:.4f}" for key, value in extra.items()]
    lines.append(f"Results written to {out / 'eval.json'}")
    print_table("\n".join(lines), log)
    return results


main = hydra_entry(eval_task, "eval", "genmod-eval")

if __name__ == "__main__":
    main()
