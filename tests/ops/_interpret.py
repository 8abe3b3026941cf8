"""Run a test file as a script under Triton's interpreter and read the JSON it prints.

Triton decides at import time whether its kernels are interpreted, so the interpreted cases of
``tests/ops/test_triton*.py`` run in a fresh subprocess: the test file itself, run as a script,
prints one JSON line of results, on which the parent asserts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_as_script(path: str, *args: str, timeout: int = 600, **env_vars: str) -> dict:
    """``python path *args`` from the repository root with ``TRITON_INTERPRET=1`` (unless
    ``env_vars`` say otherwise) and ``GENMOD_TRITON_BWD`` unset; its last stdout line as JSON.
    A non-zero exit fails the calling test with the end of its stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1") | env_vars
    if "GENMOD_TRITON_BWD" not in env_vars:
        env.pop("GENMOD_TRITON_BWD", None)
    proc = subprocess.run(
        [sys.executable, path, *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
