"""Lightning callbacks of the NLL loop: a TensorBoard figure of the model each validation, and
checkpoints whose ``last.ckpt`` is the state after the latest epoch."""

from __future__ import annotations

import inspect
import logging
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.figure import Figure
from torch import Tensor

from genmod.training.figures import sample_figure
from genmod.training.module import DensityModule

__all__ = ["DensityFigures", "EpochLines", "ModelCheckpoint", "sample_kwargs"]

log = logging.getLogger("genmod.progress")


def sample_kwargs(model: Any, images: bool) -> dict[str, Any]:
    """``{"noise": False}`` when drawing images from a model whose ``sample`` takes a
    ``noise`` flag (a latent-variable model's decoded means are what one looks at)."""
    if images and "noise" in inspect.signature(model.sample).parameters:
        return {"noise": False}
    return {}


class DensityFigures(L.Callback):
    """Adds a figure of the model to TensorBoard after every ``every_n_epochs`` validation
    epochs (tag ``tag``), within a share of the run's time, drawn with a fixed seed so epochs
    differ only by the model:

    * 2-D data: the density ``p(x)`` (data units) as a heat-map with validation points,
      beside ``num_samples`` samples;
    * image data (the datamodule's ``image_shape``): a grid of ``num_images`` samples
      (decoded means, ``noise=False``, for models that take that flag);
    * 1-D data: histograms with the density curve; other data: the first two coordinates.

    The figures (evaluating the density on the grid, rendering) may take at most
    ``max_time_share`` of the wall time since training started: a due figure is skipped when
    the time spent on figures plus the last figure's cost (before any figure is timed,
    ``first_cost`` seconds) would exceed that share. The final model's figure is always
    drawn, at the last epoch or at the end of training (also after early stopping), so a
    run's last image is its result; a short run draws only that one.

    Args:
        every_n_epochs: draw on epochs ``0, n, 2n, ...`` and on the last one.
        max_time_share: at most this fraction of the run's time in figures (``None``: no
            limit, every due epoch is drawn).
        first_cost: the assumed cost in seconds of a figure until one has been timed.
        num_samples: samples in 1-D / 2-D / projection figures.
        num_images: samples in an image grid.
        max_points: at most this many validation points are drawn.
        grid_size: heat-map resolution per axis.
        seed: seed of the sampling generator.
        tag: TensorBoard tag.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        num_images: int = 64,
        max_points: int = 2000,
        grid_size: int = 64,
        seed: int = 0,
        tag: str = "figures/model",
        max_time_share: float | None = 0.1,
        first_cost: float = 0.5,
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_samples", num_samples),
            ("num_images", num_images),
            ("max_points", max_points),
            ("grid_size", grid_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if max_time_share is not None and (
            isinstance(max_time_share, bool)
            or not isinstance(max_time_share, (int, float))
            or not 0 < max_time_share <= 1
            or not math.isfinite(max_time_share)
        ):
            raise ValueError(f"max_time_share must be in (0, 1] or None, got {max_time_share!r}")
        if isinstance(first_cost, bool) or not isinstance(first_cost, (int, float)):
            raise ValueError(f"first_cost must be a number of seconds, got {first_cost!r}")
        if not 0 <= first_cost < math.inf:
            raise ValueError(f"first_cost must be finite and >= 0, got {first_cost!r}")
        self.every_n_epochs = every_n_epochs
        self.max_time_share = max_time_share
        self.first_cost = float(first_cost)
        self.num_samples = num_samples
        self.num_images = num_images
        self.max_points = max_points
        self.grid_size = grid_size
        self.seed = seed
        self.tag = tag
        self._reset()

    def _reset(self) -> None:
        self._started = time.perf_counter()
        self._spent = 0.0  # seconds in figures so far
        self._last_cost = self.first_cost
        self._pending: int | None = None  # epoch of a skipped figure not yet drawn

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    @staticmethod
    def _collective(pl_module: L.LightningModule) -> bool:
        """A sharded model's likelihood is a collective: then every rank draws the figure,
        and rank 0's decision to draw is broadcast so that all ranks take part."""
        return getattr(getattr(pl_module, "model", None), "_shard", None) is not None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        collective = self._collective(pl_module)
        if trainer.sanity_checking or not (trainer.is_global_zero or collective):
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        elapsed = time.perf_counter() - self._started
        over = (
            self.max_time_share is not None
            and self._spent + self._last_cost > self.max_time_share * elapsed
        )
        draw = last or (epoch % self.every_n_epochs == 0 and not over)
        if collective:
            draw = bool(trainer.strategy.broadcast(draw, src=0))
        if draw:
            self._draw(trainer, pl_module, epoch)
        else:
            self._pending = epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final model's figure, when its validation epoch was skipped."""
        if self._pending is not None and (trainer.is_global_zero or self._collective(pl_module)):
            self._draw(trainer, pl_module, self._pending)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or not isinstance(pl_module, DensityModule):
            return
        start = time.perf_counter()
        data = getattr(trainer.datamodule, "val_data", None)
        fig = self.figure(pl_module, data, title=f"epoch {epoch}")
        for writer in writers:
            writer.add_figure(self.tag, fig, global_step=trainer.global_step, close=False)
        self._last_cost = time.perf_counter() - start
        self._spent += self._last_cost
        self._pending = None

    @torch.no_grad()
    def figure(self, module: DensityModule, data: Tensor | None, title: str = "") -> Figure:
        """The figure of ``module``'s model, with standardised ``data`` ``[n, D]`` shown in
        data units (``None``: samples only)."""
        model = module.model
        device = module.device
        mean = module.data_mean.to(device=device, dtype=torch.float32)
        scale = module.data_scale.to(device=device, dtype=torch.float32)
        images = module.image_shape is not None
        generator = torch.Generator(device=device).manual_seed(self.seed)
        n = self.num_images if images else self.num_samples
        kwargs = sample_kwargs(model, images)
        samples = model.sample(n, generator=generator, **kwargs)
        samples = samples.float() * scale + mean
        shown = None
        if data is not None and len(data) > 0:
            shown = data[: self.max_points].to(device).float() * scale + mean

        def log_density(x: Tensor) -> Tensor:
            x = x.to(device=device, dtype=torch.float32)
            chunks = [
                model.log_prob((part - mean) / scale) - module.log_scale_sum
                for part in x.split(4096)
            ]
            return torch.cat(chunks)

        label = f"{type(model).__name__}, {model.estimator}"
        if images:
            label += f": {n} {'decoded means' if kwargs.get('noise') is False else 'samples'}"
        if title:
            label = f"{label}, {title}" if images else f"{label}: {title}"
        dim = int(model.dim)
        heat = not images and dim <= 2
        return sample_figure(
            samples,
            image_shape=module.image_shape,
            data=shown,
            log_density=log_density if heat else None,
            title=label,
            grid_size=self.grid_size,
        )


