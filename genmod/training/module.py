"""The one LightningModule that trains, validates and tests every genmod density model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from genmod.models.base import DensityModel
from genmod.models.gaussian import Gaussian
from genmod.models.io import CHECKPOINT_FORMAT, model_class_name
from genmod.ops import trusted_inputs
from genmod.training import _distributed, _trust

__all__ = ["DensityModule"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class DensityModule(L.LightningModule):
    """Maximum-likelihood training of a :class:`~genmod.models.base.DensityModel`.

    The model sees standardised data ``z = (x - mean) / scale``; every logged likelihood is
    converted to data units, ``NLL_data = NLL_z + sum_d log scale_d`` (nats per example):

    * ``train/nll``: the model's :meth:`~DensityModel.training_loss` of the training batches
      (the leave-one-out NLL for a KDE, the Monte Carlo estimate for a latent-variable model);
    * ``val/nll``, ``val/nll_best`` (lowest so far), ``test/nll``, ``test/nll_se`` (standard
      error of the mean), ``test/bpd`` (``test/nll / (D ln 2)``);
    * ``val/<k>``, ``test/<k>`` for the model's :meth:`~DensityModel.eval_metrics` (``nll*``
      keys in data units) and ``model/<k>`` for its :meth:`~DensityModel.metrics`;
    * a TensorBoard histogram ``test/log_prob`` of per-example test log-likelihoods.

    Training modes:

    * ``fit_closed_form=True``: ``model.fit(train_data)`` once at setup (e.g. a Gaussian's
      maximum-likelihood estimate); the run validates and tests it after one epoch.
    * ``fit_bandwidth=True``: ``model.fit_bandwidth()`` once at setup (a KDE's leave-one-out
      bandwidth search); as above.
    * otherwise, if the model has trainable parameters, gradient descent on the training loss
      with ``optimizer`` (a partial taking the parameters) and an optional ``scheduler``;
    * a model with nothing to train (a KDE with a rule bandwidth) is only evaluated.

    Without gradient training no optimizer is built and Lightning's manual-optimisation path
    is used, so a zero-parameter model runs without warnings.

    Args:
        model: the density model of standardised data.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (default Adam, lr 1e-2).
        scheduler: ``scheduler(optimizer)``; stepped per epoch, monitoring ``val/nll``.
        fit_closed_form: fit the model in closed form at setup instead of by gradient.
        fit_bandwidth: choose the bandwidth by ``model.fit_bandwidth()`` at setup.
        mean: per-dimension data mean ``[D]`` of the standardisation (default zeros).
        scale: per-dimension data scale ``[D]`` of the standardisation (default ones).
        data_config: the data configuration, stored in checkpoints for later evaluation.
        image_shape: shape of one example as an image (for figures), or ``None``.

    Raises:
        ValueError: when a switch asks for a fit the model does not have, or ``mean`` /
            ``scale`` do not match the model's dimension.
    """

    def __init__(
        self,
        model: DensityModel,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        *,
        fit_closed_form: bool = False,
        fit_bandwidth: bool = False,
        mean: Tensor | None = None,
        scale: Tensor | None = None,
        data_config: dict[str, Any] | None = None,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, DensityModel):
            raise ValueError(f"model must be a genmod DensityModel, got {type(model).__name__}")
        name = type(model).__name__
        if fit_closed_form and not model.has_closed_form:
            raise ValueError(f"model.fit_closed_form=true, but {name} has no closed-form fit")
        if fit_bandwidth and not callable(getattr(model, "fit_bandwidth", None)):
            raise ValueError(f"model.fit_bandwidth=true, but {name} has no bandwidth to fit")
        dim = int(model.dim)
        mean = torch.zeros(dim) if mean is None else torch.as_tensor(mean)
        scale = torch.ones(dim) if scale is None else torch.as_tensor(scale)
        for label, value in (("mean", mean), ("scale", scale)):
            if value.shape != (dim,):
                raise ValueError(f"{label} must have shape [{dim}], got {tuple(value.shape)}")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be > 0 in every dimension")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.fit_closed_form = bool(fit_closed_form)
        self.fit_bandwidth = bool(fit_bandwidth)
        self.data_mean = mean.detach().double().cpu()
        self.data_scale = scale.detach().double().cpu()
        self.log_scale_sum = float(self.data_scale.log().sum())
        self.data_config = data_config
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.closed_form = self.fit_closed_form or self.fit_bandwidth
        trainable = any(p.requires_grad for p in model.parameters())
        self.trains_by_gradient = trainable and not self.closed_form
        self.automatic_optimization = self.trains_by_gradient
        self.val_nll_best = math.inf
        self._fitted = False
        self._sums: dict[str, Tensor] = {}
        self._test_log_probs: list[Tensor] = []
        self._seen: dict[str, tuple[int, int | None]] = {}
        self._rng_state: dict[str, Tensor] | None = None
        self._trusted = False

    # ------------------------------------------------------------------ setup
    @property
    def training_mode(self) -> str:
        """How the model is trained: ``"closed-form fit"``, ``"bandwidth search"``,
        ``"gradient descent"`` or ``"evaluation only"`` (nothing to train)."""
        if self.fit_closed_form:
            return "closed-form fit"
        if self.fit_bandwidth:
            return "bandwidth search"
        return "gradient descent" if self.trains_by_gradient else "evaluation only"

    def setup(self, stage: str) -> None:
        """Split a sharded KDE over the processes; fit closed-form models once on the
        datamodule's ``train_data`` (stage ``fit``; under DDP from all-reduced statistics)."""
        _distributed.shard_model(self.model)
        _distributed.ignore_shards(self)
        if stage != "fit" or not self.closed_form or self._fitted:
            return
        if self.fit_closed_form:
            train = getattr(self.trainer.datamodule, "train_data", None)
            if train is None:
                raise ValueError("fit_closed_form needs a datamodule with train_data")
            if isinstance(self.model, Gaussian):
                _distributed.fit_gaussian(self.model, train.to(self.device))
            else:
                self.model.fit(train.to(self.device))
        else:
            self.model.fit_bandwidth()
        self._fitted = True

    def configure_optimizers(self) -> Any:
        """The configured optimizer (and scheduler) over the trainable parameters, or an
        empty list when nothing is trained by gradient."""
        if not self.trains_by_gradient:
            return []
        params = [p for p in self.model.parameters() if p.requires_grad]
        factory = self.optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=1e-2))
        optimizer = factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/nll", "interval": "epoch"},
        }

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        """Training loss of a batch ``(x, index)``; logs ``train/nll`` in data units.

        Makes no host synchronisation of its own on batches from a
        :class:`~genmod.data.DensityDataModule` (see :mod:`genmod.training._trust`); a learned
        bandwidth that falls below its dtype's floor is held there and reported by the
        next validation."""
        x, index = batch
        with trusted_inputs(self._trusted), torch.set_grad_enabled(self.trains_by_gradient):
            loss = self.model.training_loss(x, index)
        self.log(
            "train/nll",
            loss.detach() + self.log_scale_sum,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=x.shape[0],
            sync_dist=True,
        )
        return loss if self.trains_by_gradient else None

    def on_train_epoch_end(self) -> None:
        """A model without gradient training is complete after one epoch. After a trusted
        epoch (no per-step checks), one host read checks that every parameter is finite, so
        a run that diverged stops with an error naming the parameter, validation or not."""
        if not self.trains_by_gradient:
            self.trainer.should_stop = True
        elif self._trusted:
            _trust.check_finite_parameters(self.model, self.current_epoch)

    def _evaluate(self, split: str, x: Tensor) -> Tensor:
        """Per-example log-likelihoods of ``x`` in data units; accumulates ``split`` sums.

        Under DDP the examples the distributed sampler repeats to even out the ranks are
        dropped here (every rank still computes its whole batch: a sharded model's
        likelihood is a collective), so each example counts once."""
        if split not in self._seen:
            loaders = self.trainer.val_dataloaders if split == "val" else None
            loaders = self.trainer.test_dataloaders if split == "test" else loaders
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            self._seen[split] = (0, _distributed.real_count(loader))
        seen, real = self._seen[split]
        self._seen[split] = (seen + len(x), real)
        keep = _distributed.keep_mask(seen, len(x), real, x.device)
        log_prob = (self.model.log_prob(x).double() - self.log_scale_sum)[keep]
        stats = torch.stack(
            [-log_prob.sum(), log_prob.square().sum(), log_prob.new_tensor(len(log_prob))]
        )
        self._sums[split] = self._sums.get(split, torch.zeros_like(stats)).to(stats) + stats
        kept = int(keep.sum())
        for key, value in (self.model.eval_metrics(x[keep]) if kept else {}).items():
            value = value + self.log_scale_sum if key.startswith("nll") else value
            self.log(f"{split}/{key}", value, on_epoch=True, batch_size=kept, sync_dist=True)
        return log_prob

    def _reduce(self, split: str) -> tuple[float, float, int]:
        """``(mean NLL, standard error, count)`` of ``split`` over all processes; resets it."""
        stats = self._sums.pop(split, torch.zeros(3, dtype=torch.float64))
        self._seen.pop(split, None)
        stats = self.trainer.strategy.reduce(stats.to(self.device), reduce_op="sum")
        nll_sum, square_sum, count = (float(v) for v in stats)
        if count == 0:
            return math.nan, math.nan, 0
        nll = nll_sum / count
        variance = max(square_sum / count - nll * nll, 0.0) * count / max(count - 1, 1)
        return nll, math.sqrt(variance / count), int(count)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the validation NLL of a batch."""
        self._evaluate("val", batch[0])

    def on_validation_epoch_end(self) -> None:
        """Log ``val/nll``, ``val/nll_best`` and the model's metrics (the same value on every
        rank: ``sync_dist`` averages equal numbers, and keeps Lightning from warning)."""
        nll, _, count = self._reduce("val")
        if count == 0:
            return
        if not self.trainer.sanity_checking:
            self.val_nll_best = min(self.val_nll_best, nll)
        self.log("val/nll", nll, prog_bar=True, sync_dist=True)
        if math.isfinite(self.val_nll_best):
            self.log("val/nll_best", self.val_nll_best, sync_dist=True)
        for key, value in self.model.metrics().items():
            self.log(f"model/{key}", float(value), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the test NLL of a batch and keep its per-example values."""
        self._test_log_probs.append(self._evaluate("test", batch[0]).detach().float().cpu())

    def on_test_epoch_end(self) -> None:
        """Log ``test/nll``, ``test/nll_se``, ``test/bpd`` and the log-likelihood histogram."""
        nll, se, count = self._reduce("test")
        values = self._gather_test_log_probs()
        self._test_log_probs = []
        if count == 0:
            return
        self.log("test/nll", nll, sync_dist=True)
        self.log("test/nll_se", se, sync_dist=True)
        self.log("test/bpd", nll / (self.model.dim * math.log(2.0)), sync_dist=True)
        for key, value in self.model.metrics().items():
            self.log(f"model/{key}", float(value), sync_dist=True)
        if self.trainer.is_global_zero and values.numel() > 0:
            finite = values[torch.isfinite(values)]
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger) and finite.numel() > 0:
                    logger.experiment.add_histogram("test/log_prob", finite, self.global_step)

    def _gather_test_log_probs(self) -> Tensor:
        local = torch.cat(self._test_log_probs) if self._test_log_probs else torch.zeros(0)
        if self.trainer.world_size == 1:
            return local
        sizes = self.all_gather(torch.tensor(local.numel(), device=self.device)).reshape(-1)
        padded = torch.full((int(sizes.max()),), math.nan, device=self.device)
        padded[: local.numel()] = local.to(self.device)
        gathered = self.all_gather(padded).reshape(len(sizes), -1)
        return torch.cat([row[: int(n)] for row, n in zip(gathered, sizes, strict=True)]).cpu()

    # ------------------------------------------------------------------ checkpoints
    def genmod_entry(self) -> dict[str, Any]:
        """The self-contained ``checkpoint["genmod"]`` entry :func:`genmod.load_model` reads:
        model class, constructor arguments, state, standardisation and estimator label."""
        was_training = self.model.training
        self.model.eval()
        estimator = self.model.estimator
        self.model.train(was_training)
        state = _distributed.whole_state(self.model)
        return {
            "format": CHECKPOINT_FORMAT,
            "model_class": model_class_name(self.model),
            "hparams": self.model.hparams(),
            "state_dict": state,
            "mean": self.data_mean.clone(),
            "scale": self.data_scale.clone(),
            "estimator": estimator,
            "data": self.data_config,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "val_nll_best": self.val_nll_best,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the ``"genmod"`` entry and the torch random state to every checkpoint."""
        checkpoint["genmod"] = self.genmod_entry()
        if "state_dict" in checkpoint and getattr(self.model, "_shard", None) is not None:
            # A sharded KDE's rows, whole: gathered from the ranks by genmod_entry.
            checkpoint["state_dict"]["model.data"] = checkpoint["genmod"]["state_dict"]["data"]
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["genmod_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore ``val/nll_best``, and keep the saved random state for :meth:`on_train_start`,
        so a resumed run continues the same record and the same random stream."""
        entry = checkpoint.get("genmod") or {}
        _distributed.split_state(self.model, checkpoint.get("state_dict", {}), "model.")
        self.val_nll_best = float(entry.get("val_nll_best", math.inf))
        self._rng_state = checkpoint.get("genmod_rng")

    def on_train_start(self) -> None:
        """Resume the random stream of the checkpoint (after Lightning's sanity check, which
        draws random numbers an uninterrupted run would not have drawn at this point), and
        decide once per fit whether training batches need per-step value checks."""
        self._trusted = _trust.batches_trusted(self._trainer, self.model)
        rng, self._rng_state = self._rng_state, None
        if rng is None:
            return
        torch.set_rng_state(rng["cpu"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
