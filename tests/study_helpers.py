"""Helpers of the tests that run whole studies (run_experiment): the folder and thread
isolation every such test module needs, a silent log, and the runs' results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import flexmtl.runner
from flexmtl.training import Trainer

#: result.json keys that time the run: the only ones that may differ between executors
TIMING = ("seconds",)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Run in tmp_path (a default run folder would land in ./runs) and restore torch's
    thread count, which the experiments set to 1. Autouse in the modules that import it."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def quiet(_message: str) -> None:
    pass


def run_results(out: Path) -> dict[str, dict]:
    """Every run's result.json, timing left out, by its path in the study."""
    results = {}
    for path in sorted(out.rglob("result.json")):
        result = json.loads(path.read_text())
        for key in TIMING:
            result.pop(key)
        results[path.parent.relative_to(out).as_posix()] = result
    return results


def interrupting_trainer(step: int) -> type[Trainer]:
    """A Trainer that Ctrl-C stops (KeyboardInterrupt) at ``step``."""
    def interrupt(trainer, at):
        if at == step:
            raise KeyboardInterrupt

    class InterruptedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[interrupt], **kwargs)

    return InterruptedTrainer


def interrupted_at(monkeypatch, step: int, run) -> None:
    """Call ``run()`` with every Trainer the runner builds stopped by Ctrl-C at ``step``
    (KeyboardInterrupt, expected); the runner's Trainer is restored after."""
    monkeypatch.setattr(flexmtl.runner, "Trainer", interrupting_trainer(step))
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(flexmtl.runner, "Trainer", Trainer)
