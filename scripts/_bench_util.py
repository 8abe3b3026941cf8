"""Building blocks of ``scripts/bench_kde.py``: data, float64 reference, the timed tools, and
the measurement of one tool in a fresh forked process.

Every tool computes, for queries x [N, D] and reference points y [M, D] (float32, whitened),
the Gaussian pairwise logsumexp ``lse_i = log sum_j exp(-||x_i - y_j||^2 / (2 h^2))`` in nats,
or its KDE form ``log p(x_i) = lse_i - log M - (D/2) log(2 pi h^2)``; the latter is mapped back
to the lse scale in float64 so that every error is measured on the same quantity.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CPU_ONLY", "ERR_ROWS", "machine_info", "measure", "reference", "run_child"]

CPU_ONLY = ("sklearn", "scipy")
"""Tools that run on the CPU whatever ``--device`` says."""

PEERS = ("sklearn", "scipy", "keops", "torch-naive")
"""The alternatives to genmod: timed on fewer query rows and extrapolated when slow."""

ERR_ROWS = 256
"""Query rows (the first ones; the data are i.i.d.) compared against the float64 reference."""

CPU_BLOCK_ELEMS = 1 << 22  # 16 MiB float32 row blocks for the naive and floor tools on CPU
CUDA_BLOCK_ELEMS = 1 << 26  # 256 MiB on CUDA


def make_data(n: int, m: int, d: int, seed: int, device: str) -> tuple[Tensor, Tensor]:
    """Seeded queries x [n, d] and references y [m, d], float32, from one Gaussian mixture.

    Eight components with random means and scales, then whitened in float64 with y's mean and
    sample covariance (ddof = 1), so y's sample covariance is the identity up to float32
    rounding: scipy's ``gaussian_kde(bw_method=h)`` then uses the same kernel h^2 I as the rest.
    """
    g = torch.Generator().manual_seed(seed)
    k = 8
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    scales = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)

    def draw(count: int) -> Tensor:
        comp = torch.randint(k, (count,), generator=g)
        z = torch.randn(count, d, generator=g, dtype=torch.float64)
        return means[comp] + scales[comp, None] * z

    y, x = draw(m), draw(n)
    mu = y.mean(0)
    chol = torch.linalg.cholesky(torch.cov(y.T).reshape(d, d))  # ddof = 1
    white = torch.linalg.inv(chol).T  # (y - mu) @ white has identity sample covariance
    return ((x - mu) @ white).float().to(device), ((y - mu) @ white).float().to(device)


def bruteforce_lse(x: Tensor, y: Tensor, h: float) -> tuple[Tensor, Tensor, float]:
    """Float64 ``lse_i``, its gradient in x_i, ``(sum_j p_ij y_j - x_i) / h^2``, and the
    gradient of ``sum_i lse_i`` in h, ``sum_ij p_ij |x_i - y_j|^2 / h^3``, from explicit
    differences (no ``|x|^2 + |y|^2 - 2 x.y`` expansion), in bounded memory."""
    x, y = x.double(), y.double()
    (n, d), m = x.shape, y.shape[0]
    rows = max(1, min(n, (1 << 24) // m))
    cols = max(1, (1 << 24) // (rows * d))
    lse, grad, grad_h = [], [], 0.0
    for i0 in range(0, n, rows):
        xi = x[i0 : i0 + rows]
        r2 = torch.cat(
            [(xi[:, None, :] - y[None, j : j + cols]).square().sum(-1) for j in range(0, m, cols)],
            dim=1,
        )
        s = r2.mul_(-0.5 / h**2)  # -|x - y|^2 / (2 h^2)
        p = torch.softmax(s, dim=1)
        lse.append(torch.logsumexp(s, dim=1))
        grad_h += (p * s).sum().item() * (-2.0 / h)
        grad.append((p @ y - xi) / h**2)
    return torch.cat(lse), torch.cat(grad), grad_h


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """Child body: the float64 reference (lse and grad_x) on the first ``ERR_ROWS`` rows."""
    x, y = make_data(spec["n"], spec["m"], spec["d"], spec["seed"], spec["device"])
    lse, grad, grad_h = bruteforce_lse(x[:ERR_ROWS], y, spec["h"])
    return {"lse": lse.cpu().tolist(), "grad": grad.cpu().flatten().tolist(), "grad_h": grad_h}


def _blocks(q: int, rows: int):
    """(start, length) of the row blocks covering the first q rows."""
    return ((i0, min(rows, q - i0)) for i0 in range(0, q, rows))


def _build(tool: str, x: Tensor, y: Tensor, h: float, state: dict) -> Callable[[int], Any]:
    """A callable ``run(q)`` doing the tool's work for the first q query rows; tools that
    compute the density return it on the lse scale (see the module docstring)."""
    from genmod.ops import pairwise_logsumexp

    (n, d), m = x.shape, y.shape[0]
    kde_const = math.log(m) + 0.5 * d * math.log(2 * math.pi * h * h)  # log M + D/2 log 2pi h^2
    rows = max(1, (CUDA_BLOCK_ELEMS if x.is_cuda else CPU_BLOCK_ELEMS) // m)
    if tool in ("genmod", "genmod-ieee", "genmod-tf32", "genmod-fp16x3"):
        prec = "auto" if tool == "genmod" else tool.removeprefix("genmod-")
        return lambda q: pairwise_logsumexp(x[:q], y, h, precision=prec)
    if tool in ("genmod-bwd", "genmod-bwd-fused"):
        if tool == "genmod-bwd-fused":  # read by each backward; this is the tool's own process
            os.environ["GENMOD_TRITON_BWD"] = "fused"

        def fwd_bwd(q: int) -> Tensor:
            xs, ys = x[:q].detach().requires_grad_(), y.detach().requires_grad_()
            scale = torch.tensor(h, dtype=x.dtype, device=x.device, requires_grad=True)
            out = pairwise_logsumexp(xs, ys, scale)
            out.sum().backward()
            state["grad"] = xs.grad[:ERR_ROWS]
            return out.detach()

        return fwd_bwd
    if tool in ("genmod-bwd-h", "genmod-bwd-yh"):
        # The gradients training takes: a KDE fits its bandwidth alone; a latent-variable
        # model's decoder moves the reference points y (its samples) and the noise scale.

        def fwd_bwd_h(q: int, rows: int | None = None) -> Tensor:
            ys = y.detach().requires_grad_(tool == "genmod-bwd-yh")
            scale = torch.tensor(h, dtype=x.dtype, device=x.device, requires_grad=True)
            out = pairwise_logsumexp(x[:q], ys, scale)
            w = torch.ones_like(out)
            if rows is not None:  # the accuracy check: the gradient of the first rows' sum
                w[rows:] = 0.0
            out.backward(w)
            state["grad_h"] = scale.grad.item()
            return out.detach()

        state["check"] = lambda: fwd_bwd_h(n, ERR_ROWS)  # full size: the same code path
        return fwd_bwd_h
    if tool == "sklearn":
        from sklearn.neighbors import KernelDensity

        kde = KernelDensity(kernel="gaussian", bandwidth=h, algorithm="auto", rtol=0.0)
        kde.fit(y.numpy())
        return lambda q: torch.from_numpy(kde.score_samples(x[:q].numpy())) + kde_const
    if tool == "scipy":
        from scipy.stats import gaussian_kde

        kde = gaussian_kde(y.numpy().T, bw_method=h)
        # Float64 brute force of scipy's own density: its kernel covariance is h^2 times y's
        # float64 sample covariance, the identity only up to float32 rounding of the data.
        cov = torch.from_numpy(kde.covariance)
        inv_t = torch.linalg.inv(torch.linalg.cholesky(cov)).T
        own, _, _ = bruteforce_lse(x[:ERR_ROWS].double() @ inv_t, y.double() @ inv_t, 1.0)
        state["own_ref"] = (own - 0.5 * torch.logdet(cov) + d * math.log(h)).tolist()
        return lambda q: torch.from_numpy(kde.logpdf(x[:q].numpy().T)) + kde_const
    if tool == "keops":
        import pykeops
        from pykeops.torch import LazyTensor

        pykeops.set_verbose(False)
        yj = LazyTensor(y[None, :, :])
        return lambda q: (
            (((LazyTensor(x[:q, None, :]) - yj) ** 2).sum(-1) * (-0.5 / h**2))
            .logsumexp(dim=1)
            .view(-1)
        )
    if tool == "torch-naive":

        def naive(q: int) -> Tensor:
            out = torch.empty(q, dtype=x.dtype, device=x.device)
            for i0, r in _blocks(q, rows):
                dist = torch.cdist(x[i0 : i0 + r], y)
                out[i0 : i0 + r] = torch.logsumexp(dist.square() * (-0.5 / h**2), dim=1)
            return out

        return naive
    if tool in ("floor-gemm", "floor-gemm-tf32"):

        def gemm(q: int) -> None:
            buf = torch.empty(min(rows, q), m, dtype=x.dtype, device=x.device)
            for i0, r in _blocks(q, rows):
                torch.mm(x[i0 : i0 + r], y.t(), out=buf[:r])

        return gemm
    if tool == "floor-exp":
        src = torch.empty(min(rows, n), m, dtype=x.dtype, device=x.device)
        src.uniform_(-10.0, 0.0, generator=torch.Generator(x.device).manual_seed(1))

        def exp(q: int) -> None:
            dst = torch.empty_like(src)
            for _, r in _blocks(q, rows):
                torch.exp(src[:r], out=dst[:r])

        return exp
    raise ValueError(f"tool: unknown benchmark tool {tool!r}")


def rel_err(out: Tensor | list[float], ref: Tensor | list[float]) -> float:
    """``max |out - ref| / max(1, |ref|)``, the accuracy measure of DESIGN.md (nats)."""
    out, ref = torch.as_tensor(out, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    return ((out.cpu() - ref.cpu()).abs() / ref.cpu().abs().clamp_min(1.0)).max().item()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith(key + ":")).split()[1])


def _cpu_peak(call: Callable[[], Any]) -> tuple[int, list[str], Any]:
    """Extra resident memory of one call: peak RSS (VmHWM) during it minus RSS before it."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # fixed M_MMAP_THRESHOLD: big blocks mmapped, returned on free
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        base = _status_kib("VmRSS")
    except (OSError, AttributeError):
        out = call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, ["memory: ru_maxrss of the whole process"], out
    out = call()
    return (_status_kib("VmHWM") - base) * 1024, [], out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child body: time one tool on one size and compare it with the float64 reference
    (the protocol is described in ``docs/benchmarks.md``)."""
    tool, n = spec["tool"], spec["n"]
    dev = torch.device("cpu" if tool in CPU_ONLY else spec["device"])
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = tool.endswith("tf32")
    x, y = make_data(n, spec["m"], spec["d"], spec["seed"], str(dev))
    state: dict[str, Any] = {}
    run = _build(tool, x, y, spec["h"], state)
    # A fwd+bwd call is timed right after a forward call, so that their ratio compares the
    # two under the same conditions (this machine's speed drifts by 10-50% over minutes).
    fwd = _build("genmod", x, y, spec["h"], {}) if tool.startswith("genmod-bwd") else None
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    def timed(q: int, fn: Callable[[int], Any] = run) -> tuple[float, Any]:
        sync()
        t0 = time.perf_counter()
        out = fn(q)
        sync()
        return time.perf_counter() - t0, out

    q = min(n, ERR_ROWS)
    timed(q)  # first call: compilation, caches, lazy imports
    est = timed(q)[0] * n / q
    notes = []
    peer = tool in PEERS  # genmod and the floors always run at full size
    if peer and est > spec["max_seconds"] and q < n:
        q = min(n, max(q, int(n * spec["target_seconds"] / est)))
        notes.append(f"extrapolated from {q} of {n} query rows (full call ~{est:.0f} s)")
    else:
        if peer and est > spec["max_seconds"] / 4:
            notes.append(f"warm-up on {q} rows only (long call)")
        else:
            timed(n)  # warm-up at full size
        q = n
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    times, paired, spent = [], [], 0.0
    if fwd is not None:
        timed(q, fwd)  # its warm-up
    # At least 3 and at least --repeats calls (3 once 180 s are spent), and on until about a
    # second has been spent (at most 50 calls).
    while len(times) < 50:
        if fwd is not None:
            t_fwd = timed(q, fwd)[0]
            spent += t_fwd
        t, out = timed(q)
        times.append(t * n / q)
        if fwd is not None:
            paired.append(t / t_fwd)
        spent += t
        k = len(times)
        if k >= 3 and (spent > 180 or (k >= spec["repeats"] and spent >= 1.0)):
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        out = None  # the measured call allocates its own output
        peak, more, out = _cpu_peak(lambda: run(q))
        notes += more
    if q < n:
        notes.append(f"memory on {q} rows")
    res = {"time": statistics.median(times), "reps": len(times), "peak": peak, "notes": notes}
    if paired:
        res["paired"] = statistics.median(paired)
        notes.append(
            f"{res['paired']:.3f}x the forward timed just before each call "
            f"(median of {len(paired)}, range {min(paired):.3g}-{max(paired):.3g})"
        )
    ref = spec["ref"]
    if out is not None:
        res["err"] = rel_err(out[:ERR_ROWS], state.get("own_ref", ref["lse"]))
    if "own_ref" in state:
        iso = rel_err(state["own_ref"], ref["lse"])
        notes.append(f"error vs its own kernel, which differs from h^2 I by {iso:.1e}")
    if "check" in state:  # one more, untimed, call whose bandwidth gradient the reference has
        state["check"]()
        g_ref = ref["grad_h"]
        notes.append(f"grad h rel. err {abs(state['grad_h'] - g_ref) / abs(g_ref):.1e}")
    if "grad" in state:
        ref_grad = torch.tensor(ref["grad"]).view_as(state["grad"])
        res["grad_err"] = rel_err(state["grad"], ref_grad)
        notes.append(f"grad x rel. err {res['grad_err']:.1e}")
    return res


def machine_info(device: str) -> dict[str, Any]:
    """Child body: CPU model, cores, thread count, library versions and GPU name."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "?")
    info.update(cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__)
    for pkg in ("scikit-learn", "scipy", "pykeops", "triton"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def _child_main(fn: Callable[[Any], Any], arg: Any, conn: Any) -> None:
    try:
        res = fn(arg)
    except BaseException as err:  # reported as a row note by the parent
        res = {"error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
    conn.send(res)
    conn.close()


def run_child(fn: Callable[[Any], Any], arg: Any, timeout: float) -> Any:
    """Run ``fn(arg)`` in a forked process (fresh memory and CUDA state, no re-import cost).

    The parent must not have run torch kernels or touched CUDA before forking.
    """
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(fn, arg, send))
    proc.start()
    send.close()
    res = None
    with contextlib.suppress(EOFError):
        res = recv.recv() if recv.poll(timeout) else None
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": f"killed after {timeout:.0f} s"}
    return res if res is not None else {"error": f"child died (exit code {proc.exitcode})"}
