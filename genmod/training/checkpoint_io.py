"""Checkpoint files that survive a crash and never run code when read.

Lightning's own save writes through an fsspec transaction whose temporary file lives in
``$TMPDIR``: a kill mid-save leaves that partial file behind, and where ``$TMPDIR`` is on
another filesystem the final move is a copy, so a kill during it leaves ``last.ckpt``
truncated with the previous good copy gone. :class:`AtomicCheckpointIO` writes beside the
destination instead: a temporary file in the same directory, flushed and fsynced, then
``os.replace``'d over the old file (atomic on POSIX and Windows) and the directory fsynced.
A kill at any moment leaves either the old or the new checkpoint; leftovers of a killed save
are removed by the next completed save of the same file. Reading uses
``torch.load(weights_only=True)``: a checkpoint is data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "write_hook"]

_TMP_SUFFIX = ".tmp"

write_hook: Callable[[int], None] | None = None
"""Called with the byte count before each write of a save (tests emulate a slow disk, or a
crash mid-save, with it); ``None`` in normal use."""


class _HookedFile:
    """A binary file whose ``write`` calls :data:`write_hook` first."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        if write_hook is not None:
            write_hook(len(data))
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` such that ``path`` always holds a complete file.

    Writes ``.<name>.<random>.tmp`` in the destination directory, fsyncs it, renames it over
    ``path`` and fsyncs the directory. On any error the temporary file is removed and the
    old ``path`` is left as it was. Stale temporary files of ``path`` from killed saves are
    removed after a save completes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, _HookedFile(file))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)
    for stale in path.parent.glob(f"{_temp_prefix(path)}*{_TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with crash-safe saves (:func:`atomic_torch_save`)
    for local paths and ``weights_only=True`` loads. Remote (fsspec) URLs keep Lightning's
    own save."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only=True whatever the caller asks: nothing in a checkpoint may run code.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
