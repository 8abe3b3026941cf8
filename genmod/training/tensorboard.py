"""TensorBoard as a sweep's scoreboard: clean hyperparameters, a custom-scalars layout with
train and validation NLL on one chart, and no ``epoch`` scalar in front of the groups a user
opens (``train``, ``val``, ``test``, ``model``).

The HPARAMS tab shows the hyperparameters that differ between the runs under ``--logdir``
first, but only when no run claims the whole experiment's definition for itself: Lightning's
``log_hyperparams`` writes one per run (listing only its own values, so nothing "differs"
and the first five names in alphabetical order are shown). :func:`log_hparams` writes each
run's values and status only; TensorBoard then builds the experiment from all runs, and its
metric columns are the runs' scalars (``val/nll_best``, ``test/nll``, ``test/bpd``...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "LAYOUT",
    "METRICS",
    "TensorBoardLogger",
    "flat_hparams",
    "log_hparams",
    "swept_keys",
    "write_layout",
]

LAYOUT = {
    "NLL (nats per example, data units)": {
        "train and validation NLL": ["Multiline", ["^train/nll$", "^val/nll$"]],
        "best validation NLL so far": ["Multiline", ["^val/nll_best$"]],
    }
}
"""The custom-scalars layout (TensorBoard's CUSTOM SCALARS tab); tags are regular
expressions."""


HParam = int | float | str | bool


def _value(value: Any) -> HParam:
    """A hyperparameter as a user types it in an override: numbers and booleans as they are,
    ``null`` for None, lists and mappings in YAML-like flow style."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "null"
    return json.dumps(value, default=str).replace('"', "")


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, HParam]:
    """``config`` flattened to ``{"model.kernel": "tophat", "optimizer.lr": 0.05, ...}``, the
    keys spelled as command-line overrides, without Hydra's ``_target_`` / ``_partial_``
    (or any key starting with ``_``); values by :func:`_value`."""
    flat: dict[str, HParam] = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        else:
            flat[name] = _value(value)
    return flat


METRICS = ("val/nll_best", "test/nll", "test/nll_se", "test/bpd", "val/nll", "train/nll")
"""The HPARAMS tab's metric columns, in this order, in a sweep (their last values)."""


def swept_keys(argv: list[str]) -> set[str]:
    """The keys a ``-m`` command line sweeps (``model.kernel=a,b``, ``x=range(...)``...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    keys = set()
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except (HydraException, ValueError):
            continue
        if override.is_sweep_override():
            keys.add(override.get_key_element())
    return keys


def _experiment(summary: Any, varying: set[str]) -> Any:
    """The experiment summary of ``torch.utils.tensorboard.summary.hparams`` rewritten for a
    sweep: the swept hyperparameters first and marked as differing (the tab shows the first
    few), the metric columns :data:`METRICS`."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    infos = [
        api_pb2.HParamInfo.FromString(i.SerializeToString()) for i in data.experiment.hparam_infos
    ]
    infos.sort(key=lambda info: (info.name not in varying, info.name))
    for info in infos:
        info.differs = info.name in varying
    data.experiment.ClearField("hparam_infos")
    data.experiment.hparam_infos.extend(infos)
    data.experiment.ClearField("metric_infos")
    data.experiment.metric_infos.extend(
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in METRICS
    )
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


def log_hparams(
    writer: SummaryWriter, params: dict[str, Any], step: int = 0, varying: set[str] | None = None
) -> None:
    """Write the run's hyperparameters (a flat dict) and a successful-run status for the
    HPARAMS tab. Outside a sweep (``varying`` None) no experiment definition is written, so
    TensorBoard builds it from all runs under ``--logdir`` (differing hyperparameters first,
    every scalar a metric). In a sweep, each job writes the same definition: the swept keys
    ``varying`` first, then the rest, and the metric columns :data:`METRICS`."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(params, {})
    file_writer = writer._get_file_writer()
    if varying is not None:
        file_writer.add_summary(_experiment(experiment, varying), step)
    file_writer.add_summary(start, step)
    file_writer.add_summary(end, step)


def write_layout(writer: SummaryWriter) -> None:
    """Write :data:`LAYOUT` to the run (TensorBoard merges the runs' layouts by title)."""
    writer.add_custom_scalars(LAYOUT)


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without the ``epoch`` scalar Lightning adds to every
    write (it would sort before ``model``, ``test``, ``train`` and ``val`` and be the group
    TensorBoard opens; the CSV log keeps it). Arguments are Lightning's."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
