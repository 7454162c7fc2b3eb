"""Fixtures shared by the fault-injection tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in tmp_path and restore torch's thread count (the experiments set it to 1)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
