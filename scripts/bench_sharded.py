"""Wall time of the sharded KDE versus world size on CPU (gloo), and its communication.

    python scripts/bench_sharded.py                                  # prints the table
    python scripts/bench_sharded.py --write docs/scaling.md          # and puts it there
    python scripts/bench_sharded.py --worlds 1 2 --dims 2 16 --m 50000 --n 1000 --batch 256

For each world size the script spawns that many processes (one torch thread each, gloo on a
free localhost port). Every rank builds the same ``KDE(y, reference="sharded",
learn_bandwidth=True)`` on ``M`` points (``scripts/_bench_util.make_data``), keeps its
``M / world`` rows (``genmod.models._sharding.shard``) and times, between barriers:

* eval: ``log_prob`` of ``N`` queries, each rank passing its ``N / world`` (the queries are
  all-gathered, every rank reduces all ``N`` against its shard, and the ranks' partial sums
  are combined by the log-sum-exp all-reduce);
* train: one training step of a global batch of ``--batch`` reference rows, ``batch / world``
  per rank: the leave-one-out NLL, its backward and the all-reduce of the gradient of
  ``log h`` that DDP would do.

A time is the median over ``--repeats`` of the slowest rank's. The bytes per rank that go
through collectives (all-reduce: the tensor; all-gather: the gathered output) are counted by
wrapping ``torch.distributed`` and must equal :func:`comm_bytes`, read off
``genmod.ops.distributed``; results must agree between world sizes to 1e-5 relative.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _bench_util import make_data

from genmod.models import KDE, _sharding

__all__ = ["comm_bytes", "main"]

BEGIN, END = "<!-- bench_sharded:begin -->", "<!-- bench_sharded:end -->"


def comm_bytes(rows: list[int], dim: int, train: bool, itemsize: int = 4) -> tuple[int, int]:
    """``(bytes, collectives)`` per rank of one sharded KDE call with ``rows[r]`` local queries
    on rank ``r``: eval (``log_prob``) or a training step (leave-one-out forward with global
    ``exclude``, backward on ``log h`` only, and DDP's all-reduce of that one gradient).

    Forward: all-gather of the ``[world, 8]`` int64 metadata, of the queries padded to
    ``[world * max(rows), dim]``, then all-reduce MAX and SUM of the ``[sum(rows)]`` partial
    log-sums. Training adds the all-gather of the padded int64 ``exclude`` indices, the
    backward's all-reduce of the ``[sum(rows)]`` incoming gradient and the gradient of
    ``log h``. One process: no collective at all.
    """
    world, n = len(rows), sum(rows)
    if world == 1:
        return 0, 0
    padded = world * max(rows)
    total, calls = 8 * 8 * world + padded * dim * itemsize + 2 * n * itemsize, 4
    if train:
        return total + 8 * padded + n * itemsize + itemsize, calls + 3
    return total, calls


class _Counter:
    """Wraps ``dist.all_reduce`` / ``all_gather`` / ``broadcast`` to count bytes and calls
    (while ``on``) and the seconds spent in them."""

    def __init__(self) -> None:
        self.bytes = self.calls = self.seconds = 0
        self.on = False
        for name in ("all_reduce", "all_gather", "broadcast"):
            setattr(dist, name, self._wrap(getattr(dist, name)))

    def _wrap(self, fn):  # noqa: ANN001, ANN202
        def counted(tensor, *args, **kwargs):  # noqa: ANN001, ANN202
            if self.on:
                parts = tensor if isinstance(tensor, list) else [tensor]
                self.bytes += sum(t.numel() * t.element_size() for t in parts)
                self.calls += 1
            t0 = time.perf_counter()
            try:
                return fn(tensor, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return counted

    def count(self, fn) -> tuple[int, int]:  # noqa: ANN001
        self.bytes = self.calls = 0
        self.on = True
        try:
            fn()
        finally:
            self.on = False
        return self.bytes, self.calls


def _timed(fn, repeats: int, counter: _Counter) -> list[tuple[float, float]]:  # noqa: ANN001
    """Per-repeat ``(wall time, of which in collectives)`` of ``fn`` on this rank, each
    started after a barrier (the counted call before is the warm-up)."""
    times = []
    for _ in range(repeats):
        dist.barrier()
        counter.seconds, t0 = 0.0, time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0, counter.seconds))
    return times


def _rank(rank: int, world: int, cfg: dict, counter: _Counter) -> dict:
    results = {}
    for dim in cfg["dims"]:
        x, y = make_data(cfg["n"], cfg["m"], dim, seed=dim, device="cpu")
        kde = KDE(y, bandwidth="scott", reference="sharded", learn_bandwidth=True)
        _sharding.shard(kde)
        x_own = _sharding.own_part(kde, x)
        g = torch.Generator().manual_seed(1)
        index = _sharding.own_part(kde, torch.randperm(cfg["m"], generator=g)[: cfg["batch"]])
        batch = y[index]
        out = {}

        def evaluate(out=out, kde=kde, x_own=x_own) -> None:
            with torch.no_grad():
                out["eval"] = kde.log_prob(x_own).double().sum()

        def step(out=out, kde=kde, batch=batch, index=index) -> None:
            kde.zero_grad()
            loss = kde.training_loss(batch, index)
            loss.backward()
            grad = kde.log_bandwidth.grad
            if world > 1:
                dist.all_reduce(grad)
                grad /= world
            out["loss"], out["grad"] = loss.detach(), grad.clone()

        row = {"eval_bytes": counter.count(evaluate), "train_bytes": counter.count(step)}
        row["eval_t"] = _timed(evaluate, cfg["repeats"], counter)
        row["train_t"] = _timed(step, cfg["repeats"], counter)
        row["eval_rows"], row["train_rows"] = x_own.shape[0], index.shape[0]
        total = torch.stack([out["eval"], out["loss"].double() * index.shape[0]])
        dist.all_reduce(total)
        row["eval_sum"], row["loss"] = float(total[0]), float(total[1]) / cfg["batch"]
        row["grad"], row["h"] = float(out["grad"]), float(kde.bandwidth.detach())
        results[dim] = row
    return results


def _entry(rank: int, world: int, port: int, out: str, cfg: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        torch.save(_rank(rank, world, cfg, _Counter()), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_world(world: int, cfg: dict) -> list[dict]:
    """``_rank``'s result on each of ``world`` spawned processes."""
    with tempfile.TemporaryDirectory() as out:
        port = _free_port()
        mp.start_processes(_entry, (world, port, out, cfg), nprocs=world, start_method="spawn")
        return [torch.load(Path(out) / f"rank{r}.pt") for r in range(world)]


def _ms(times: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """Medians over the repeats of the slowest rank's time and of its time in collectives
    (communication, and waits where the other ranks were behind part-way), in ms."""
    slowest = [max(per_rank) for per_rank in zip(*times, strict=True)]
    return tuple(1e3 * statistics.median(t[i] for t in slowest) for i in (0, 1))


def table(cfg: dict, runs: dict[int, list[dict]]) -> str:
    """The markdown table of ``runs`` (world size -> each rank's results)."""
    lines = [
        "| D | M | world | eval: N queries | eval time (in collectives) | speed-up | "
        "train: batch | train step (in collectives) | speed-up | comm per eval call | "
        "comm per train step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dim in cfg["dims"]:
        base = {}
        for world, ranks in runs.items():
            rows = [r[dim] for r in ranks]
            comm = []
            for kind, train in (("eval", False), ("train", True)):
                counted = rows[0][f"{kind}_bytes"]
                formula = comm_bytes([r[f"{kind}_rows"] for r in rows], dim, train)
                if counted != formula:
                    raise AssertionError(f"D={dim} world={world} {kind}: {counted} != {formula}")
                comm.append(f"{counted[0] / 1024:.1f} KiB in {counted[1]} collectives")
            times = [_ms([r["eval_t"] for r in rows]), _ms([r["train_t"] for r in rows])]
            base.setdefault("t", times)
            (e, ec), (t, tc) = times
            lines.append(
                f"| {dim} | {cfg['m']} | {world} | {cfg['n']} | {e:.1f} ms ({ec:.1f} ms) | "
                f"{base['t'][0][0] / e:.2f} | {cfg['batch']} | {t:.1f} ms ({tc:.1f} ms) | "
                f"{base['t'][1][0] / t:.2f} | {comm[0]} | {comm[1]} |"
            )
    return "\n".join(lines)


def _check_agree(cfg: dict, runs: dict[int, list[dict]]) -> None:
    first = runs[min(runs)][0]
    for world, ranks in runs.items():
        for dim in cfg["dims"]:
            for key in ("eval_sum", "loss", "grad"):
                a, b = first[dim][key], ranks[0][dim][key]
                if abs(a - b) > 1e-5 * max(1.0, abs(a)):
                    raise AssertionError(f"D={dim} world={world}: {key} {b} != {a}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run each world size, print (and write) the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    p.add_argument("--m", type=int, default=50000, help="reference points")
    p.add_argument("--n", type=int, default=1000, help="evaluation queries (all ranks)")
    p.add_argument("--batch", type=int, default=256, help="training batch (all ranks)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", type=Path, help=f"markdown file to put the table in ({BEGIN})")
    args = p.parse_args(argv)
    cfg = {k: getattr(args, k) for k in ("dims", "m", "n", "batch", "repeats")}
    start = time.perf_counter()
    runs = {world: run_world(world, cfg) for world in args.worlds}
    _check_agree(cfg, runs)
    load = os.getloadavg()[0]
    text = table(cfg, runs) + (
        f"\n\n{os.cpu_count()} cores, torch {torch.__version__}, float32, one thread per "
        f"process, load average {load:.2f} at the end; {time.perf_counter() - start:.0f} s "
        f"in all. Results agree across world sizes to 1e-5 relative (bandwidth "
        + ", ".join(f"D={d}: h = {runs[min(runs)][0][d]['h']:.4g}" for d in cfg["dims"])
        + ")."
    )
    print(text)
    if args.write is not None:
        doc = args.write.read_text()
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"{args.write}: no {BEGIN} ... {END} markers")
        head, rest = doc.split(BEGIN, 1)
        args.write.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
