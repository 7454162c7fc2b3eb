"""Helpers of the tests that run ``flexmtl`` in a real process (importable from every test
folder: ``tests/`` is on ``sys.path`` through its ``conftest.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flexmtl


def python_env() -> dict[str, str]:
    """This environment with the flexmtl under test first on ``PYTHONPATH``."""
    src = str(Path(flexmtl.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}


def sigterm_when(args: Sequence[str], started: Callable[[], bool],
                 what: str = "the run") -> tuple[int, str]:
    """Start ``python -m flexmtl ARGS``, send it SIGTERM once ``started()`` is true, and
    return its exit status and standard error."""
    proc = subprocess.Popen([sys.executable, "-m", "flexmtl", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=python_env())
    try:
        deadline = time.monotonic() + 240
        while not started() and proc.poll() is None:
            assert time.monotonic() < deadline, f"{what} never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err
