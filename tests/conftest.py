"""Shared fixtures and the float64 brute-force references the tests compare against."""

from __future__ import annotations

import math

import pytest
import torch

from genmod.ops.profiles import log_profile


def brute_pairwise_logsumexp(x, y, scale, log_weights=None, kernel="gaussian", exclude=None):
    """Obviously-correct float64 reference: materialises every pair."""
    x, y = x.double(), y.double()
    d2 = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    a = log_profile(d2 / float(scale) ** 2, kernel)
    if log_weights is not None:
        a = a + log_weights.double().unsqueeze(-2)
    if exclude is not None:
        hit = torch.arange(y.shape[-2]) == exclude.unsqueeze(-1)
        a = a.masked_fill(hit, -math.inf)
    return torch.logsumexp(a, dim=-1)


def nats_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """DESIGN.md's error measure: |out - ref| relative to |ref|, absolute when |ref| < 1."""
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), fin), "finite/-inf pattern differs from reference"
    if not bool(fin.any()):
        return 0.0
    err = (out.double() - ref).abs() / ref.abs().clamp_min(1.0)
    return float(err[fin].max())


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(module, *argv) -> (exit status, stdout, stderr)`` of a genmod command module's
    ``main()`` run in-process, exactly as its console script would run it."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    def call(module, *argv: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        GlobalHydra.instance().clear()
        status = 0
        try:
            module.main()
        except SystemExit as exit_:
            status = exit_.code
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return call
