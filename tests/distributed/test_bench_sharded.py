"""``scripts/bench_sharded.py``'s communication count on 2 gloo processes: the bytes and
collectives a sharded KDE's evaluation and training step pass through ``torch.distributed``
equal ``comm_bytes`` (the figures docs/scaling.md builds on), with unequal query counts."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_counted_communication_equals_the_formula():
    sys.path.insert(0, str(SCRIPTS))  # the spawned ranks import the script by name too
    try:
        import bench_sharded as bench

        cfg = {"dims": [3], "m": 41, "n": 7, "batch": 5, "repeats": 1}
        ranks = bench.run_world(2, cfg)
        table = bench.table(cfg, {2: ranks})  # raises when a count differs from the formula
    finally:
        sys.path.remove(str(SCRIPTS))
    # metadata 2 x 64, queries padded 2 x 4 x 3 x 4, two all-reduces of 7 float32
    assert ranks[0][3]["eval_bytes"] == bench.comm_bytes([4, 3], 3, train=False) == (280, 4)
    # + indices padded 2 x 3 x 8, the backward's 5 float32 and the gradient of log h
    assert ranks[1][3]["train_bytes"] == bench.comm_bytes([3, 2], 3, train=True) == (312, 7)
    assert bench.comm_bytes([5], 3, train=True) == (0, 0)
    assert "in 7 collectives" in table
