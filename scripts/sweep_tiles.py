"""Time the Triton kernels' tile configurations on a GPU and print the best per kernel.

    python3 scripts/sweep_tiles.py --out DIR                # the default sweep, ~4 minutes
    python3 scripts/sweep_tiles.py --groups fused,fp16x3 --budget 120

Issue 13's second GPU call, after ``scripts/gpu_check.sh``: the defaults of ``_TILES`` in
``genmod/ops/_triton_launch.py`` for the kernels no GPU has timed yet (the one-pass backward
``bwd_fused``, the ``fp16x3`` forward, the explicit-difference kernels of D <= 8), and a
re-check of the H200 sweep's winners. Each candidate ``(BLOCK_N, BLOCK_M, num_warps,
num_stages)`` is set in the table (the launcher's fitted-tile cache cleared), compiled once,
then timed as the CUDA-event median of several calls of the operation that launches the kernel:

    fwd        forward, D = 64 (or D = 2 for "lowd-fwd")
    bwd_x      forward + backward with only x requiring grad (the row-side kernel)
    bwd_y      forward + backward with only y requiring grad (the column-side kernel)
    bwd_fused  forward + backward of x and y with GENMOD_TRITON_BWD=fused

so the backward rows include the forward (compare them with one another, and subtract the
``fwd`` row). Every timing is appended to ``DIR/sweep.md`` as it is measured, and at the end
(or when the budget runs out) the fastest candidate of each group, as a ``_TILES`` entry.
Without CUDA it is a dry run under Triton's interpreter at a tiny size (``--dry``; the
interpreter ignores tiles, so it checks the machinery, not the speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # genmod from this checkout (the GPU image has it uninstalled)

# name: (table kernel, precision, N, M, D, h, candidates); the first candidate is the default.
GROUPS: dict[str, tuple[str, str, int, int, int, float, list[tuple[int, int, int, int]]]] = {
    "fwd": ("fwd", "tf32x3", 100_000, 100_000, 64, 0.5, [
        (128, 64, 8, 2), (128, 128, 8, 2), (256, 64, 8, 2), (128, 64, 4, 3)]),
    "fp16x3": ("fwd", "fp16x3", 100_000, 100_000, 64, 0.5, [
        (128, 64, 8, 2), (128, 128, 8, 2), (256, 64, 8, 2), (128, 128, 8, 3), (256, 128, 8, 2),
        (128, 64, 4, 3)]),
    "bwd_x": ("bwd_x", "tf32x3", 100_000, 100_000, 64, 0.5, [
        (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2)]),
    "bwd_y": ("bwd_y", "tf32x3", 100_000, 100_000, 64, 0.5, [
        (64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2)]),
    "fused": ("bwd_fused", "tf32x3", 100_000, 100_000, 64, 0.5, [
        (32, 64, 8, 2), (16, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2),
        (32, 64, 4, 2)]),
    "lowd-fwd": ("fwd", "direct", 256, 160_000, 2, 0.04, [
        (64, 64, 4, 2), (32, 128, 4, 2), (64, 128, 4, 2), (128, 64, 8, 2), (16, 256, 4, 2)]),
    "lowd-bwd_x": ("bwd_x", "direct", 256, 160_000, 2, 0.04, [
        (64, 64, 4, 2), (32, 128, 4, 2), (16, 256, 4, 2), (64, 128, 8, 2)]),
    "lowd-bwd_y": ("bwd_y", "direct", 256, 160_000, 2, 0.04, [
        (64, 64, 4, 2), (64, 128, 4, 2), (128, 64, 8, 2), (32, 128, 4, 2)]),
}  # fmt: skip
DEFAULT_GROUPS = (
    "fused",
    "fp16x3",
    "lowd-fwd",
    "lowd-bwd_x",
    "lowd-bwd_y",
    "fwd",
    "bwd_x",
    "bwd_y",
)


def set_tiles(kernel: str, precision: str, dim: int, tiles: tuple[int, int, int, int]) -> None:
    """Make ``tiles`` the launcher's choice for ``kernel`` at ``dim`` (and forget fitted tiles)."""
    from genmod.ops import _triton_launch as tl_launch

    if precision == "direct":
        tl_launch._DIRECT_TILES[kernel] = tiles
    else:
        block_d = max(16, 1 << (dim - 1).bit_length())
        table = tl_launch._TILES[kernel].setdefault(precision, {})  # fp16x3: a table of its own
        table[block_d] = tiles
    tl_launch._FITTED.clear()


