"""``genmod-compare``: which of two or more trained models is better, and how sure.

    genmod-compare runs=[outputs/train/runs/A,outputs/train/runs/B]
    genmod-compare runs=[outputs/train/multirun/<sweep>]         # every run of a sweep
    genmod-compare a=RUN_A b=RUN_B

Every model is evaluated on the same examples (the test split of the first run's data config,
or ``data=...``). The ranking is by NLL; each model is compared with the best one by the
paired differences ``d_i = log p_best(x_i) - log p(x_i)``, whose mean has standard error
``std(d) / sqrt(n)``: far smaller than the NLLs' own errors, because both models find the
same examples easy or hard. The last line is the verdict for the two best (or the two given).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genmod.cli._common import hydra_entry

__all__ = ["compare_task", "main"]

log = logging.getLogger(__name__)

_LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers")


def _overrides(run: Path) -> list[str]:
    """The command-line overrides of a run, from Hydra's ``.hydra/overrides.yaml``."""
    run_dir = run.parent.parent if run.is_file() and run.parent.name == "checkpoints" else run
    file = run_dir / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    return [str(o) for o in OmegaConf.to_container(OmegaConf.load(file)) or []]


def _labels(runs: list[Path]) -> list[str]:
    """Short names: the overrides that differ between runs, else the paths."""
    overrides = [_overrides(r) for r in runs]
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    labels = [" ".join(o for o in ov if o not in common) for ov in overrides]
    if len(set(labels)) < len(labels) or not all(labels):
        labels = [str(r) for r in runs]
    return labels


def _split_key(config: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k not in _LOADER_KEYS}


def _table(rows: list[dict[str, Any]], split: str) -> str:
    width = max(len("run"), *(len(r["label"]) for r in rows))
    head = (
        f"{'rank':<5}{'run':<{width}}  {'model':<20}{'estimator':<18}"
        f"{split + '/nll':>12}{'+- se':>9}{'vs best':>10}{'+- se':>9}{'z':>7}"
    )
    lines = [head, "-" * len(head)]
    for rank, row in enumerate(rows, 1):
        diff = row.get("vs_best")
        versus = f"{-diff['mean']:>+10.4f}{diff['se']:>9.4f}{abs(diff['z']):>7.1f}" if diff else ""
        lines.append(
            f"{rank:<5}{row['label']:<{width}}  {row['model']:<20}{row['estimator']:<18}"
            f"{row['nll']:>12.4f}{row['nll_se']:>9.4f}{versus}"
        )
    return "\n".join(lines)


def compare_task(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the runs of ``cfg.runs`` (and ``cfg.a``, ``cfg.b``) on one split; log the
    ranking and the verdict and write ``compare.json``."""
    import torch

    from genmod.models.io import load_model, read_genmod_entry
    from genmod.training.build import to_container
    from genmod.training.console import print_table
    from genmod.training.evaluate import (
        checkpoint_split,
        estimator_label,
        find_runs,
        log_likelihoods,
        nll_summary,
        paired_difference,
        resolve_device,
        verdict,
        zero_density_note,
    )
    from genmod.training.run import write_metrics

    given = [str(p) for p in (cfg.get("runs") or [])]
    given += [str(p) for p in (cfg.get("a"), cfg.get("b")) if p]
    if not given:
        raise ValueError(
            "runs is empty: pass runs=[RUN_A,RUN_B] (run dirs, .ckpt files or a sweep dir)"
        )
    runs = [run for path in given for run in find_runs(path)]
    if len(runs) < 2:
        raise ValueError(f"runs: need at least two models to compare, got {len(runs)} ({given[0]})")
    device = resolve_device(cfg.device)
    entries = [read_genmod_entry(run) for run in runs]
    x, datamodule, data_config = checkpoint_split(
        to_container(cfg.get("data")), entries[0], cfg.split
    )
    for run, entry in zip(runs[1:], entries[1:], strict=True):
        if cfg.get("data") is None and _split_key(entry.get("data")) != _split_key(data_config):
            log.warning(
                "%s was trained on other data than the first run; testing all on the first's",
                run,
            )

    rows = []
    for number, (run, label, entry) in enumerate(zip(runs, _labels(runs), entries, strict=True)):
        log.info("Evaluating %s (%d of %d)", label, number + 1, len(runs))
        model = load_model(entry["path"], map_location=device)
        torch.manual_seed(cfg.seed)
        log_probs = log_likelihoods(
            model, x, batch_size=cfg.batch_size, num_samples=cfg.num_samples, device=device
        )
        rows.append(
            {
                "label": label,
                "run": str(run),
                "checkpoint": entry["path"],
                "model": type(model.model).__name__,
                "estimator": estimator_label(model, cfg.num_samples),
                **nll_summary(log_probs),
                "log_probs": log_probs,
            }
        )
    order = sorted(rows, key=lambda r: (r["nll"] != r["nll"], r["nll"]))
    for row in order[1:]:
        row["vs_best"] = paired_difference(order[0]["log_probs"], row["log_probs"])
    first, second = (rows[0], rows[1]) if len(rows) == 2 else (order[0], order[1])
    line = verdict(
        first["label"], second["label"], paired_difference(first["log_probs"], second["log_probs"])
    )

    describe = datamodule.describe() if hasattr(datamodule, "describe") else str(data_config)
    for row in rows:
        note = zero_density_note(row)
        if note:
            log.warning("%s: %s", row["label"], note)
    text = [f"Evaluated on the {cfg.split} split of {describe}", _table(order, cfg.split)]
    stochastic = [r["label"] for r in rows if r["estimator"] != "exact"]
    if stochastic:
        text.append(f"Monte Carlo estimates (lower bounds in expectation): {', '.join(stochastic)}")
    print_table("\n".join([*text, line]), log)

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "split": cfg.split,
        "data": describe,
        "n": int(x.shape[0]),
        "ranking": [{k: v for k, v in r.items() if k != "log_probs"} for r in order],
        "verdict": line,
    }
    write_metrics(out / "compare.json", results)
    return results


main = hydra_entry(compare_task, "compare", "genmod-compare")

if __name__ == "__main__":
    main()
