"""One training run from a composed config: fit, test, log, summarise."""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig

from genmod.models.io import genmod_entry, load_checkpoint, model_class_name
from genmod.training.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    to_container,
)
from genmod.training.console import print_table
from genmod.training.module import DensityModule
from genmod.training.tensorboard import flat_hparams, log_hparams, swept_keys, write_layout

__all__ = ["check_resumable", "resume_directory", "train", "write_metrics"]

log = logging.getLogger(__name__)


def _float(value: Any) -> Any:
    """A JSON-ready copy: tensors as numbers, inf / nan as strings (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _float(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_float(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics`` to ``path`` as JSON (tensors as numbers, inf / nan as strings)."""
    path.write_text(json.dumps(_float(metrics), indent=2) + "\n")


def _relative(path: str | Path | None, root: Path) -> str | None:
    if not path:
        return None
    path = Path(path).resolve()
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    """The configuration worth comparing runs by, for TensorBoard's HPARAMS tab, flat and
    spelled as overrides (``model.kernel``, ``trainer.max_epochs``), without ``_target_``;
    under Hydra also the config group choices (``model``: ``kde``, ``data``: ``moons``)."""
    keys = ("model", "data", "optimizer", "scheduler", "seed")
    params = {key: to_container(cfg.get(key)) for key in keys}
    params["trainer"] = {
        key: to_container(cfg.trainer.get(key))
        for key in ("max_epochs", "accelerator", "devices", "precision")
    }
    flat = flat_hparams(params)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        flat.update({g: str(choices[g]) for g in ("model", "data", "optimizer") if g in choices})
    return flat


def _sweep_dir() -> Path | None:
    """The sweep directory when this run is a job of a Hydra multirun, else ``None``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).resolve()


def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    return trainer.checkpoint_callback if trainer.checkpoint_callbacks else None


def _log_final(
    trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any], summary: str
) -> str | None:
    """Hyperparameters (their metric columns are the run's scalars: ``val/nll_best``,
    ``test/nll``, ...) and the summary as text, to TensorBoard; returns the TensorBoard log
    directory (or ``None`` without a TensorBoard logger)."""
    logdir = None
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        logdir = logdir or str(Path(logger.log_dir))
        if trainer.is_global_zero:
            varying = swept_keys(sys.argv[1:]) if _sweep_dir() is not None else None
            log_hparams(logger.experiment, _hparams(cfg), trainer.global_step, varying)
            logger.experiment.add_text("summary", f"```\n{summary}\n```", trainer.global_step)
        logger.finalize("success")
    return logdir


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, float | int) else str(value)


def _summary(module: DensityModule, datamodule: Any, metrics: dict[str, Any]) -> str:
    model = module.model
    describe = getattr(datamodule, "describe", lambda: type(datamodule).__name__)()
    lines = [
        f"{type(model).__name__} ({module.training_mode}) on {describe}",
        f"likelihood estimator: {metrics['estimator']}; NLL in nats per example, data units",
    ]
    rows: list[tuple[str, str]] = []
    for key in ("val/nll_best", "test/nll", "test/bpd"):
        if key in metrics:
            extra = ""
            if key == "test/nll" and "test/nll_se" in metrics:
                extra = f" +- {_fmt(metrics['test/nll_se'])}"
            rows.append((key, _fmt(metrics[key]) + extra))
    skip = ("test/nll_se", "val/nll_best")
    for key, value in metrics.items():
        if key.startswith(("model/", "test/nll_", "val/nll_")) and key not in skip:
            rows.append((key, _fmt(value, ".6g")))
    width = max(len(key) for key, _ in rows) + 2 if rows else 0
    lines += [f"  {key:<{width}}{value}" for key, value in rows]
    return "\n".join(lines)


class _DropTips(logging.Filter):
    """Drops Lightning's advertising tips from the log (they are not about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def resume_directory(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<file>.ckpt`` with the
    run's ``tensorboard/``, ``.hydra/`` or ``metrics.json`` beside it), else ``None``."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints":
        return None
    markers = ("metrics.json", "tensorboard", ".hydra")
    return run if any((run / marker).exists() for marker in markers) else None


_TRAINING_STATE = ("state_dict", "loops", "epoch", "global_step")


