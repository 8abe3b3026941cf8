"""Run a function on W local processes joined by a gloo process group (CPU only).

``run_ranks(target, world, tmp_path, *args)`` starts ``world`` fresh processes, each with one
thread, ``torch.distributed`` initialised on a free localhost port, and calls
``target(rank, world, *args)`` in each; what each returns (a dict of tensors / numbers) is
saved to ``tmp_path`` and handed back as a list indexed by rank. A rank that raises makes
the whole call fail with that rank's traceback; collectives time out after 60 s, so a test
whose ranks fall out of step fails instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, out: str, target: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        result = target(rank, world, *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(target: Callable, world: int, tmp_path: Path, *args: Any) -> list[Any]:
    """``[target(rank, world, *args) for rank in range(world)]``, each on its own process."""
    out = Path(tmp_path) / f"ranks{world}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.start_processes(
            _entry,
            args=(world, free_port(), str(out), target, args),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
    except mp.ProcessRaisedException as err:
        errors = sorted(out.glob("rank*.err"))
        raise AssertionError(errors[0].read_text() if errors else str(err)) from None
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
