"""Nothing is lost on a crash: a save killed at any moment leaves the old checkpoint whole,
and a run killed with SIGKILL mid-epoch resumes from last.ckpt to the very same numbers."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genmod.training import checkpoint_io, train
from genmod.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from tests.cli.test_cli import REPO, run_command
from tests.training.conftest import TINY, TINY_DATA, compose_train

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


MODELS = {
    "kde": ("trainer.max_epochs=3",),
    "gaussian-gradient": ("model=gaussian", "model.fit_closed_form=false", "trainer.max_epochs=3"),
    "lvm": ("model=lvm", "model.num_samples=16", "model.eval_num_samples=64",
            "model.hidden_sizes=[16]", "trainer.max_epochs=3"),
}  # fmt: skip
COMPARED = ("test/nll", "test/nll_se", "val/nll", "val/nll_best", "train/nll", "global_step")
STEPS_PER_EPOCH = 5  # TINY_DATA: 320 training points in batches of 64


@pytest.mark.parametrize("model", list(MODELS))
def test_a_run_killed_mid_epoch_resumes_to_the_same_numbers(model, tmp_path):
    overrides = (*MODELS[model], "~callbacks.density_figures", "~callbacks.early_stopping")
    straight = train(compose_train(tmp_path / "straight", *overrides))

    # Kill after a random step strictly inside the second or third epoch.
    step = random.Random(model).choice(
        [s for s in range(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH) if s % STEPS_PER_EPOCH]
    )
    killer = ("+callbacks.kill._target_=tests.training._faults.KillAtStep",
              f"+callbacks.kill.step={step}")  # fmt: skip
    run = tmp_path / "killed"
    killed = run_command("genmod-train", *TINY, *TINY_DATA, *overrides, *killer,
                         f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == step - step % STEPS_PER_EPOCH  # the last completed epoch
    assert not (run / "metrics.json").exists()

    resumed = train(compose_train(tmp_path / "resume", *overrides, f"ckpt_path={last}"))
    for key in COMPARED:
        assert resumed[key] == straight[key], (key, resumed[key], straight[key])
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test/nll"] == straight["test/nll"]
    assert [p.name for p in Path(run, "checkpoints").iterdir() if p.name.startswith(".")] == []
