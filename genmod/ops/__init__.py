"""Numerical kernels (torch only; Triton optional on CUDA)."""

from genmod.ops._tiles import set_tile_budget, tile_budget_bytes
from genmod.ops._validate import checks_values, min_scale, trusted_inputs
from genmod.ops.distributed import shard_bounds, sharded_pairwise_logsumexp
from genmod.ops.pairwise import KERNELS, pairwise_logsumexp
from genmod.ops.profiles import d_log_profile, log_profile

__all__ = [
    "KERNELS",
    "checks_values",
    "min_scale",
    "pairwise_logsumexp",
    "shard_bounds",
    "sharded_pairwise_logsumexp",
    "log_profile",
    "d_log_profile",
    "set_tile_budget",
    "tile_budget_bytes",
    "trusted_inputs",
]
