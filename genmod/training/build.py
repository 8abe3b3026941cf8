"""Build the datamodule, model, LightningModule and Trainer of a run from its Hydra config."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genmod.models.base import DensityModel
from genmod.training.checkpoint_io import AtomicCheckpointIO
from genmod.training.module import DensityModule

__all__ = [
    "MODEL_SWITCHES",
    "MODEL_TRAINING_KEYS",
    "build_callbacks",
    "build_datamodule",
    "build_loggers",
    "build_model",
    "build_module",
    "build_trainer",
    "check_arguments",
    "data_config",
    "to_container",
]

MODEL_SWITCHES = ("fit_closed_form", "fit_bandwidth")
"""Boolean keys of the ``model`` config that steer training (not constructor arguments)."""

MODEL_TRAINING_KEYS = ("lr",)
"""Other training keys of the ``model`` config, read by other config groups (the optimizer's
learning rate defaults to ``model.lr``) and removed before the model is built."""

_DATA_ARGUMENTS = {"data": "train_data", "data_dim": "dim", "dim": "dim"}
"""Constructor argument -> datamodule attribute filled in when the config leaves it out."""


_SIMPLE = (int, float, str, bool, type(None))


def _simple_types(hint: Any) -> tuple[type, ...] | None:
    """The plain types a type hint admits, or ``None`` when it admits anything else."""
    if hint in _SIMPLE:
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if all(arg in _SIMPLE for arg in args):
            return args
    return None


def check_arguments(target: Any, values: dict[str, Any], group: str) -> None:
    """Raise ``ValueError`` naming ``group.key`` for a key ``target`` does not take, or a
    value whose type its plain annotation (int, float, str, bool, optional) rules out."""
    parameters = inspect.signature(target).parameters
    name = getattr(target, "__name__", str(target))
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(values) - set(parameters))
        if unknown:
            raise ValueError(f"{group}.{unknown[0]} is not an argument of {name}")
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # unresolvable forward references: nothing to check against
        return
    for key, value in values.items():
        allowed = _simple_types(hints.get(key))
        if allowed is None:
            continue
        if float in allowed and int not in allowed:
            allowed = (*allowed, int)
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{group}.{key} must be {names}, got {value!r}")


def to_container(cfg: Any) -> Any:
    """A resolved plain-Python copy of an OmegaConf node (other values pass through)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build_datamodule(data_cfg: Any) -> L.LightningDataModule:
    """Instantiate the ``data`` config (e.g. :class:`genmod.data.DensityDataModule`) and set
    it up, so that its ``train_data``, ``dim`` and standardisation are available."""
    datamodule = instantiate(to_container(data_cfg))
    if not isinstance(datamodule, L.LightningDataModule):
        raise ValueError("data._target_ must build a LightningDataModule")
    datamodule.prepare_data()
    datamodule.setup("fit")
    for attribute in ("train_data", "dim", "mean", "scale"):
        if not hasattr(datamodule, attribute):
            raise ValueError(f"data: the datamodule has no {attribute!r} (see DensityDataModule)")
    return datamodule


def build_model(model_cfg: Any, datamodule: Any) -> tuple[DensityModel, dict[str, bool]]:
    """Instantiate the ``model`` config with its data-dependent argument filled in.

    The config's ``_target_`` is called as a partial; whichever of ``data`` (the
    standardised training tensor, for a KDE), ``data_dim`` or ``dim`` (the data dimension)
    its signature takes and the config does not set is supplied from ``datamodule``.
    Training switches (:data:`MODEL_SWITCHES`) are removed first and returned.

    Returns:
        ``(model, switches)`` with ``switches`` the boolean training switches.

    Raises:
        ValueError: naming ``model`` when the target is not a :class:`DensityModel` or a
            switch is not a boolean.
    """
    cfg = dict(to_container(model_cfg))
    switches = {}
    for key in MODEL_SWITCHES:
        value = cfg.pop(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"model.{key} must be true or false, got {value!r}")
        switches[key] = value
    for key in MODEL_TRAINING_KEYS:
        cfg.pop(key, None)
    cfg["_partial_"] = True
    factory = instantiate(cfg)
    target = getattr(factory, "func", None)
    if not (isinstance(target, type) and issubclass(target, DensityModel)):
        raise ValueError(f"model._target_ must be a genmod DensityModel class, got {target!r}")
    check_arguments(target, dict(factory.keywords), "model")
    parameters = inspect.signature(target).parameters
    given = set(factory.keywords)
    extra = {
        name: getattr(datamodule, attribute)
        for name, attribute in _DATA_ARGUMENTS.items()
        if name in parameters and name not in given
    }
    return factory(**extra), switches


