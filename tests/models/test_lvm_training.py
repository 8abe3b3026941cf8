"""LatentVariableModel training: the exact NLL reaches PPCA, IWAE beats prior sampling,
and K = 10^5 evaluation stays in bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sklearn.decomposition import PCA

from genmod import LatentVariableModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    """Small problems train faster (and steadier on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _low_rank_data(n: int, dim: int, latent: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = 1.5 * torch.randn(dim, latent, generator=g, dtype=torch.float64)
    z = torch.randn(n, latent, generator=g, dtype=torch.float64)
    noise = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return z @ weight.T + noise + torch.arange(dim, dtype=torch.float64)


def test_gradient_training_on_the_exact_nll_reaches_ppca(one_thread):
    x = _low_rank_data(400, 6, 2, seed=0)
    sklearn_nll = -PCA(n_components=2).fit(x.numpy()).score(x.numpy())
    mle = LatentVariableModel(6, 2, decoder="linear").double().fit_ppca(x)
    torch.manual_seed(0)
    model = LatentVariableModel(6, 2, decoder="linear", estimator="exact")  # float32, as trained
    steps = 800
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xf = x.float()
    for _ in range(steps):
        opt.zero_grad()
        model.training_loss(xf).backward()
        opt.step()
        sched.step()
    nll = float(model.double().nll(x).detach())
    assert abs(nll - sklearn_nll) < 1e-3
    assert abs(nll + float(mle.exact_log_prob(x).mean().detach())) < 1e-5


def test_training_on_the_prior_estimate_moves_decoder_and_noise(one_thread):
    x = _low_rank_data(256, 4, 1, seed=1)
    x = (x - x.mean(0)) / x.std(0)
    torch.manual_seed(0)
    model = LatentVariableModel(4, 1, hidden_sizes=(16,), num_samples=64, init_noise_std=2.0)
    ppca = LatentVariableModel(4, 1, decoder="linear").double().fit_ppca(x)
    ppca_nll = -float(ppca.exact_log_prob(x).mean().detach())
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    first = float(model.nll(x.float()).detach())
    for _ in range(150):
        opt.zero_grad()
        loss = -model.log_prob(x.float(), generator=g).mean()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    model.eval()
    final = float(model.nll(x.float()).detach())
    assert final < first - 1.0
    assert float(model.noise_std.detach()) < 1.0
    # A 1-D latent MLP model of 1-factor data comes close to the PPCA optimum.
    assert final < ppca_nll + 0.3


def test_importance_sampling_beats_prior_sampling_after_encoder_training(one_thread):
    x = _low_rank_data(384, 8, 4, seed=2)
    train, test = x[:256], x[256:]
    model = LatentVariableModel(
        8, 4, decoder="linear", estimator="importance", encoder_hidden_sizes=(32,)
    ).double()
    model.fit_ppca(train)
    exact = model.exact_log_prob(test).detach()
    opt = torch.optim.Adam(model.encoder.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):  # the decoder stays at the PPCA optimum; the encoder learns q(z|x)
        opt.zero_grad()
        (-model.log_prob(train, 8, g).mean()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        iw = model.log_prob(test, 64, torch.Generator().manual_seed(1)) - exact
        prior = model.log_prob(test, 64, torch.Generator().manual_seed(1), "prior") - exact
    iw_err, prior_err = float(iw.abs().mean()), float(prior.abs().mean())
    assert iw_err < prior_err / 3, (iw_err, prior_err)
    assert float(iw.mean()) < 0.05  # a lower bound in expectation: no systematic overshoot


_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from genmod import LatentVariableModel
    from genmod.ops import pairwise_logsumexp
    torch.manual_seed(0)
    model = LatentVariableModel(64, 8, hidden_sizes=(64, 64)).eval()
    x = torch.randn(512, 64)
    with torch.no_grad():  # warm up: thread pools, any one-off kernel compilation
        pairwise_logsumexp(x, torch.randn(40_000, 64), 1.0)
        model.log_prob(x[:8], 1000)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out = model.log_prob(x, 100_000)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    assert out.shape == (512,) and bool(torch.isfinite(out).all())
    print(grown * 1024)  # ru_maxrss is in KiB on Linux
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units are Linux's")
def test_evaluation_at_k_1e5_stays_in_bounded_memory():
    """K = 10^5 draws, batch 512, D = 64: a [512, 10^5] float32 score matrix alone would take
    195 MiB (and [512, 10^5, 64] differences 12 GiB). The decoded points take 24 MiB; the
    peak resident-memory growth must stay below 120 MiB (about five copies of them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode == 0, run.stderr
    grown = int(run.stdout.strip().splitlines()[-1])
    assert grown < 120 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
