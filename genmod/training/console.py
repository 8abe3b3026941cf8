"""Plain console output of the commands: tables and summaries on stdout as the README shows
them, with the same lines kept in the run's log file."""

from __future__ import annotations

import logging

__all__ = ["print_table"]


def print_table(text: str, logger: logging.Logger) -> None:
    """Print ``text`` (a table, a summary) plain on stdout, and hand each of its lines to
    the log files only (the root logger's file handlers, e.g. Hydra's ``<task>.log``) as an
    INFO record of ``logger``: the console shows no ``[time][name][INFO]`` prefixes and the
    log keeps the record."""
    print(text, flush=True)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files or not logger.isEnabledFor(logging.INFO):
        return
    for line in text.splitlines():
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None)
        for handler in files:
            if record.levelno >= handler.level:
                handler.handle(record)