def data_config(data_cfg: Any) -> dict[str, Any]:
    """The resolved data config as plain Python, with a file ``path`` made absolute so the
    checkpoint that stores it can be evaluated from any working directory."""
    config = dict(to_container(data_cfg))
    if config.get("path"):
        config["path"] = str(Path(config["path"]).expanduser().resolve())
    return config


def build_module(cfg: DictConfig, datamodule: Any) -> DensityModule:
    """The :class:`DensityModule` of a run: model, optimizer and scheduler partials,
    training switches, standardisation, and the data config kept for checkpoints."""
    model, switches = build_model(cfg.model, datamodule)
    optimizer = instantiate(to_container(cfg.get("optimizer"))) if cfg.get("optimizer") else None
    scheduler = instantiate(to_container(cfg.get("scheduler"))) if cfg.get("scheduler") else None
    return DensityModule(
        model,
        optimizer=optimizer,
        scheduler=scheduler,
        mean=datamodule.mean,
        scale=datamodule.scale,
        data_config=data_config(cfg.data),
        image_shape=getattr(datamodule, "image_shape", None),
        **switches,
    )


def _instantiate_group(group_cfg: Any, what: str) -> list[Any]:
    objects = []
    for name, entry in (to_container(group_cfg) or {}).items():
        if isinstance(entry, dict) and "_target_" in entry:
            objects.append(instantiate(entry))
        elif entry is not None:
            raise ValueError(f"{what}.{name} must be a config with a _target_")
    return objects


def build_callbacks(callbacks_cfg: Any) -> list[L.Callback]:
    """Instantiate every entry of the ``callbacks`` group that has a ``_target_``."""
    return _instantiate_group(callbacks_cfg, "callbacks")


def build_loggers(logger_cfg: Any) -> list[Any]:
    """Instantiate every entry of the ``logger`` group that has a ``_target_``."""
    return _instantiate_group(logger_cfg, "logger")


def _stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


def build_trainer(trainer_cfg: Any, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    """Instantiate the ``trainer`` config with the given callbacks and loggers, and
    crash-safe checkpoint files (:class:`AtomicCheckpointIO`) unless it sets ``plugins``.

    With ``enable_progress_bar: true`` and a stdout that is not a terminal (a log file, CI, a
    notebook), Lightning's bar, which would write a redraw per step, is replaced by one plain
    line per epoch (:class:`~genmod.training.callbacks.EpochLines`)."""
    from genmod.training.callbacks import EpochLines

    config = to_container(trainer_cfg)
    arguments = {k: v for k, v in config.items() if not k.startswith("_")}
    check_arguments(L.Trainer, arguments, "trainer")
    plugins = {} if "plugins" in arguments else {"plugins": [AtomicCheckpointIO()]}
    if config.get("enable_progress_bar", True) and not _stdout_is_terminal():
        config["enable_progress_bar"] = False
        callbacks = [*callbacks, EpochLines()]
    trainer = instantiate(config, callbacks=callbacks, logger=loggers or False, **plugins)
    if not isinstance(trainer, L.Trainer):
        raise ValueError("trainer._target_ must build a lightning.pytorch.Trainer")
    return trainer
