"""Numerical kernels (torch only; Triton optional on CUDA)."""

from genmod.ops.pairwise import KERNELS, pairwise_logsumexp

__all__ = ["KERNELS", "pairwise_logsumexp"]
