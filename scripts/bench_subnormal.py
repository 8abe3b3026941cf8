"""What the CPU epilogues' subnormal-free ``exp`` buys: the same calls with a plain ``exp``.

    python scripts/bench_subnormal.py                 # 20000 x 20000 x 64, h = 0.5
    python scripts/bench_subnormal.py --size 10000x10000x16 --h 0.1 --repeats 5

On the benchmark's data (``scripts/_bench_util.make_data``) it times ``pairwise_logsumexp``
forward, and forward+backward with x, y and the bandwidth requiring grad, alternating the
epilogues of ``genmod.ops._fused`` built on ``_exp_normal`` (0 where ``exp`` would be
subnormal) with the same epilogues built on ``torch.exp``, in one process so that both see
the same machine. It prints the times of every repeat and checks the results agree.
"""

from __future__ import annotations

import argparse
import time

import torch
from _bench_util import make_data

from genmod.ops import _fused, pairwise_logsumexp

__all__ = ["main"]


def _use(exp_fn) -> None:
    """Rebuild the compiled epilogues around ``exp_fn``."""
    _fused._exp_normal = exp_fn
    _fused._compiled.clear()
    torch._dynamo.reset()


def _time(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the alternating repeats and print their times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="20000x20000x64", help="NxMxD")
    ap.add_argument("--h", type=float, default=0.5, help="bandwidth (standard deviation)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    n, m, d = (int(float(p)) for p in args.size.lower().split("x"))
    x, y = make_data(n, m, d, 0, "cpu")

    def fwd() -> torch.Tensor:
        return pairwise_logsumexp(x, y, args.h)

    def fwd_bwd() -> torch.Tensor:
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        scale = torch.tensor(args.h, requires_grad=True)
        pairwise_logsumexp(xs, ys, scale).sum().backward()
        return torch.cat([xs.grad.flatten(), ys.grad.flatten(), scale.grad.flatten()])

    variants = {"exp, 0 where subnormal": _fused._exp_normal, "torch.exp": torch.exp}
    times: dict[tuple[str, str], list[float]] = {}
    outs: dict[tuple[str, str], torch.Tensor] = {}
    for rep in range(args.repeats + 1):  # the first round compiles and is not counted
        for name, exp_fn in variants.items():
            _use(exp_fn)
            for what, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                if rep == 0:
                    fn()
                t, outs[name, what] = _time(fn)
                if rep > 0:
                    times.setdefault((name, what), []).append(t)
    _use(variants["exp, 0 where subnormal"])
    print(f"{n} x {m} x {d}, h = {args.h}, {torch.get_num_threads()} threads")
    for (name, what), ts in times.items():
        print(f"  {what:8s} {name:24s} " + "  ".join(f"{t:.3f} s" for t in ts))
    for what in ("fwd", "fwd+bwd"):
        a, b = (outs[name, what] for name in variants)
        diff = (a - b).abs().max().item()
        print(f"  {what}: max |difference| {diff:.2e} (max |value| {b.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