def check_resumable(checkpoint: dict[str, Any], path: str | Path, module: DensityModule) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``checkpoint`` is a genmod training
    checkpoint of the same model class with the same parameter and buffer shapes as
    ``module``'s (the same data dimension and model settings): Lightning would otherwise fail
    mid-run with a traceback, after writing to the run directory."""
    missing = [key for key in _TRAINING_STATE if key not in checkpoint]
    if missing:
        raise ValueError(
            f"ckpt_path: {path} holds no training state ({', '.join(missing)} missing): "
            "resume from a checkpoint written by genmod-train"
        )
    entry = genmod_entry(checkpoint, path)
    here = model_class_name(module.model)
    if entry["model_class"] != here:
        raise ValueError(
            f"ckpt_path: {path} holds a {entry['model_class']}, but this run builds a {here}; "
            "pass the model= and data= settings of the run that wrote it"
        )
    saved, own = checkpoint["state_dict"], module.state_dict()
    for key in sorted(set(saved) | set(own)):
        if key not in saved or key not in own:
            where = "this run's model" if key not in saved else "the checkpoint"
            raise ValueError(f"ckpt_path: {path} does not fit this run: {key} only in {where}")
        if tuple(saved[key].shape) != tuple(own[key].shape):
            raise ValueError(
                f"ckpt_path: {path} does not fit this run: {key} has shape "
                f"{list(saved[key].shape)} there, {list(own[key].shape)} here (another data "
                "dimension or model setting)"
            )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and record one run described by a composed ``train.yaml`` config.

    Steps: seed everything (``seed``, also the dataloader workers); build and set up the
    datamodule; build the model, its :class:`DensityModule` and the Trainer; fit (resuming
    from ``ckpt_path`` when set: a checkpoint of a genmod run continues in that run's
    directory, so its checkpoints, TensorBoard curves and metrics.json carry on); test the
    best checkpoint (``test: true``); log the hyperparameters with the final metrics to
    TensorBoard; write ``metrics.json`` to ``paths.output_dir`` and log a summary whose last
    line says where the run went.

    Returns:
        The final metrics (nats per example, data units) with ``estimator``, ``model``,
        and checkpoint paths relative to the run directory.

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        ValueError: a config value is invalid (the message names it).
    """
    _quiet_lightning()
    ckpt_path = cfg.get("ckpt_path")
    resume_from = None
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path not found: {ckpt_path}")
        resume_from = load_checkpoint(ckpt_path)  # weights_only: no code runs
        genmod_entry(resume_from, ckpt_path)
        run_dir = resume_directory(ckpt_path)
        if run_dir is not None:
            cfg = copy.deepcopy(cfg)
            cfg.paths.output_dir = str(run_dir)
            log.info(
                "Resuming %s: checkpoints, TensorBoard and metrics.json continue there", run_dir
            )
    output_dir = Path(cfg.paths.output_dir).resolve()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg.data)
    log.info("Data: %s", datamodule.describe() if hasattr(datamodule, "describe") else "ready")
    module = build_module(cfg, datamodule)
    if resume_from is not None:
        check_resumable(resume_from, ckpt_path, module)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(
        cfg.trainer, build_callbacks(cfg.get("callbacks")), build_loggers(cfg.get("logger"))
    )
    if trainer.is_global_zero and ckpt_path is None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_layout(logger.experiment)
    log.info(
        "Model: %s (%s), likelihood estimator: %s",
        type(module.model).__name__,
        module.training_mode,
        module.model.estimator,
    )
    with warnings.catch_warnings():
        # In-memory tensors: worker processes would only add start-up time.
        warnings.filterwarnings("ignore", ".*does not have many workers.*", PossibleUserWarning)
        # Raised inside Lightning's own use of torch's pytree API; nothing a user can change.
        warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*", FutureWarning)
        # DDP: the module drops the distributed sampler's repeated examples from its metrics.
        warnings.filterwarnings("ignore", ".*each sample/batch gets evaluated exactly once.*")
        if ckpt_path is not None:  # resuming in place: the directory holds this run's files
            warnings.filterwarnings("ignore", "Checkpoint directory .* is not empty", UserWarning)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics: dict[str, Any] = {k: _float(v) for k, v in trainer.callback_metrics.items()}
        checkpoint = _checkpoint_callback(trainer)
        # A model without gradient steps is final after its one epoch: its last checkpoint
        # is its best (Lightning saves no top-k checkpoint before the first step).
        best = (checkpoint.best_model_path or checkpoint.last_model_path) if checkpoint else ""
        # Read before testing: trainer.test restores the best checkpoint's callback states.
        last = checkpoint.last_model_path if checkpoint is not None else None
        if cfg.get("test", True):
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: _float(v) for k, v in trainer.callback_metrics.items()})

    module.model.eval()
    metrics.update(
        {
            "model": type(module.model).__name__,
            "estimator": module.model.estimator,
            "training": module.training_mode,
            "dim": int(module.model.dim),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "best_checkpoint": _relative(best, output_dir),
            "last_checkpoint": _relative(last, output_dir),
        }
    )
    if "val/nll_best" not in metrics and math.isfinite(module.val_nll_best):
        metrics["val/nll_best"] = module.val_nll_best
    summary = _summary(module, datamodule, metrics)
    logdir = _log_final(trainer, cfg, metrics, summary)
    metrics["tensorboard"] = _relative(logdir, output_dir)
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
        where = f"Run saved in {output_dir}"
        if logdir is not None:
            sweep = _sweep_dir()
            shown = f"{sweep} (the whole sweep)" if sweep is not None else logdir
            where += f"; see it with: tensorboard --logdir {shown}"
        print_table(f"{summary}\n{where}", log)
    return metrics
