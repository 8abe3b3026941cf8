"""Models in data units, and loading them back from the checkpoints ``genmod-train`` writes.

The training loop fits every model to standardised data ``z = (x - mean) / scale``.
:class:`Standardized` undoes that: a model ``q`` of ``z`` is the data density

    p(x) = q((x - mean) / scale) / prod_d scale_d,
    log p(x) = log q(z) - sum_d log scale_d                                  [nats]

and its samples are ``mean + scale * z``. :func:`load_model` rebuilds such a model from a
checkpoint's ``"genmod"`` entry (or from a run directory) with torch only.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genmod.models.base import DensityModel, check_points

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_CLASSES",
    "Standardized",
    "genmod_entry",
    "load_checkpoint",
    "load_model",
    "model_class_name",
    "read_genmod_entry",
    "rebuild_model",
    "register_model",
    "resolve_checkpoint",
]

CHECKPOINT_FORMAT = 1
"""Version of the ``checkpoint["genmod"]`` entry this module reads and writes."""

_ENTRY_KEYS = ("model_class", "hparams", "state_dict", "mean", "scale")

_BUILTIN = {
    "Gaussian": "genmod.models.gaussian",
    "KDE": "genmod.models.kde",
    "LatentVariableModel": "genmod.models.lvm",
}

_REGISTERED: dict[str, type[DensityModel]] = {}
"""Model classes added by :func:`register_model`, by the name checkpoints store."""


class _ModelClasses(Mapping[str, type]):
    """Built-in model classes by name (each imported on first access from genmod's own
    modules), then the classes added by :func:`register_model`."""

    def __getitem__(self, name: str) -> type:
        if name in _BUILTIN:
            return getattr(importlib.import_module(_BUILTIN[name]), name)
        return _REGISTERED[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*_BUILTIN, *_REGISTERED])

    def __len__(self) -> int:
        return len(_BUILTIN) + len(_REGISTERED)

    def __repr__(self) -> str:
        return f"MODEL_CLASSES({', '.join(self)})"


MODEL_CLASSES: Mapping[str, type] = _ModelClasses()
"""The model classes a checkpoint may name: ``Gaussian``, ``KDE`` and
``LatentVariableModel`` (imported lazily), and those added by :func:`register_model`
(stored as ``"module:QualName"``). Nothing else is ever imported from a checkpoint."""


def _import_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def model_class_name(model: DensityModel) -> str:
    """The name a checkpoint stores for ``model``'s class: the key in :data:`MODEL_CLASSES`
    for built-in models, ``"module:QualName"`` for any other class."""
    cls = type(model)
    if _BUILTIN.get(cls.__name__) == cls.__module__:
        return cls.__name__
    return _import_name(cls)


def register_model(cls: type[DensityModel]) -> type[DensityModel]:
    """Allow checkpoints of the :class:`DensityModel` subclass ``cls`` to be loaded.

    A checkpoint is data: it names its model class, but :func:`load_model` only rebuilds
    classes of :data:`MODEL_CLASSES`, and never imports a module a checkpoint names.
    Research code with its own model class registers it (usable as a decorator) before
    loading its checkpoints.

    Raises:
        ValueError: when ``cls`` is not a DensityModel subclass.

    Example:
        >>> from genmod import Gaussian
        >>> @register_model
        ... class Shifted(Gaussian):
        ...     pass
        >>> MODEL_CLASSES[model_class_name(Shifted(2))] is Shifted
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, DensityModel)):
        raise ValueError(f"register_model needs a DensityModel subclass, got {cls!r}")
    _REGISTERED[_import_name(cls)] = cls
    return cls


def _model_class(name: Any) -> type[DensityModel]:
    if not isinstance(name, str):
        raise ValueError(f"checkpoint: model_class must be a string, got {type(name).__name__}")
    if name in MODEL_CLASSES:
        return MODEL_CLASSES[name]
    if ":" in name:
        raise ValueError(
            f"checkpoint: model_class {name!r} is not a registered genmod model; a checkpoint "
            "never decides what code is imported: if you trust this model's code, import it "
            "and call genmod.register_model(<its class>) before loading"
        )
    raise ValueError(f"checkpoint: unknown model_class {name!r}; known: {', '.join(MODEL_CLASSES)}")


