"""Command-line entry points (``genmod-train``, ``genmod-eval``, ``genmod-sample``,
``genmod-compare``): thin Hydra wrappers around :mod:`genmod.training`."""

from genmod.cli._common import config_dir

__all__ = ["config_dir"]
