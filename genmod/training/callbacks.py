"""Lightning callbacks of the NLL loop: a TensorBoard figure of the model each validation, and
checkpoints whose ``last.ckpt`` is the state after the latest epoch."""

from __future__ import annotations

import inspect
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

__all__ = ["DensityFigures", "ModelCheckpoint", "sample_kwargs"]


def sample_kwargs(model: Any, images: bool) -> dict[str, Any]:
    """``{"noise": False}`` when drawing images from a model whose ``sample`` takes a
    ``noise`` flag (a latent-variable model's decoded means are what one looks at)."""
    if images and "noise" in inspect.signature(model.sample).parameters:
        return {"noise": False}
    return {}


class DensityFigures(L.Callback):
    """Adds a figure of the model to TensorBoard after every ``every_n_epochs`` validation
    epochs (tag ``tag``), drawn with a fixed seed so epochs differ only by the model:

    * 2-D data: the density ``p(x)`` (data units) as a heat-map with validation points,
      beside ``num_samples`` samples;
    * image data (the datamodule's ``image_shape``): a grid of ``num_images`` samples
      (decoded means, ``noise=False``, for models that take that flag);
    * 1-D data: histograms with the density curve; other data: the first two coordinates.

    Args:
        every_n_epochs: draw on epochs ``0, n, 2n, ...`` and on the last one.
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
        grid_size: int = 120,
        seed: int = 0,
        tag: str = "figures/model",
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
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_images = num_images
        self.max_points = max_points
        self.grid_size = grid_size
        self.seed = seed
        self.tag = tag

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A sharded model's likelihood is a collective: then every rank draws the figure.
        collective = getattr(getattr(pl_module, "model", None), "_shard", None) is not None
        if trainer.sanity_checking or not (trainer.is_global_zero or collective):
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or not isinstance(pl_module, DensityModule):
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if epoch % self.every_n_epochs != 0 and not last:
            return
        data = getattr(trainer.datamodule, "val_data", None)
        fig = self.figure(pl_module, data, title=f"epoch {epoch}")
        for writer in writers:
            writer.add_figure(self.tag, fig, global_step=trainer.global_step, close=False)

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
        samples = model.sample(n, generator=generator, **sample_kwargs(model, images))
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
        dim = int(model.dim)
        heat = not images and dim <= 2
        return sample_figure(
            samples,
            image_shape=module.image_shape,
            data=shown,
            log_density=log_density if heat else None,
            title=f"{label}: {title}" if title else label,
        )


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
