"""The LightningDataModule every genmod run trains, validates and tests on."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from genmod.data.batches import (
    BatchedIndexedDataset,
    DistributedEpochShuffleSampler,
    EpochShuffleSampler,
    collate_indexed,
)
from genmod.data.digits import DIGITS_IMAGE_SHAPE, load_digits
from genmod.data.files import DataError, load_array
from genmod.data.options import DATASETS, check_options
from genmod.data.preprocess import (
    MIN_TRAIN_ROWS,
    dequantize,
    fit_standardization,
    generator_for,
    min_rows,
    split_sizes,
)
from genmod.data.toys import TOY_DATASETS, make_toy

__all__ = ["DATASETS", "DensityDataModule"]

_SPLITS = ("train", "val", "test")


def _check_float32_range(label: str, raw: Tensor) -> None:
    """Raise a :class:`DataError` naming the first row (0-based, in the file's order) holding
    a value float32 cannot hold: models, samples and figures in data units are float32."""
    limit = torch.finfo(torch.float32).max
    big = (raw.abs() > limit).any(dim=1)
    if bool(big.any()):
        row = int(big.nonzero()[0, 0])
        value = float(raw[row].abs().max())
        raise DataError(
            f"{label}: row {row} (0-based) holds {value:.3g}, beyond float32's range "
            f"({limit:.3g}); rescale the data"
        )


class NotSetUpError(RuntimeError, AttributeError):
    """A result of :meth:`DensityDataModule.setup` was read before ``setup()`` ran
    (an ``AttributeError`` too, so ``hasattr`` is simply false until then)."""


class DensityDataModule(L.LightningDataModule):
    """Data for density estimation: load, split, dequantise, standardise, batch.

    ``setup()`` (idempotent) builds the data once:

    1. load it: ``n_samples`` draws of a 2-D toy (:func:`genmod.data.make_toy`, generator
       seeded with ``seed``), scikit-learn's digits ``[1797, 64]``, or ``path``;
    2. split it by a seeded random permutation into train / val / test with
       ``round(n * val_fraction)`` val and ``round(n * test_fraction)`` test rows;
    3. if ``dequantize`` and the data are integer-valued (always for digits, never for
       toys, for files when every value is an integer) add fixed ``U[0, 1)`` noise to
       each split, seeded; likelihoods are then densities in the data's own units
       (pixel units for digits);
    4. if ``standardize``, fit ``mean`` and ``scale`` (std, ddof=0) per dimension on the
       train split only and map every split to ``(x - mean) / scale``; constant
       dimensions get scale 1.

    Any NLL computed on ``train_data`` / ``val_data`` / ``test_data`` is in standardised
    units; add :attr:`log_scale_sum` (= sum_d log scale_d) to report it in data units.
    Every batch is ``(x [b, D] float32, index [b] int64)`` with ``index`` the rows of the
    split's tensor. The train loader reshuffles each epoch as a function of
    ``(seed, epoch)``, so resumed runs see the same batches.

    Args:
        name: one of :data:`DATASETS` (the six toys, ``"digits"``, ``"file"``).
        path: the data file for ``name="file"`` (see :func:`genmod.data.load_array`).
        n_samples: points drawn for a toy (ignored for digits and files).
        noise: a toy's noise scale (``None``: the toy's default); toys only.
        val_fraction: fraction of rows held out for validation, in (0, 1).
        test_fraction: fraction of rows held out for testing, in (0, 1).
        standardize: standardise with train statistics.
        dequantize: add U[0, 1) noise to integer-valued data.
        batch_size: training batch size.
        eval_batch_size: validation / test batch size.
        seed: seeds the toy draw, the split, the dequantisation and the shuffling.
            ``None`` means 0, so runs that do not set it share one test split.
        num_workers: DataLoader worker processes.
        image_shape: shape of one example as an image (its product must be D);
            ``None`` gives (8, 8) for digits and no image shape otherwise.

    Raises:
        DataError: a ``ValueError`` with a one-line message naming the argument, or the
            file and its problem (at ``setup``).

    Example:
        >>> dm = DensityDataModule("moons", n_samples=2000)
        >>> dm.setup()
        >>> x, index = next(iter(dm.train_dataloader()))
        >>> x.shape, dm.dim
        (torch.Size([256, 2]), 2)
    """

    def __init__(
        self,
        name: str = "moons",
        path: str | os.PathLike[str] | None = None,
        n_samples: int = 10000,
        noise: float | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        standardize: bool = True,
        dequantize: bool = True,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        seed: int | None = 0,
        num_workers: int = 0,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        options = check_options(
            name=name,
            path=path,
            n_samples=n_samples,
            noise=noise,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            standardize=standardize,
            dequantize=dequantize,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            num_workers=num_workers,
            image_shape=image_shape,
        )
        self.save_hyperparameters(options)
        self._built: dict[str, Any] | None = None

    # ---------------------------------------------------------------- building
    def prepare_data(self) -> None:
        """Nothing to download: toys are generated, digits ship with scikit-learn."""

    def _load(self) -> tuple[Tensor, bool, str]:
        """Raw data float64 ``[n, D]``, whether it is integer-valued, and a label."""
        hp = self.hparams
        if hp.name in TOY_DATASETS:
            generator = torch.Generator().manual_seed(hp.seed)
            x = make_toy(hp.name, hp.n_samples, generator=generator, noise=hp.noise)
            return x.to(torch.float64), False, hp.name
        if hp.name == "digits":
            return load_digits(dtype=torch.float64), True, "digits"
        x = load_array(hp.path, dtype=torch.float64)
        return x, bool((x == torch.round(x)).all()), str(hp.path)

    def setup(self, stage: str | None = None) -> None:
        """Load, split, dequantise and standardise the data; later calls do nothing.

        Raises:
            DataError: the file cannot be used, or it has fewer rows than the split
                needs (``"needs at least K rows, file has N"``).
        """
        if self._built is not None:
            return
        hp = self.hparams
        raw, integer_valued, label = self._load()
        _check_float32_range(label, raw)
        n, dim = raw.shape
        sizes = split_sizes(n, hp.val_fraction, hp.test_fraction)
        if sizes[0] < MIN_TRAIN_ROWS or min(sizes[1:]) < 1:
            need = min_rows(hp.val_fraction, hp.test_fraction)
            what = "file" if hp.name == "file" else "dataset"
            raise DataError(
                f"{label}: needs at least {need} rows for val_fraction={hp.val_fraction}, "
                f"test_fraction={hp.test_fraction} (>= {MIN_TRAIN_ROWS} train, 1 val, "
                f"1 test), {what} has {n}"
            )
        image_shape = None if hp.image_shape is None else tuple(hp.image_shape)
        if image_shape is None and hp.name == "digits":
            image_shape = DIGITS_IMAGE_SHAPE
        if image_shape is not None and math.prod(image_shape) != dim:
            raise DataError(
                f"{label}: image_shape {list(image_shape)} has {math.prod(image_shape)} "
                f"pixels, but the data has D={dim} columns"
            )
        order = torch.randperm(n, generator=generator_for(hp.seed, "split"))
        bounds = (0, sizes[0], sizes[0] + sizes[1], n)
        raw_splits = {s: raw[order[bounds[i] : bounds[i + 1]]] for i, s in enumerate(_SPLITS)}
        dequantized = hp.dequantize and integer_valued
        if dequantized:
            for s in _SPLITS:
                raw_splits[s] = dequantize(raw_splits[s], generator_for(hp.seed, f"dequant:{s}"))
        if hp.standardize:
            mean, scale = fit_standardization(raw_splits["train"])
        else:
            mean = torch.zeros(dim, dtype=torch.float64)
            scale = torch.ones(dim, dtype=torch.float64)
        self._built = {
            "label": label,
            "raw": raw_splits,
            "std": {s: ((raw_splits[s] - mean) / scale).float() for s in _SPLITS},
            "mean": mean,
            "scale": scale,
            "image_shape": image_shape,
            "dequantized": dequantized,
        }

    def _get(self, key: str) -> Any:
        if self._built is None:
            raise NotSetUpError("DensityDataModule: call setup() before reading its data")
        return self._built[key]

    # ---------------------------------------------------------------- results
    @property
    def train_data(self) -> Tensor:
        """Standardised training rows, float32 ``[n_train, D]``."""
        return self._get("std")["train"]

    @property
    def val_data(self) -> Tensor:
        """Standardised validation rows, float32 ``[n_val, D]``."""
        return self._get("std")["val"]

    @property
    def test_data(self) -> Tensor:
        """Standardised test rows, float32 ``[n_test, D]``."""
        return self._get("std")["test"]

    @property
    def dim(self) -> int:
        """Data dimension D."""
        return int(self._get("mean").shape[0])

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """Shape of one example as an image ((8, 8) for digits), else ``None``."""
        return self._get("image_shape")

    @property
    def dequantized(self) -> bool:
        """Whether U[0, 1) dequantisation noise was added."""
        return bool(self._get("dequantized"))

    @property
    def mean(self) -> Tensor:
        """Per-dimension training mean, float32 ``[D]`` (zeros without standardisation)."""
        return self._get("mean").float()

    @property
    def scale(self) -> Tensor:
        """Per-dimension training std (ddof=0; 1 for constant dimensions), float32 ``[D]``."""
        return self._get("scale").float()

    @property
    def log_scale_sum(self) -> float:
        """``sum_d log scale_d`` in nats: NLL in data units = standardised NLL + this."""
        return float(torch.log(self._get("scale")).sum())

    def to_data_units(self, x: Tensor) -> Tensor:
        """Map standardised ``x`` ``[..., D]`` back to data units: ``x * scale + mean``."""
        mean, scale = self._stats_like(x)
        return x * scale + mean

    def from_data_units(self, x: Tensor) -> Tensor:
        """Standardise ``x`` ``[..., D]`` given in data units: ``(x - mean) / scale``."""
        mean, scale = self._stats_like(x)
        return (x - mean) / scale

    def _stats_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating torch.Tensor")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have last dimension D={self.dim}, got {tuple(x.shape)}")
        mean, scale = self._get("mean"), self._get("scale")
        return mean.to(x.device, x.dtype), scale.to(x.device, x.dtype)

    def raw_split(self, split: str, dtype: torch.dtype = torch.float32) -> Tensor:
        """Split ``"train"``, ``"val"`` or ``"test"`` in data units: dequantised (when
        that applies) but not standardised, as ``dtype`` ``[n_split, D]``."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
        return self._get("raw")[split].to(dtype)

    def describe(self) -> str:
        """One line: source, sizes, seed and the preprocessing applied."""
        std = self._get("std")
        n = {s: std[s].shape[0] for s in _SPLITS}
        steps = []
        if self.dequantized:
            steps.append("dequantised +U[0,1)")
        if self.hparams.standardize:
            steps.append(f"standardised on train (sum log scale = {self.log_scale_sum:.4f} nats)")
        image = f", images {'x'.join(map(str, self.image_shape))}" if self.image_shape else ""
        return (
            f"{self._get('label')}: {sum(n.values())} rows x {self.dim} dims{image}; "
            f"train {n['train']} / val {n['val']} / test {n['test']} (seed {self.hparams.seed}); "
            f"{', '.join(steps) or 'raw values'}"
        )

    # ---------------------------------------------------------------- loaders
    def _loader(self, x: Tensor, batch_size: int, sampler: Sampler[int] | None) -> Any:
        workers = self.hparams.num_workers
        return DataLoader(
            BatchedIndexedDataset(x),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=collate_indexed,
            num_workers=workers,
            persistent_workers=workers > 0,
            # The loader's own generator: iterating would otherwise take a draw from torch's
            # global stream (the workers' base seed), which a resumed run takes at another
            # point than an uninterrupted one.
            generator=generator_for(self.hparams.seed, "loader"),
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x, index)``; order a function of ``(seed, epoch)``."""
        n, seed = self.train_data.shape[0], self.hparams.seed
        sampler: Sampler[int] = EpochShuffleSampler(n, seed)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Under DDP: each rank its share of the same permutation (see the sampler).
            sampler = DistributedEpochShuffleSampler(
                n, seed, dist.get_world_size(), dist.get_rank()
            )
        return self._loader(self.train_data, self.hparams.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(x, index)`` in row order."""
        return self._loader(self.val_data, self.hparams.eval_batch_size, None)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(x, index)`` in row order."""
        return self._loader(self.test_data, self.hparams.eval_batch_size, None)
