"""Checking and normalising the arguments of :class:`genmod.data.DensityDataModule`."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from typing import Any

from genmod.data.files import DataError
from genmod.data.preprocess import split_sizes
from genmod.data.toys import TOY_DATASETS

__all__ = ["DATA_TARGETS", "DATASETS", "check_options", "check_stored_config"]

DATASETS: tuple[str, ...] = (*TOY_DATASETS, "digits", "file")
"""Values of ``DensityDataModule(name=...)``."""


def _int_at_least(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _noise(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if name not in TOY_DATASETS:
        raise DataError(f"noise applies to the toy datasets only, got name={name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"noise must be a number or None, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise DataError(f"noise must be finite and >= 0, got {value}")
    return float(value)


def _image_shape(value: Sequence[int] | None, name: str) -> list[int] | None:
    if value is None:
        return None
    if name in TOY_DATASETS:
        raise DataError("image_shape applies to digits and file data, not to the 2-D toys")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise DataError(f"image_shape must be a list of ints such as [8, 8], got {value!r}")
    shape = list(value)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise DataError(f"image_shape must be a list of ints such as [8, 8], got {value!r}")
    if min(shape) < 1:
        raise DataError(f"image_shape must be positive, got {shape}")
    return [int(s) for s in shape]


def check_options(
    *,
    name: Any,
    path: Any,
    n_samples: Any,
    noise: Any,
    val_fraction: Any,
    test_fraction: Any,
    standardize: Any,
    dequantize: Any,
    batch_size: Any,
    eval_batch_size: Any,
    seed: Any,
    num_workers: Any,
    image_shape: Any,
) -> dict[str, Any]:
    """Validate the data-module arguments and return them as plain Python values.

    ``path`` becomes a ``str``, ``seed=None`` becomes 0, ``image_shape`` a list of ints.

    Raises:
        DataError: one line naming the first invalid argument.
    """
    if name not in DATASETS:
        raise DataError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    if name == "file" and path is None:
        raise DataError("path is required with name='file' (data=file data.path=FILE)")
    if name != "file" and path is not None:
        raise DataError(f"path is only used with name='file', got name={name!r}")
    try:
        split_sizes(1, val_fraction, test_fraction)
    except ValueError as err:
        raise DataError(str(err)) from None
    for flag, value in (("standardize", standardize), ("dequantize", dequantize)):
        if not isinstance(value, bool):
            raise DataError(f"{flag} must be true or false, got {value!r}")
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int, got {seed!r}")
    return {
        "name": str(name),
        "path": None if path is None else os.fspath(path),
        "n_samples": _int_at_least(n_samples, "n_samples", 1),
        "noise": _noise(noise, name),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "standardize": standardize,
        "dequantize": dequantize,
        "batch_size": _int_at_least(batch_size, "batch_size", 1),
        "eval_batch_size": _int_at_least(eval_batch_size, "eval_batch_size", 1),
        "seed": int(seed),
        "num_workers": _int_at_least(num_workers, "num_workers", 0),
        "image_shape": _image_shape(image_shape, name),
    }


DATA_TARGETS = ("genmod.data.DensityDataModule", "genmod.data.datamodule.DensityDataModule")
"""The ``_target_`` values a data config read from a checkpoint may name."""

_PLAIN = (str, int, float, bool, type(None))


def check_stored_config(config: Any, source: str) -> dict[str, Any]:
    """The keyword arguments of :class:`~genmod.data.DensityDataModule` in a data config
    read from a file someone else may have written (a checkpoint), checked as data.

    A stored config decides no code: its ``_target_`` must be one of :data:`DATA_TARGETS`,
    every other key an argument of :func:`check_options` (no ``_args_``, ``_partial_`` or
    other Hydra keys), and every value a plain scalar or a list of them, so nothing nested
    can name a callable. The values are then checked like any user's.

    Raises:
        DataError: naming ``source`` and the offending key; nothing is imported or called.
    """
    if not isinstance(config, dict):
        raise DataError(f"{source}: the stored data config is not a mapping")
    target = config.get("_target_")
    if target not in DATA_TARGETS:
        raise DataError(
            f"{source}: the stored data config names _target_ {target!r}, which is not one of "
            f"genmod's data classes ({DATA_TARGETS[0]}); pass the data yourself, e.g. data=moons"
        )
    allowed = set(inspect.signature(check_options).parameters)
    kwargs = {}
    for key, value in config.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key not in allowed:
            raise DataError(f"{source}: the stored data config has an unknown key {key!r}")
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, _PLAIN) for item in items):
            raise DataError(
                f"{source}: data.{key} in the stored data config is not a plain value "
                f"(got {type(value).__name__})"
            )
        kwargs[key] = value
    return kwargs
