"""Evaluate trained models on a data split, and compare two of them by paired differences.

All log-likelihoods here are per example, in nats, in data units.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from genmod.data.options import check_stored_config
from genmod.models.base import DensityModel
from genmod.progress import Progress, Task

__all__ = [
    "checkpoint_split",
    "estimator_label",
    "find_runs",
    "load_split",
    "log_likelihoods",
    "mean_eval_metrics",
    "nll_summary",
    "paired_difference",
    "resolve_device",
    "verdict",
    "zero_density_note",
]

SPLITS = ("train", "val", "test")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: naming ``device`` for an unknown or unavailable device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return device


def load_split(
    data_config: dict[str, Any], split: str, *, stored: str | None = None
) -> tuple[Tensor, Any]:
    """Build the datamodule of ``data_config`` (a ``_target_`` config) and return split
    ``split`` in data units (float64 ``[n, D]``) with the datamodule.

    Args:
        data_config: the data config.
        split: ``train``, ``val`` or ``test``.
        stored: where ``data_config`` was read from (a checkpoint's path) when it did not
            come from the user: it is then checked as data
            (:func:`genmod.data.options.check_stored_config`) and only genmod's own
            :class:`~genmod.data.DensityDataModule` is built from it; Hydra never sees it.

    Raises:
        ValueError: naming ``split`` when it is not train, val or test, or the key of a
            stored config that is not plain data.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if stored is not None:
        from genmod.data.datamodule import DensityDataModule

        datamodule = DensityDataModule(**check_stored_config(data_config, stored))
    else:
        datamodule = instantiate(data_config)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.raw_split(split, dtype=torch.float64), datamodule


def checkpoint_split(
    given: dict[str, Any] | None, entry: dict[str, Any], split: str
) -> tuple[Tensor, Any, dict[str, Any]]:
    """``(x, datamodule, config)`` of ``split`` for evaluating a checkpoint: the user's data
    config ``given`` when set, else the one the checkpoint's ``entry`` stores, read as data
    (``load_split(..., stored=path)``: never instantiated by name).

    Raises:
        ValueError: when neither is there, or the stored config is not plain genmod data.
    """
    if given:
        return (*load_split(given, split), given)
    stored = entry.get("data")
    if not stored:
        raise ValueError("the checkpoint stores no data config: pass one, e.g. data=moons")
    return (*load_split(stored, split, stored=str(entry.get("path", "checkpoint"))), stored)


def log_likelihoods(
    model: DensityModel,
    x: Tensor,
    *,
    batch_size: int = 1024,
    num_samples: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = None,
) -> Tensor:
    """``model.log_prob`` of every row of ``x`` in batches, without gradients, in eval mode.

    Args:
        model: a model in data units (e.g. from :func:`genmod.load_model`).
        x: data ``[n, D]``.
        batch_size: rows per call, ``>= 1``.
        num_samples: Monte Carlo sample count passed to models whose ``log_prob`` takes
            ``num_samples`` (``None``: the model's default).
        device: where to compute.
        progress: report the examples done and the running NLL (nats per example) after
            each batch (:mod:`genmod.progress`; ``None``: silent unless a reporter is active).

    Returns:
        float64 ``[n]`` on the CPU.

    Raises:
        ValueError: naming ``batch_size`` / ``num_samples`` when invalid, or ``x`` when
            its dimension differs from the model's.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    kwargs: dict[str, Any] = {}
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        inner = getattr(model, "model", model)
        if "num_samples" not in inspect.signature(inner.log_prob).parameters:
            raise ValueError(
                f"num_samples applies to Monte Carlo models, not {type(inner).__name__}"
            )
        kwargs["num_samples"] = num_samples
    if x.dim() != 2 or x.shape[1] != model.dim:
        raise ValueError(f"x has shape {tuple(x.shape)}, but the model's dimension is {model.dim}")
    model = model.to(device).eval()
    out = []
    what = type(getattr(model, "model", model)).__name__
    name = f"log-likelihood of {x.shape[0]} examples ({what})"
    with torch.no_grad(), Task(name, progress, total=x.shape[0], unit="example") as task:
        total, done = 0.0, 0
        for part in x.split(batch_size):
            out.append(model.log_prob(part.to(device), **kwargs).double().cpu())
            total, done = total + float(out[-1].sum()), done + len(part)
            task.update(len(part), nll=-total / done)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def estimator_label(model: DensityModel, num_samples: int | None = None) -> str:
    """How :func:`log_likelihoods` computed a model's likelihood with ``num_samples``: the
    model's own label (``"exact"``, or e.g. ``"prior, K=4096"`` with its default K) with the
    K replaced by ``num_samples`` for a Monte Carlo model when it is given."""
    label = str(model.estimator)
    if num_samples is None or ", K=" not in label:
        return label
    return f"{label.rsplit(', K=', 1)[0]}, K={num_samples}"


def mean_eval_metrics(
    model: DensityModel, x: Tensor, *, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """The model's :meth:`~DensityModel.eval_metrics` of ``x``, averaged over batches
    weighted by their size (e.g. ``nll_exact`` of a linear latent-variable model)."""
    totals: dict[str, float] = {}
    model = model.to(device).eval()
    with torch.no_grad():
        for part in x.split(batch_size):
            for key, value in model.eval_metrics(part.to(device)).items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(part)
    return {key: value / max(len(x), 1) for key, value in totals.items()}


def nll_summary(log_probs: Tensor) -> dict[str, float]:
    """``{"nll", "nll_se", "n", "zero_density"}``: mean negative log-likelihood and its
    standard error ``std(log p) / sqrt(n)`` (ddof=1), nats per example, and how many examples
    have zero density (``log p = -inf``: the NLL is then ``inf``, with no standard error)."""
    n = int(log_probs.numel())
    nll = float(-log_probs.mean()) if n else math.nan
    se = float(log_probs.std(correction=1) / math.sqrt(n)) if n > 1 else math.nan
    zero = int((log_probs == -math.inf).sum())
    return {
        "nll": nll,
        "nll_se": se if math.isfinite(nll) else math.nan,
        "n": n,
        "zero_density": zero,
    }


def zero_density_note(summary: dict[str, Any]) -> str | None:
    """One sentence explaining an infinite NLL by the examples with zero density, or None."""
    zero, n = summary.get("zero_density", 0), summary["n"]
    if not zero:
        return None
    return (
        f"{zero} of {n} examples have zero density under the model (log p = -inf), so the "
        "NLL is infinite: a compact kernel (tophat, epanechnikov, linear, cosine) puts no mass "
        "farther than one bandwidth from every training point; use a gaussian or exponential "
        "kernel, or a larger bandwidth"
    )


def paired_difference(log_probs_a: Tensor, log_probs_b: Tensor) -> dict[str, Any]:
    """Paired comparison of two models on the same examples.

    ``d_i = log p_A(x_i) - log p_B(x_i)`` (nats); ``mean = mean_i d_i`` is how much better A
    is per example (positive: A better), ``se = std(d) / sqrt(n)``, ``z = mean / se`` and the
    two-sided normal ``p = erfc(|z| / sqrt 2)``. Examples where a model has zero density
    (``log p = -inf``, e.g. outside a compact kernel's support) are counted in
    ``zero_a`` / ``zero_b``; the statistics use the examples where both are finite.

    Raises:
        ValueError: when the two tensors do not have the same shape ``[n]``.
    """
    if log_probs_a.shape != log_probs_b.shape or log_probs_a.dim() != 1:
        raise ValueError("the two models must be evaluated on the same examples")
    zero_a = int((log_probs_a == -math.inf).sum())
    zero_b = int((log_probs_b == -math.inf).sum())
    both = torch.isfinite(log_probs_a) & torch.isfinite(log_probs_b)
    d = (log_probs_a - log_probs_b)[both]
    n = int(d.numel())
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(correction=1) / math.sqrt(n)) if n > 1 else math.nan
    sign = math.copysign(math.inf, mean) if mean else 0.0
    z = mean / se if se > 0 else sign
    p = math.erfc(abs(z) / math.sqrt(2.0)) if math.isfinite(z) else 0.0
    return {"mean": mean, "se": se, "z": z, "p": p, "n": n, "zero_a": zero_a, "zero_b": zero_b}


def _p_text(p: float) -> str:
    return "p < 1e-16" if p < 1e-16 else f"p = {p:.2g}"


def verdict(name_a: str, name_b: str, diff: dict[str, Any]) -> str:
    """One line: which of A and B has the higher test likelihood, by how much, how sure."""
    zero_a, zero_b = diff["zero_a"], diff["zero_b"]
    if zero_a != zero_b and (zero_a == 0 or zero_b == 0):
        worse, better, k = (name_a, name_b, zero_a) if zero_a else (name_b, name_a, zero_b)
        return (
            f"{better} is better: {worse} gives zero density to {k} test point(s), "
            "so its test NLL is infinite."
        )
    mean, se, z, p = diff["mean"], diff["se"], diff["z"], diff["p"]
    if not math.isfinite(mean):
        return f"No comparison possible: {diff['n']} examples with finite likelihoods."
    note = ""
    if zero_a or zero_b:
        note = f" (on the {diff['n']} points where both densities are > 0)"
    if abs(z) < 2:
        return (
            f"No significant difference between {name_a} and {name_b}: "
            f"{mean:+.4f} +- {se:.4f} nats/example{note} (z = {z:.2f}, {_p_text(p)})."
        )
    better, worse = (name_a, name_b) if mean > 0 else (name_b, name_a)
    how = "clear" if abs(z) >= 3 else "likely, not conclusive"
    return (
        f"{better} is better than {worse} by {abs(mean):.4f} +- {se:.4f} nats/example{note} "
        f"(paired z = {abs(z):.1f}, {_p_text(p)}): {how}."
    )


def _is_run(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "checkpoints").is_dir()


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a checkpoint file or a run directory; for a sweep
    directory, its run directories in job order (``<num>`` or ``<num>_<overrides>``).

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist or holds no runs.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run not found: {path}")
    if path.is_file() or _is_run(path):
        return [path]
    runs = [p for p in path.iterdir() if p.is_dir() and _is_run(p)]
    if not runs:
        raise FileNotFoundError(f"no genmod runs (metrics.json or checkpoints/) under {path}")

    def job_order(p: Path) -> tuple[bool, int, str]:
        number = p.name.split("_", 1)[0]  # "3" or "3_model.kernel=tophat"
        return (not number.isdigit(), int(number) if number.isdigit() else 0, p.name)

    return sorted(runs, key=job_order)
