"""Fixtures of the whole suite."""

from __future__ import annotations

import pytest

from flexmtl.executors import JOBS_VARIABLE


@pytest.fixture(autouse=True)
def _runs_in_process(monkeypatch):
    """Studies train their runs in the test process (``FLEXMTL_JOBS=1``, also for the
    ``flexmtl`` processes a test starts), where tests can patch and watch them; the tests of
    :mod:`flexmtl.executors` pass ``jobs`` themselves."""
    monkeypatch.setenv(JOBS_VARIABLE, "1")
