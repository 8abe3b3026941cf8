"""Nothing is lost on a crash: a save killed at any moment leaves the old checkpoint whole
(a run killed mid-epoch resuming to the same numbers is in test_resume.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from genmod.training import checkpoint_io
from genmod.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from tests.cli.test_cli import REPO

_KILL_MID_SAVE = """
import os, signal, sys, torch
from genmod.training import checkpoint_io
written = 0
def hook(n):  # a slow disk that dies after the first megabytes of the new file
    global written
    written += n
    if written > 4 * 2**20:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint_io.write_hook = hook
new = {"state_dict": {"w": torch.full((8 * 2**20,), 2.0)}, "epoch": 2}
checkpoint_io.AtomicCheckpointIO().save_checkpoint(new, sys.argv[1])
"""


def test_a_save_killed_midway_leaves_the_old_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    old = {"state_dict": {"w": torch.full((8 * 2**20,), 1.0)}, "epoch": 1}  # 32 MiB
    AtomicCheckpointIO().save_checkpoint(old, last)
    result = subprocess.run(
        [sys.executable, "-c", _KILL_MID_SAVE, str(last)], cwd=REPO, capture_output=True
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    leftovers = [p for p in last.parent.iterdir() if p != last]
    assert leftovers, "the premise: the kill came mid-write"
    loaded = AtomicCheckpointIO().load_checkpoint(last)
    assert loaded["epoch"] == 1 and torch.equal(loaded["state_dict"]["w"], old["state_dict"]["w"])
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, last)  # the next save tidies up
    assert list(last.parent.iterdir()) == [last]
    assert torch.load(last, weights_only=True) == {"epoch": 3}


def test_a_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, path)

    def full_disk(n: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "write_hook", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"epoch": 2}, path)
    assert list(tmp_path.iterdir()) == [path]
    assert torch.load(path, weights_only=True) == {"epoch": 1}
