"""Training timings for ``bench_kde.py --train``: ``genmod-train`` runs timed from the command's
start to its first training step (start-up), per step and per epoch.

Each run is a fresh ``python -m genmod.cli.train`` process (so start-up includes the imports)
with one extra callback, :class:`StepTimer`, added through Hydra
(``+callbacks.step_timer._target_=_bench_train.StepTimer``). The callback writes its figures to
a JSON file after the first step, every 25 steps and at the end of each epoch, so a run cut
short by its timeout still reports what it measured. Steps are timed on the host from the
end of the first step to the end of the last one before the first validation (or the epoch's
end); the timer synchronises CUDA after the first step, every 25 steps and at epoch ends, so
it adds no per-step sync of its own (a short run's last steps may still be queued on the GPU
when timed). An epoch's time includes its validation.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["RUNS", "StepTimer", "run_training", "train_table"]

ROOT = Path(__file__).resolve().parents[1]
# label -> (overrides on the GPU, overrides of the tiny CPU version, timeout in seconds)
RUNS: dict[str, tuple[str, str, float]] = {
    "kde 200k (2-D moons)": (
        "trainer=gpu data.n_samples=200000 trainer.max_epochs=1",
        "trainer=cpu data.n_samples=4000 trainer.max_epochs=1",
        70.0,
    ),
    "lvm_digits, 3 epochs": (
        "experiment=lvm_digits trainer=gpu trainer.max_epochs=3",
        "experiment=lvm_digits trainer=cpu trainer.max_epochs=1 +trainer.limit_train_batches=5 "
        "+trainer.limit_val_batches=2 model.eval_num_samples=16",
        40.0,
    ),
}


class StepTimer(pl.Callback):
    """Writes start-up, step and epoch times (seconds) to ``$GENMOD_STEP_TIMER_OUT``.

    Start-up is measured from ``$GENMOD_STEP_TIMER_T0`` (the launcher's ``time.time()``).
    """

    def __init__(self) -> None:
        self.path = os.environ.get("GENMOD_STEP_TIMER_OUT")
        self.t0 = float(os.environ.get("GENMOD_STEP_TIMER_T0", time.time()))
        self.res: dict[str, Any] = {"steps": 0, "epochs": []}
        self.epoch_start = self.last_end = 0.0
        self.mark: tuple[int, float] | None = None

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def _write(self) -> None:
        if self.path:
            tmp = f"{self.path}.tmp"
            Path(tmp).write_text(json.dumps(self.res))
            os.replace(tmp, self.path)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.epoch_start = time.time()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: D102
        if "startup" not in self.res:
            self.res["startup"] = time.time() - self.t0
            self.res["device"] = str(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self.res["steps"] += 1
        self.last_end = time.time()
        steps = self.res["steps"]
        if steps == 1:
            self._sync(module)
            self.res["first_step"] = time.time() - self.t0 - self.res["startup"]
            self.mark = (steps, time.time())
            self._write()
        elif steps % 25 == 0 and self.mark is not None:
            self._sync(module)
            n0, t0 = self.mark
            self.res["step"] = (time.time() - t0) / (steps - n0)
            self._write()

    def _steps_done(self, module: pl.LightningModule) -> None:
        """Per step from the mark to the last step's end (not to now: setting up validation,
        its data loader workers included, is no training step's work)."""
        if self.mark is not None and self.res["steps"] > self.mark[0]:
            n0, t0 = self.mark
            self.res["step"] = (self.last_end - t0) / (self.res["steps"] - n0)
        self.mark = None  # later epochs are timed as a whole, not per step

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.training and self.mark is not None:  # validation inside the first epoch
            self._steps_done(module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._steps_done(module)
        self._sync(module)
        self.res["epochs"].append(time.time() - self.epoch_start)
        self._write()


def run_training(overrides: str, timeout: float) -> dict[str, Any]:
    """One ``genmod-train`` run with :class:`StepTimer`; its figures plus ``wall`` and, if it
    failed or timed out, ``error``."""
    with tempfile.TemporaryDirectory(prefix="genmod-bench-train-") as tmp:
        out = Path(tmp) / "timer.json"
        env = dict(os.environ, GENMOD_STEP_TIMER_OUT=str(out))
        env["GENMOD_STEP_TIMER_T0"] = str(time.time())
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "scripts"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        cmd = [sys.executable, "-m", "genmod.cli.train", *shlex.split(overrides)]
        cmd += ["+callbacks.step_timer._target_=_bench_train.StepTimer"]
        cmd += ["trainer.enable_progress_bar=false", f"hydra.run.dir={tmp}/run"]
        start = time.perf_counter()
        error = None
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                error = f"exit {proc.returncode}: {tail[:200]}"
        except subprocess.TimeoutExpired:
            error = f"stopped after {timeout:.0f} s"
        res = json.loads(out.read_text()) if out.exists() else {}
        res["wall"] = time.perf_counter() - start
        if error:
            res["error"] = error
        return res


def _s(v: float | None) -> str:
    return "—" if v is None else (f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s")


def train_table(results: dict[str, tuple[str, dict[str, Any]]]) -> str:
    """Markdown table of ``{label: (command, result)}``."""
    lines = [
        "| run | command | device | start-up to first step | first step | per step (after "
        "the first) | per epoch | steps | wall | note |",
        "|" + " --- |" * 10,
    ]
    for label, (cmd, r) in results.items():
        epochs = r.get("epochs") or []
        lines.append(
            f"| {label} | `genmod-train {cmd}` | {r.get('device', '—')} "
            f"| {_s(r.get('startup'))} | {_s(r.get('first_step'))} | {_s(r.get('step'))} "
            f"| {', '.join(_s(e) for e in epochs) or '—'} | {r.get('steps', 0)} "
            f"| {_s(r.get('wall'))} | {r.get('error', r.get('skipped', ''))} |"
        )
    return "\n".join(lines)
