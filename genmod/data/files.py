"""Load a user's data file as a checked ``[n, D]`` tensor.

Supported formats (chosen by the extension, case-insensitive):

- ``.npy``: one array (``numpy.save``); pickled objects are refused.
- ``.npz``: the array under key ``x``, else under ``data``, else the first array in
  the archive (``numpy.savez`` order: positional arrays first, as ``arr_0``, ...).
- ``.csv``: comma-separated numbers, one example per line. A first line that does not
  parse as numbers is taken as a header and skipped; blank lines are ignored.
- ``.pt``: a tensor saved with ``torch.save``, or a dict of tensors: the one under key
  ``x``, else under ``data``, else its only tensor. Loaded with ``weights_only=True``.

Every problem raises :class:`DataError` (a ``ValueError``) with a one-line message
that starts with the file's path. Rows are counted from 0 (row 0 is the first
example, after any CSV header); CSV messages also give the 1-based line of the file.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genmod.progress import Task

__all__ = ["DataError", "FILE_EXTENSIONS", "load_array"]

FILE_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".csv", ".pt")
"""File extensions :func:`load_array` reads."""

_PREFERRED_KEYS = ("x", "data")


class DataError(ValueError):
    """A data file or data configuration that cannot be used; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    with open(path, "rb") as handle:
        if handle.read(len(magic)) != magic:
            raise DataError(f"{path}: not a {what} (its first bytes are not {magic!r})")


def _preferred(mapping: dict[str, Any]) -> Any:
    for key in _PREFERRED_KEYS:
        if key in mapping:
            return mapping[key]
    return None


def _read_npy(path: Path) -> np.ndarray:
    _check_magic(path, b"\x93NUMPY", "NumPy .npy file")
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path) -> np.ndarray:
    _check_magic(path, b"PK", "NumPy .npz (zip) archive")
    with np.load(path, allow_pickle=False) as archive:
        if not archive.files:
            raise DataError(f"{path}: archive holds no arrays")
        key = next((k for k in _PREFERRED_KEYS if k in archive.files), archive.files[0])
        return archive[key]


def _read_pt(path: Path) -> Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: torch.load(weights_only=True) cannot read it; save a tensor or a dict "
            "of tensors with torch.save"
        ) from None
    if isinstance(obj, Tensor):
        return obj
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, expected a tensor or a dict of tensors"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    chosen = _preferred(tensors)
    if chosen is not None:
        return chosen
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if not tensors:
        raise DataError(f"{path}: dict holds no tensors")
    raise DataError(
        f"{path}: dict holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
        "store the data under key 'x' or save a single tensor"
    )


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, task: Task | None = None) -> tuple[np.ndarray, list[int]]:
    """Parse ``path``; return the values and the 1-based file line of each row (reporting
    the rows read to ``task`` every 20000 rows)."""
    rows: list[list[float]] = []
    lines: list[int] = []
    width: int | None = None
    first = True
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line_no, record in enumerate(csv.reader(handle), start=1):
            fields = [f.strip() for f in record]
            if all(f == "" for f in fields):
                continue
            if first:
                first = False
                if not all(_is_number(f) for f in fields):
                    continue  # a header
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                raise DataError(
                    f"{path}: line {line_no} has {len(fields)} columns, expected {width}"
                )
            try:
                rows.append([float(f) for f in fields])
            except ValueError:
                bad = next(f for f in fields if not _is_number(f))
                what = "an empty field" if bad == "" else f"non-numeric value {bad[:40]!r}"
                raise DataError(
                    f"{path}: {what} at line {line_no} (row {len(rows)}, 0-based)"
                ) from None
            lines.append(line_no)
            if task is not None and len(rows) % 20000 == 0:
                task.update(20000)
    if task is not None:
        task.done = len(rows)
    if not rows:
        return np.empty((0, width or 0)), lines
    return np.asarray(rows, dtype=np.float64), lines


def _read(path: Path, ext: str) -> tuple[Any, list[int] | None]:
    if ext == ".csv":
        with Task(f"reading {path.name}", unit="row") as task:
            return _read_csv(path, task if task.active else None)
    if ext == ".npy":
        return _read_npy(path), None
    if ext == ".npz":
        return _read_npz(path), None
    return _read_pt(path), None


def _to_float64(path: Path, array: Any) -> Tensor:
    if isinstance(array, Tensor):
        if array.dtype == torch.bool or array.is_complex():
            raise DataError(f"{path}: holds {array.dtype} values, expected real numbers")
        return array.detach().to(torch.float64)
    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise DataError(f"{path}: holds {array.dtype} values, expected real numbers")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


def _first_bad_row(x: Tensor) -> int | None:
    finite = torch.isfinite(x).all(dim=1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) == 0:
        raise DataError(f"{path}: holds a scalar; expected a 2-D array [n, D] of examples")
    if len(shape) == 1:
        raise DataError(
            f"{path}: is 1-D with shape ({shape[0]},); expected 2-D [n, D]: save "
            "x.reshape(-1, 1) for n one-dimensional examples, or x.reshape(1, -1) for one"
        )
    if len(shape) > 2:
        raise DataError(
            f"{path}: is {len(shape)}-D with shape {tuple(shape)}; expected 2-D [n, D]: "
            "flatten each example, e.g. x.reshape(len(x), -1)"
        )
    if shape[0] == 0:
        raise DataError(f"{path}: is empty (0 rows)")
    if shape[1] == 0:
        raise DataError(f"{path}: has 0 columns")


def load_array(path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Read a data file into a finite ``[n, D]`` tensor (rows are examples).

    Args:
        path: a ``.npy``, ``.npz``, ``.csv`` or ``.pt`` file (see the module docstring
            for how each is read).
        dtype: floating dtype of the result; values are read and checked in float64.

    Returns:
        Tensor ``[n, D]`` with ``n >= 1``, ``D >= 1`` and only finite values.

    Raises:
        DataError: one line naming the file, when it is missing, has an unknown
            extension, cannot be parsed, is non-numeric, empty or not 2-D, or holds NaN
            or Inf (naming the first bad row, 0-based, and for CSV its line).

    Example:
        >>> x = load_array("points.csv")  # doctest: +SKIP
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    ext = path.suffix.lower()
    if ext not in FILE_EXTENSIONS:
        raise DataError(
            f"{path}: unknown extension {path.suffix or '(none)'!r}; "
            f"expected one of {', '.join(FILE_EXTENSIONS)}"
        )
    try:
        array, csv_lines = _read(path, ext)
    except DataError:
        raise
    except Exception as err:  # numpy, zip and unpickling failures raise many types
        raise DataError(f"{path}: cannot read as {ext}: {_one_line(err)}") from None
    x = _to_float64(path, array)
    _check_shape(path, tuple(x.shape))
    row = _first_bad_row(x)
    if row is not None:
        where = f"row {row} (0-based)"
        if csv_lines is not None:
            where += f", line {csv_lines[row]} of the file"
        raise DataError(f"{path}: contains NaN or Inf; first bad {where}")
    out = x.to(dtype)
    row = _first_bad_row(out)
    if row is not None:
        raise DataError(f"{path}: row {row} (0-based) overflows {dtype}; rescale the data")
    return out
