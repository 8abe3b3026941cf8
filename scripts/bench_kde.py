"""Benchmark genmod's ``pairwise_logsumexp`` against the tools users would pick instead.

On the same seeded float32 data (a whitened Gaussian mixture) it times genmod forward and
forward+backward (on CUDA also with the opt-in one-pass backward, ``GENMOD_TRITON_BWD=fused``),
scikit-learn ``KernelDensity.score_samples``, scipy ``gaussian_kde.logpdf``,
KeOps' ``LazyTensor`` logsumexp, a naive torch ``cdist`` + ``logsumexp`` in row blocks, and the
floor of the problem (a blocked GEMM ``x @ y.T`` and one ``exp`` per pair into preallocated
buffers). Each tool runs in its own forked process; the table gives the median time, the
ratio to genmod forward, the peak extra memory and the max relative error (nats) against a
float64 brute force. The method is described in ``docs/benchmarks.md``.

Usage::

    python scripts/bench_kde.py                  # CPU sizes, rewrites the CPU section of the doc
    python scripts/bench_kde.py --device cuda    # CUDA sizes, rewrites the CUDA section
    python scripts/bench_kde.py --lowd           # 1-3 dimensions (issue 12), own doc section
    python scripts/bench_kde.py --quick          # a smoke test at tiny sizes (writes nothing)
    python scripts/bench_kde.py --train --device cuda   # genmod-train timings (own section)

A peer that crashes (KeOps segfaults on some CUDA images) gives a row saying so; the table
and the targets are rewritten after every size, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

import _bench_util as bu
from _bench_targets import BIG_PAIRS, FUSED, GRADS, LABELS, PRECISION_ROWS, targets

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "cpu": "10000x10000x16,20000x20000x64",
    "cuda": "100000x100000x64,1000000x1000000x64",
    # issue 12's low-dimensional shapes, each at the bandwidth the issue measured it at
    "cpu-lowd": "20000x20000x1@0.05,20000x20000x2@0.1,20000x20000x3@0.2",
    # issue 13: a KDE training step's shape (256 queries, 160k references, the learned h),
    # then issue 12's shapes, on the explicit-difference Triton kernels
    "cuda-lowd": "256x160000x2@0.04,20000x20000x1@0.05,20000x20000x2@0.1,20000x20000x3@0.2",
}
QUICK = {
    "cpu": "1000x1500x16",
    "cuda": "20000x30000x64",
    "cpu-lowd": "3000x3000x2@0.1",
    "cuda-lowd": "256x20000x2@0.04",
}


def parse_sizes(text: str) -> list[tuple[int, int, int, float | None]]:
    """``"NxMxD[@h],..."`` (``1e6`` allowed) -> [(N, M, D, h or None), ...]; an ``@h``
    bandwidth replaces ``--bandwidths`` for that size."""
    sizes = []
    for item in text.split(","):
        shape, _, h = item.strip().lower().partition("@")
        parts = shape.split("x")
        if len(parts) != 3:
            raise SystemExit(f"--sizes: expected NxMxD[@h], got {item!r}")
        n, m, d = (int(float(p)) for p in parts)
        if min(n, m, d) < 1:
            raise SystemExit(f"--sizes: N, M and D must be >= 1, got {item!r}")
        sizes.append((n, m, d, float(h) if h else None))
    return sizes


def bandwidth(spec: str, m: int, d: int) -> float:
    """A float, or ``scott``: M^(-1/(D+4)) on whitened data (scipy's factor, unit covariance)."""
    return m ** (-1.0 / (d + 4)) if spec == "scott" else float(spec)


def tools_for(args: argparse.Namespace, n: int, m: int) -> list[str]:
    """The tools that run at one size, in table order, restricted to ``--tools``."""
    if args.device == "cuda" and n * m > BIG_PAIRS:
        # the issues' targets there: the forward's time and memory, the bandwidth step
        tools = ["genmod", "genmod-bwd-h", "keops"]
    else:
        tools = ["genmod", *GRADS, "sklearn", "scipy", "keops", "torch-naive"]
        tools += ["floor-gemm", "floor-exp"]
        if args.device == "cuda":  # the opt-in one-pass backward (a Triton-only switch)
            tools.insert(1 + len(GRADS), FUSED)
        if args.precisions and args.device == "cuda":
            tools[1:1] = PRECISION_ROWS
            tools.append("floor-gemm-tf32")
    return [t for t in tools if args.tools is None or t in args.tools]


def run_size(args: argparse.Namespace, size: tuple[int, int, int], h: float) -> list[dict]:
    """All tools on one size and bandwidth; each tool in its own forked process."""
    n, m, d = size
    base = {"n": n, "m": m, "d": d, "h": h, "seed": args.seed, "device": args.device}
    ref = bu.run_child(bu.reference, base, args.timeout)
    if "error" in ref:
        raise SystemExit(f"float64 reference failed at {size}: {ref['error']}")
    spec = dict(base, ref=ref, repeats=args.repeats, max_seconds=args.max_seconds)
    rows = []
    for tool in tools_for(args, n, m):
        dev = "cpu" if tool in bu.CPU_ONLY else args.device
        row: dict[str, Any] = {"size": size, "h": h, "device": dev, "tool": tool, "note": []}
        start = time.perf_counter()
        if tool == "keops" and importlib.util.find_spec("pykeops") is None:
            row["note"].append("pykeops not installed (pip install pykeops)")
        else:
            res = bu.run_child(bu.measure, dict(spec, tool=tool, target_seconds=5.0), args.timeout)
            row["note"] += [f"failed: {res['error']}"] if "error" in res else res.pop("notes")
            row.update({k: v for k, v in res.items() if k != "error"})
        wall = time.perf_counter() - start
        msg = f"{fmt_time(row.get('time'))} {'; '.join(row['note'])} [{wall:.0f} s wall]"
        print(f"  {n}x{m}x{d} h={h:.3g} {LABELS[tool]}: {msg}", file=sys.stderr, flush=True)
        rows.append(row)
    by_tool = {r["tool"]: r for r in rows}
    gemm, exp = by_tool.get("floor-gemm", {}), by_tool.get("floor-exp", {})
    if "time" in gemm and "time" in exp:
        note = ["sum of the two floor rows"]
        t, peak = gemm["time"] + exp["time"], max(gemm["peak"], exp["peak"])
        rows.append(
            dict(size=size, h=h, device=args.device, tool="floor", time=t, peak=peak, note=note)
        )
        # The forward's GEMM and exp again in the backward, then P y and P^T x: same shapes'
        # work (the last two GEMMs, P's layouts, run no faster than x y^T), so a lower bound.
        t = 4 * gemm["time"] + 2 * exp["time"]
        note = ["4 x the GEMM row + 2 x the exp row: the products and exps of a forward and an "
                "all-inputs backward"]  # fmt: skip
        rows.append(
            dict(size=size, h=h, device=args.device, tool="floor-fb", time=t, peak=peak, note=note)
        )
    t0 = by_tool.get("genmod", {}).get("time")
    for r in rows:
        if t0 and "time" in r:
            r["ratio"] = r["time"] / t0
    return rows


def fmt_time(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def table(rows: list[dict]) -> str:
    head = (
        "| N × M × D | h | device | tool | median time | × genmod fwd | peak extra memory "
        "| max rel. error (nats) | note |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        n, m, d = r["size"]
        peak = f"{r['peak'] / 2**20:.1f} MiB" if "peak" in r else "—"
        ratio = f"{r['ratio']:.3g}" if "ratio" in r else "—"
        err = f"{r['err']:.1e}" if "err" in r else "—"
        lines.append(
            f"| {n} × {m} × {d} | {r['h']:.3g} | {r['device']} | {LABELS[r['tool']]} "
            f"| {fmt_time(r.get('time'))} | {ratio} | {peak} | {err} | {'; '.join(r['note'])} |"
        )
    return "\n".join(lines)


def write_doc(path: Path, device: str, body: str) -> None:
    """Replace this device's section of ``path`` (between its markers), keeping the rest."""
    begin, end = f"<!-- bench:{device}:begin -->", f"<!-- bench:{device}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {device.upper()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def machine_line(info: dict[str, Any], load: float) -> str:
    line = (
        f"{info['cpu']}, {info['cores']} cores ({info['threads']} torch threads), load "
        f"average {load:.1f} at start; torch {info['torch']}, scikit-learn "
        f"{info['scikit-learn']}, scipy {info['scipy']}, pykeops {info['pykeops']}, "
        f"triton {info['triton']}"
    )
    if "gpu" in info:
        line += f"; GPU: {info['gpu']} (CUDA {info['cuda']})"
    return line


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--lowd",
        action="store_true",
        help="issue 12's 1-3 dimensional sizes (and on CUDA issue 13's KDE step), written to "
        "their own doc section",
    )
    p.add_argument("--sizes", help="comma-separated NxMxD (default: the issue's sizes)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test (< 30 s)")
    p.add_argument("--repeats", type=int, help="timed calls per tool, >= 3 (5; --quick 3)")
    p.add_argument("--bandwidths", default="0.5", help="comma-separated h values or 'scott'")
    p.add_argument("--tools", help=f"comma-separated subset of {', '.join(LABELS)}")
    p.add_argument(
        "--precisions",
        action="store_true",
        help="also time precision='ieee', 'tf32' and 'fp16x3' (CUDA; the default is 'tf32x3')",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="a tool whose full call would take longer is extrapolated from fewer rows",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="time genmod-train runs (start-up, per step, per epoch) instead of the kernel",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per tool process")
    p.add_argument(
        "--out",
        help="markdown file whose device section is rewritten (default "
        "docs/benchmarks.md; --quick writes nothing unless --out is given)",
    )
    args = p.parse_args(argv)
    args.tools = None if args.tools is None else set(args.tools.split(","))
    unknown = (
        set()
        if args.tools is None
        else (args.tools - set(LABELS)) | (args.tools & {"floor", "floor-fb"})
    )
    if unknown:
        p.error(f"--tools: unknown {sorted(unknown)}")
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.repeats < 3:
        p.error("--repeats must be >= 3")
    if args.precisions and args.device == "cpu":
        print("note: --precisions concerns the CUDA kernel only; ignored on CPU", file=sys.stderr)
    out = args.out or (None if args.quick else str(ROOT / "docs" / "benchmarks.md"))
    section = f"{args.device}-lowd" if args.lowd else args.device
    section = f"{args.device}-train" if args.train else section
    sizes = (
        [] if args.train else parse_sizes(args.sizes or (QUICK if args.quick else SIZES)[section])
    )
    if str(ROOT) not in sys.path:  # run from a checkout without installing genmod
        sys.path.insert(0, str(ROOT))
    load = os.getloadavg()[0]
    info = bu.run_child(bu.machine_info, args.device, args.timeout)
    if "error" in info:
        raise SystemExit(f"--device {args.device}: {info['error']}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python scripts/bench_kde.py", *(argv if argv is not None else sys.argv[1:])])
    head = [f"Measured {stamp} with `{cmd}`.", f"Machine: {machine_line(info, load)}."]
    if args.train:
        body = "\n\n".join([*head, train_rows(args, out, section, head)])
        print(body)
        return
    rows: list[dict] = []
    for hspec in args.bandwidths.split(","):
        for n, m, d, h in sizes:
            rows += run_size(args, (n, m, d), h or bandwidth(hspec.strip(), m, d))
            report(rows, args, out, section, head, final=False)
        if all(h is not None for *_, h in sizes):
            break  # every size has its own bandwidth
    print(report(rows, args, out, section, head, final=True))
    if out:
        print(f"\nwrote the {section} section of {out}", file=sys.stderr)


def report(
    rows: list[dict],
    args: argparse.Namespace,
    out: str | None,
    section: str,
    head: list[str],
    final: bool,
) -> str:
    """The section's text (table and targets), written to ``out`` (also while the run goes
    on: a run cut short keeps its rows). A failure in the targets is reported in their place,
    never losing the table."""
    try:
        lines = targets(rows, args.device)
    except Exception as err:  # noqa: BLE001 - the table must survive a bug in the targets
        lines = [f"targets failed: {type(err).__name__}: {err}"]
    issue = 12 if args.lowd else (13 if args.device == "cuda" else 5)
    status = "" if final else " (run in progress: sizes after the last row are missing)"
    body = "\n\n".join(
        [
            *head,
            table(rows),
            f"Targets of issue {issue} (ratios from this run){status}:\n\n```\n"
            + "\n".join(lines)
            + "\n```",
        ]
    )
    if out:
        write_doc(Path(out), section, body)
    return body


def train_rows(args: argparse.Namespace, out: str | None, section: str, head: list[str]) -> str:
    """``--train``: time the ``genmod-train`` runs of ``_bench_train.RUNS`` (the GPU commands
    on CUDA; on CPU only with ``--quick``, as tiny CPU versions that check the machinery)."""
    import _bench_train as bt

    results: dict[str, tuple[str, dict]] = {}
    for label, (gpu_cmd, cpu_cmd, timeout) in bt.RUNS.items():
        if args.device == "cpu" and not args.quick:
            results[label] = (gpu_cmd, {"skipped": "skipped: no CUDA device (a GPU row)"})
            continue
        cmd = gpu_cmd if args.device == "cuda" else cpu_cmd
        res = bt.run_training(cmd, min(timeout, args.timeout))
        results[label] = (cmd, res)
        print(f"  train {label}: {res}", file=sys.stderr, flush=True)
        if out:
            write_doc(Path(out), section, "\n\n".join([*head, bt.train_table(results)]))
    text = bt.train_table(results)
    if out:
        write_doc(Path(out), section, "\n\n".join([*head, text]))
    return text


if __name__ == "__main__":
    main()
