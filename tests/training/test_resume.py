"""Resuming from last.ckpt continues the same run: same metrics as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch

from genmod.training import train
from tests.cli.test_cli import run_command
from tests.training.conftest import TINY, TINY_DATA, compose_train
from tests.training.test_train import events

COMPARED = ("val/nll", "val/nll_best", "train/nll", "test/nll", "model/bandwidth")


def test_resume_from_last_checkpoint_matches_uninterrupted_run(train_cfg, tmp_path):
    quick = "~callbacks.density_figures"
    straight = train(train_cfg("trainer.max_epochs=2", quick, name="straight"))

    first = train(train_cfg("trainer.max_epochs=1", quick, name="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0
    assert checkpoint["genmod"]["val_nll_best"] == pytest.approx(first["val/nll_best"])
    resumed = train(train_cfg("trainer.max_epochs=2", quick, f"ckpt_path={last}", name="resumed"))
    assert not (tmp_path / "resumed" / "metrics.json").exists()  # continued in "first"

    assert resumed["epochs"] == straight["epochs"] == 2
    assert resumed["global_step"] == straight["global_step"]
    for key in COMPARED:
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6, abs=1e-7), key
    assert first["model/bandwidth"] != pytest.approx(straight["model/bandwidth"], rel=1e-4)
    saved = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert saved["epochs"] == 2
    assert saved["test/nll"] == pytest.approx(straight["test/nll"], rel=1e-6)
    curve = events(tmp_path / "first").Scalars("val/nll")
    assert [e.step for e in curve] == [
        e.step for e in events(tmp_path / "straight").Scalars("val/nll")
    ]
    assert curve[-1].value == pytest.approx(straight["val/nll"], rel=1e-6)


def test_missing_resume_checkpoint_is_a_clear_error(train_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path not found"):
        train(train_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}"))


def test_last_checkpoint_is_the_final_epoch_when_the_best_was_earlier(train_cfg, tmp_path):
    """With mode=max the best checkpoint is the first epoch's (val/nll falls as the bandwidth
    is learned); last.ckpt must still hold the final epoch, and metrics.json names it."""
    cfg = train_cfg("trainer.max_epochs=3", "~callbacks.density_figures",
                    "callbacks.model_checkpoint.mode=max")  # fmt: skip
    metrics = train(cfg)
    run = tmp_path / "run"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(run / metrics["best_checkpoint"], weights_only=True)
    assert best["global_step"] < metrics["global_step"]  # the premise: the best is earlier
    assert last["global_step"] == metrics["global_step"] and last["epoch"] == 2
    assert metrics["last_checkpoint"] == "checkpoints/last.ckpt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
    # and it resumes: two more epochs continue from the third (a snapshot taken before the
    # epoch's end made early stopping fail on resume)
    last_path = run / "checkpoints" / "last.ckpt"
    more = train(train_cfg("trainer.max_epochs=5", "~callbacks.density_figures",
                           "callbacks.model_checkpoint.mode=max", f"ckpt_path={last_path}",
                           name="more"))  # fmt: skip
    assert more["epochs"] == 5 and more["global_step"] == 25


MODELS = {
    "kde": ("trainer.max_epochs=3",),
    "gaussian-gradient": ("model=gaussian", "model.fit_closed_form=false", "trainer.max_epochs=3"),
    "lvm": ("model=lvm", "model.num_samples=16", "model.eval_num_samples=64",
            "model.hidden_sizes=[16]", "trainer.max_epochs=3"),
}  # fmt: skip
EXACT = ("test/nll", "test/nll_se", "val/nll", "val/nll_best", "train/nll", "global_step")
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
    for key in EXACT:
        assert resumed[key] == straight[key], (key, resumed[key], straight[key])
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test/nll"] == straight["test/nll"]
    assert [p.name for p in Path(run, "checkpoints").iterdir() if p.name.startswith(".")] == []