def fitted(kernel: str) -> tuple[int, int, int, int] | None:
    """The tiles the launcher last ran ``kernel`` with (it halves tiles that do not fit)."""
    from genmod.ops import _triton_launch as tl_launch

    for key, meta in tl_launch._FITTED.items():
        if key[1] == kernel:
            return meta["BLOCK_N"], meta["BLOCK_M"], meta["num_warps"], meta["num_stages"]
    return None


def operation(group: str, x: torch.Tensor, y: torch.Tensor, h: float, ex: torch.Tensor):
    """The call that launches the group's kernel (see the module docstring)."""
    from genmod.ops import pairwise_logsumexp

    kernel, precision = GROUPS[group][:2]
    prec = "fp16x3" if precision == "fp16x3" else "auto"

    def fwd() -> None:
        with torch.no_grad():
            pairwise_logsumexp(x, y, h, exclude=ex, backend="triton", precision=prec)

    def bwd() -> None:
        xs = x.detach().requires_grad_(kernel in ("bwd_x", "bwd_fused"))
        ys = y.detach().requires_grad_(kernel in ("bwd_y", "bwd_fused"))
        pairwise_logsumexp(xs, ys, h, exclude=ex, backend="triton", precision=prec).sum().backward()

    return fwd if kernel == "fwd" else bwd


def time_call(fn, device: str, reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up (compile) call."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--groups", default=",".join(DEFAULT_GROUPS))
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the sweep")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dry", action="store_true", help="interpreter, tiny sizes (no CUDA)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"--groups: unknown {unknown}; choose from {sorted(GROUPS)}")
    dry = args.dry or not torch.cuda.is_available()
    if dry and os.environ.get("TRITON_INTERPRET") != "1":
        # The interpreter must be on before the kernels are first imported: re-run under it.
        os.execve(sys.executable, [sys.executable, *sys.argv, "--dry"],
                  {**os.environ, "TRITON_INTERPRET": "1"})  # fmt: skip
    device = "cpu" if dry else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "sweep.md"
    title = torch.cuda.get_device_name() if not dry else "dry run (Triton interpreter, CPU)"
    lines = [
        f"# Tile sweep on {title}",
        "",
        "| group | tiles | ms | note |",
        "| --- | --- | --- | --- |",
    ]
    report.write_text("\n".join(lines) + "\n")
    best: dict[str, tuple[float, tuple]] = {}
    t_start = time.monotonic()
    for group in groups:
        kernel, precision, n, m, d, h, candidates = GROUPS[group]
        if dry:
            n, m, d = 40, 70, (d if d <= 8 else 16)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, d, generator=gen).to(device)
        y = torch.randn(m, d, generator=gen).to(device)
        ex = torch.randint(-1, m, (n,), generator=gen).to(device)
        os.environ["GENMOD_TRITON_BWD"] = "fused" if kernel == "bwd_fused" else "split"
        for tiles in candidates:
            if time.monotonic() - t_start > args.budget:
                break
            set_tiles(kernel, precision, d, tiles)
            try:
                secs = time_call(operation(group, x, y, h, ex), device, 1 if dry else args.reps)
                ran = None if dry else fitted(kernel)  # the interpreter ignores tiles
                row, note = f"{secs * 1e3:.2f}", ""
                if ran is not None and ran != tiles:  # did not fit: timed with smaller tiles
                    note = f"shrunk to {ran} (out of resources): not a candidate"
                elif group not in best or secs < best[group][0]:
                    best[group] = (secs, tiles)
            except Exception as exc:  # a candidate that does not compile: say so, go on
                row, note = "—", f"failed: {type(exc).__name__}: {str(exc)[:80]}"
            with report.open("a") as f:
                f.write(f"| {group} | {tiles} | {row} | {note} |\n")
            print(f"{group} {tiles}: {row} ms {note}", flush=True)
        set_tiles(kernel, precision, d, candidates[0])
    with report.open("a") as f:
        f.write("\nFastest per group (paste into _TILES / _DIRECT_TILES):\n\n")
        for group, (secs, tiles) in best.items():
            kernel, precision, *_ = GROUPS[group]
            f.write(f"- {group}: {kernel} {precision} {tiles}: {secs * 1e3:.2f} ms\n")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