def rebuild_model(
    name: str, hparams: dict[str, Any], state_dict: dict[str, Tensor]
) -> DensityModel:
    """The model of class ``name`` (see :func:`model_class_name`) from its ``hparams`` and
    ``state_dict``, in the dtype of the saved floating tensors (float64 stays float64)."""
    cls = _model_class(name)
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise ValueError(f"checkpoint: the hparams of {name} must be a dict of named values")
    try:
        model = cls.from_state(hparams, state_dict)
    except (TypeError, KeyError, RuntimeError) as err:  # wrong keys, shapes or types
        text = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint: cannot rebuild {name} from its state ({text})") from err
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) != torch.get_default_dtype():
        model = model.to(dtypes.pop())
        model.load_state_dict(state_dict)  # again, so no value went through float32
    return model


class Standardized(DensityModel):
    """A density model of standardised data, presented in data units.

    ``log_prob(x) = model.log_prob((x - mean) / scale) - sum_d log scale_d`` (nats) and
    ``sample(n) = mean + scale * model.sample(n)``. ``estimator``, ``metrics`` and
    ``has_closed_form`` are the inner model's (its ``metrics`` are in standardised units);
    ``eval_metrics`` keys starting with ``nll`` are shifted to data units.

    Args:
        model: the inner :class:`DensityModel` of ``z = (x - mean) / scale``.
        mean: per-dimension offset ``[D]`` (data units).
        scale: per-dimension scale ``[D]``, finite and > 0 (data units).

    Raises:
        ValueError: naming ``model``, ``mean`` or ``scale`` when they do not fit together.

    Example:
        >>> from genmod import Gaussian
        >>> inner = Gaussian(2).fit(torch.randn(100, 2))
        >>> model = Standardized(inner, torch.tensor([10.0, 0.0]), torch.tensor([2.0, 1.0]))
        >>> model.sample(5).shape
        torch.Size([5, 2])
    """

    def __init__(self, model: DensityModel, mean: Tensor, scale: Tensor) -> None:
        super().__init__()
        if not isinstance(model, DensityModel):
            raise ValueError(f"model must be a DensityModel, got {type(model).__name__}")
        dim = int(model.dim)
        mean = torch.as_tensor(mean).detach().reshape(-1)
        scale = torch.as_tensor(scale).detach().reshape(-1)
        for name, value in (("mean", mean), ("scale", scale)):
            if value.shape != (dim,):
                raise ValueError(f"{name} must have shape [{dim}], got {tuple(value.shape)}")
            if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must hold finite floating values")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be > 0 in every dimension")
        self.dim = dim
        self.model = model
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())

    @property
    def log_scale_sum(self) -> Tensor:
        """``sum_d log scale_d`` (0-d): data-unit NLL minus standardised NLL, in nats."""
        return self.scale.log().sum()

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / scale`` for data ``x`` ``[n, D]``."""
        x = check_points(x, "x", self.dim)
        return (x - self.mean.to(x)) / self.scale.to(x)

    def _inner_dtype(self, default: torch.dtype) -> torch.dtype:
        """The inner model's floating dtype (its first floating parameter or buffer)."""
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return default

    def unstandardize(self, z: Tensor) -> Tensor:
        """``mean + scale * z``: standardised points back to data units."""
        return self.mean.to(z) + self.scale.to(z) * z

    def log_prob(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Log density of data ``x`` ``[n, D]`` in nats (data units) -> ``[n]``. Keyword
        arguments (e.g. ``num_samples`` of a latent-variable model) go to the inner model."""
        z = self.standardize(x)
        log_prob = self.model.log_prob(z.to(self._inner_dtype(z.dtype)), **kwargs)
        return log_prob - self.log_scale_sum.to(log_prob.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        """``n`` samples ``[n, D]`` in data units; keyword arguments (e.g. ``noise=False``)
        go to the inner model's ``sample``."""
        return self.unstandardize(self.model.sample(n, generator=generator, **kwargs))

    def fit(self, x: Tensor) -> Standardized:
        """Fit the inner model in closed form to the standardised ``x``; returns ``self``."""
        self.model.fit(self.standardize(x).to(self._inner_dtype(x.dtype)))
        return self

    def training_loss(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The inner model's training loss on standardised ``x``, in data units."""
        z = self.standardize(x).to(self._inner_dtype(x.dtype))
        return self.model.training_loss(z, index) + self.log_scale_sum.to(z.dtype)

    @property
    def has_closed_form(self) -> bool:
        """The inner model's :attr:`~DensityModel.has_closed_form`."""
        return self.model.has_closed_form

    @property
    def estimator(self) -> str:
        """The inner model's estimator label."""
        return self.model.estimator

    def metrics(self) -> dict[str, float]:
        """The inner model's metrics (standardised units)."""
        return self.model.metrics()

    def eval_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """The inner model's evaluation metrics of data ``x``; ``nll*`` keys in data units."""
        z = self.standardize(x).to(self._inner_dtype(x.dtype))
        shift = self.log_scale_sum.to(z.dtype)
        return {
            key: value + shift if key.startswith("nll") else value
            for key, value in self.model.eval_metrics(z).items()
        }

    def hparams(self) -> dict[str, Any]:
        """``{"model_class": ..., "model_hparams": ...}`` of the inner model; the mean and
        scale are buffers, so :meth:`from_state` needs the ``state_dict`` too."""
        return {"model_class": model_class_name(self.model), "model_hparams": self.model.hparams()}

    @classmethod
    def from_state(cls, hparams: dict[str, Any], state_dict: dict[str, Tensor]) -> Standardized:
        """Rebuild from :meth:`hparams` and a ``state_dict`` (``model.*``, ``mean``, ``scale``)."""
        inner_state = {k[6:]: v for k, v in state_dict.items() if k.startswith("model.")}
        inner = rebuild_model(hparams["model_class"], hparams["model_hparams"], inner_state)
        return cls(inner, state_dict["mean"], state_dict["scale"])

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file for ``path``: the file itself, or for a ``genmod-train`` run
    directory the best checkpoint named in its ``metrics.json`` (else ``checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: naming ``path`` when no checkpoint is found there.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():
        best = json.loads(metrics_file.read_text()).get("best_checkpoint")
        if best:
            candidate = path / best
            if candidate.is_file():
                return candidate
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise FileNotFoundError(f"no checkpoint in run directory {path} (expected checkpoints/*.ckpt)")


def read_genmod_entry(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The ``"genmod"`` entry of the checkpoint at ``path`` (a file or a run directory).

    Raises:
        FileNotFoundError: when there is no checkpoint at ``path``.
        ValueError: when the file is not a genmod checkpoint of a known format.
    """
    file = resolve_checkpoint(path)
    return genmod_entry(load_checkpoint(file, map_location), file)


def load_checkpoint(file: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``file``, read with ``weights_only=True`` (no code runs).

    Raises:
        ValueError: naming ``file`` when it is not a readable checkpoint (truncated, empty,
            random bytes, a pickle of arbitrary objects) or holds no dict.
    """
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"{file} is not a readable checkpoint ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{file} is not a checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def genmod_entry(checkpoint: dict[str, Any], file: str | Path) -> dict[str, Any]:
    """The validated ``"genmod"`` entry of a loaded ``checkpoint`` (see
    :func:`read_genmod_entry`), with ``"path"`` set to ``file``."""
    entry = checkpoint.get("genmod")
    if not isinstance(entry, dict):
        raise ValueError(f"{file} has no 'genmod' entry: not a checkpoint written by genmod-train")
    if entry.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{file}: genmod checkpoint format {entry.get('format')!r} is not supported "
            f"(this version reads format {CHECKPOINT_FORMAT})"
        )
    missing = [key for key in _ENTRY_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{file}: the genmod entry lacks {', '.join(missing)}")
    entry["path"] = str(file)
    return entry


def load_model(path: str | Path, map_location: Any = "cpu") -> Standardized:
    """Load a model trained by ``genmod-train``, in data units.

    Args:
        path: a ``.ckpt`` file, or a run directory (its best checkpoint is used).
        map_location: where to put the tensors, as in :func:`torch.load`.

    Returns:
        A :class:`Standardized` model in eval mode whose ``log_prob`` (nats, data units) and
        ``sample`` work on the data as the user gave it; ``.model`` is the inner model.

    Raises:
        FileNotFoundError: naming ``path`` when no checkpoint is there.
        ValueError: when the file is not a genmod checkpoint.

    Example:
        >>> model = load_model("outputs/train/runs/2024-01-01_12-00-00/")  # doctest: +SKIP
        >>> model.log_prob(x).mean()  # doctest: +SKIP
    """
    entry = read_genmod_entry(path, map_location)
    inner = rebuild_model(entry["model_class"], entry["hparams"], entry["state_dict"])
    model = Standardized(inner, entry["mean"], entry["scale"])
    return model.eval()
