"""How much does ``KDE.fit_bandwidth()`` cost? Issue 12's targets for the bandwidth search.

    python scripts/bench_search.py                   # 4000 two-moons points, 2-D, CPU
    python scripts/bench_search.py --n 20000 --kernels gaussian

For each kernel: the number of kernel calls (``pairwise_logsumexp`` over more than one query
row, float32 and float64), the search's wall time, and that time in units of one float32
leave-one-out pass (``KDE.loo_log_prob()`` on the same data, median of 5). Targets (issue 12):
at most 30 kernel calls and at most 60 float32 leave-one-out passes. The chosen ``h`` is also
compared with the optimum of a dense float64 grid (161 points within 2% of it) when ``--check``
is given (slow: 161 float64 passes per kernel).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import genmod.models.kde as kde_module
from genmod.data.toys import make_toy
from genmod.models import KDE

CALLS_MAX, PASSES_MAX = 30, 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--data", default="moons")
    parser.add_argument(
        "--kernels", nargs="+", default=["gaussian", "epanechnikov", "exponential", "tophat"]
    )
    parser.add_argument("--check", action="store_true", help="compare h with a dense grid")
    args = parser.parse_args()
    data = make_toy(args.data, args.n, generator=torch.Generator().manual_seed(0))
    calls: list[str] = []
    original = kde_module.pairwise_logsumexp

    def counted(x, *rest, **kwargs):
        if x.shape[0] > 1:  # the search's one-row check of the inputs is not a pass
            calls.append(str(x.dtype).removeprefix("torch."))
        return original(x, *rest, **kwargs)

    print(f"{args.n} x 2 {args.data}, float32, {torch.get_num_threads()} threads")
    print("| kernel | calls (f32 + f64) | search | one f32 LOO pass | search / pass | h |")
    print("| --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for kernel in args.kernels:
        model = KDE(data, kernel=kernel)
        model.loo_log_prob()  # warm-up (and the compiled path's choice, if any)
        passes = []
        for _ in range(5):
            start = time.perf_counter()
            model.loo_log_prob()
            passes.append(time.perf_counter() - start)
        one = statistics.median(passes)
        kde_module.pairwise_logsumexp = counted
        calls.clear()
        start = time.perf_counter()
        h = float(KDE(data, kernel=kernel).fit_bandwidth().bandwidth)
        wall = time.perf_counter() - start
        kde_module.pairwise_logsumexp = original
        n32, n64 = calls.count("float32"), calls.count("float64")
        ratio = wall / one
        print(
            f"| {kernel} | {n32 + n64} ({n32} + {n64}) | {wall:.2f} s | {one * 1e3:.0f} ms "
            f"| {ratio:.1f} | {h:.5g} |"
        )
        verdicts.append((kernel, n32 + n64, ratio, h))
    for kernel, n, ratio, h in verdicts:
        ok = n <= CALLS_MAX and ratio <= PASSES_MAX
        print(
            f"{'PASS' if ok else 'FAIL'} {kernel}: {n} calls (<= {CALLS_MAX}), "
            f"{ratio:.1f} f32 LOO passes (<= {PASSES_MAX:g})"
        )
        if args.check:
            reference = KDE(data.double(), kernel=kernel)
            grid = torch.linspace(math.log(h) - 0.02, math.log(h) + 0.02, 161, dtype=torch.float64)
            values = []
            for t in grid:
                reference.bandwidth = float(t.exp())
                values.append(float(reference.loo_log_prob().mean()))
            best = float(grid[int(torch.tensor(values).argmax())].exp())
            print(f"  dense float64 grid optimum {best:.5g}: h / best - 1 = {h / best - 1:+.1e}")


if __name__ == "__main__":
    main()