class EpochLines(L.Callback):
    """One plain line per finished epoch, the progress report of a run whose output is not a
    terminal (Lightning's bar would write a redraw per step into the log):
    ``epoch 3/30: train/nll 1.2345, val/nll 1.2401 (best 1.2398), 2.1 s``. Written to the
    ``genmod.progress`` logger at INFO on rank 0, at most one every ``every`` seconds
    (default ``GENMOD_PROGRESS_EVERY`` or 5) besides the first and the last epoch; an epoch
    longer than that adds a line with the batches done every ``every`` seconds."""

    def __init__(self, every: float | None = None) -> None:
        from genmod.progress import interval

        self.every = interval() if every is None else float(every)
        self._started = 0.0
        self._printed: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Within a long epoch, a line every ``every`` seconds with the batches done."""
        if not trainer.is_global_zero or self.every <= 0:
            return
        now = time.monotonic()
        if now - max(self._printed or 0.0, self._started) < self.every:
            return
        self._printed = now
        batches = trainer.num_training_batches
        total = f"/{batches}" if isinstance(batches, int) else ""
        log.info(
            "epoch %d: batch %d%s, %.1f s so far",
            trainer.current_epoch + 1,
            trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            total,
            now - self._started,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        now = time.monotonic()
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        recent = self._printed is not None and now - self._printed < self.every
        if recent and not last and self.every > 0:
            return
        self._printed = now
        metrics = trainer.callback_metrics
        parts = [
            f"{key} {float(metrics[key]):.4f}" for key in ("train/nll", "val/nll") if key in metrics
        ]
        if "val/nll_best" in metrics:
            parts[-1] += f" (best {float(metrics['val/nll_best']):.4f})"
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        head = f"epoch {epoch + 1}{total}"
        text = f"{head}: {', '.join(parts)}" if parts else head
        log.info("%s, %.1f s", text, now - self._started)


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) holds the
    state after every epoch that trained, as resuming from it needs.

    Lightning 2.6 rewrites ``last.ckpt`` only in the epochs that also save a top-k
    checkpoint, so after a run's best epoch it went stale. Here, after Lightning's own saves,
    at the point where Lightning saves (by default the end of each training epoch),
    ``last.ckpt`` is written again when the global step moved on since this hook last wrote it.
    Arguments are Lightning's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refreshed_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._saves_at_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._saves_at_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _saves_at_train_epoch_end(self, trainer: L.Trainer) -> bool:
        """Lightning's own choice of save point (a checkpoint taken at the end of validation,
        inside an epoch, is not resumable like one taken where Lightning saves); the end of
        the training epoch where Lightning has no such rule."""
        decide = getattr(self, "_should_save_on_train_epoch_end", None)
        return True if decide is None else bool(decide(trainer))

    def _refresh_last(self, trainer: L.Trainer) -> None:
        skip = (
            not self.save_last
            or bool(trainer.fast_dev_run)
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.global_step == 0  # nothing trained: Lightning saves it at the end
            or self._refreshed_at == trainer.global_step
        )
        if skip:
            return
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # before saving: it is part of the saved state
        trainer.save_checkpoint(path, self.save_weights_only)
        self._refreshed_at = trainer.global_step
