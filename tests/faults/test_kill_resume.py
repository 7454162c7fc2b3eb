"""A run killed at any point (several signals, several phases) and run again ends exactly
like a run that was never interrupted: same metrics of every run, same logs, same summary.

Each case starts ``flexmtl``'s runner in a fresh process that kills itself at the N-th
occurrence of one phase -- inside a training step (after the backward, before the
optimiser step), while ``last.pt`` or ``result.json`` is being written (the new file
complete but not yet in place), during an evaluation, or while the results of all runs are
aggregated -- and then reruns the same command here, in the test process.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flexmtl.runner import run_experiment

#: a small experiment of two methods, one seed: 8 steps, evaluated and saved every 4
EXPERIMENT = dict(name="random-tasks", methods=["parallel", "soft"], seeds=1, steps=8,
                  overrides={"n": 16, "m": 8, "eval_every": 4}, sweep=False, progress=False,
                  plots=False)

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import flexmtl.run_folder, flexmtl.runner
    from flexmtl.training import trainer as trainer_module
    from flexmtl.runner import run_experiment

    out, phase, signum, nth = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seen = {{"n": 0}}
    # Ctrl-C as in a terminal: a shell starts background jobs with SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler (the suite may run in one)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def due():
        seen["n"] += 1
        if seen["n"] == nth:
            os.kill(os.getpid(), signum)

    def wrap(owner, name, when=lambda *a, **k: True):
        original = getattr(owner, name)
        def patched(*args, **kwargs):
            if when(*args, **kwargs):
                due()
            return original(*args, **kwargs)
        setattr(owner, name, patched)

    if phase == "step":  # after the backward of a step, before the optimiser steps
        from flexmtl.training import batched  # a batch of runs: its one optimiser
        wrap(batched.StackAdam, "step")
        original_update = trainer_module.Trainer.update
        def update(self, loss, tasks):
            original_step = self.optimizer.step
            def step(*args, **kwargs):
                due()
                return original_step(*args, **kwargs)
            self.optimizer.step = step
            try:
                return original_update(self, loss, tasks)
            finally:
                del self.optimizer.step
        trainer_module.Trainer.update = update
    elif phase in ("last.pt", "result.json"):  # the new file is complete, not yet in place
        wrap(flexmtl.run_folder.os, "replace",
             lambda src, dst: os.path.basename(str(dst)) == phase)
    elif phase == "evaluation":
        wrap(trainer_module, "evaluate_tasks")
    elif phase == "aggregation":  # every run has finished; results.json is not written yet
        wrap(flexmtl.runner, "_aggregate")
    run_experiment(out_dir=out, log=lambda message: None, **{experiment})
""")

CASES = [  # (phase, signal, occurrence); each run: 8 steps, 2 checkpoints, 4 evaluations
    ("step", signal.SIGKILL, 3),
    ("step", signal.SIGTERM, 14),
    ("step", signal.SIGINT, 6),
    ("last.pt", signal.SIGKILL, 1),
    ("last.pt", signal.SIGTERM, 4),
    ("evaluation", signal.SIGKILL, 2),
    ("evaluation", signal.SIGINT, 7),
    ("result.json", signal.SIGKILL, 2),
    ("aggregation", signal.SIGTERM, 1),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_experiment(out_dir=out, log=lambda message: None, **EXPERIMENT)
    return out


def _outcome(out: Path) -> dict:
    """What must not depend on interruptions: every run's metrics and logs, the summary."""
    runs = {}
    for result in sorted(out.rglob("result.json")):
        data = json.loads(result.read_text())
        logs = {name: list(csv.reader(open(result.parent / name)))
                for name in ("train_log.csv", "eval_log.csv")}
        runs[str(result.parent.relative_to(out))] = (
            data["best_step"], data["steps"], data["val"], data["test"], data["sharing"], logs)
    summary = json.loads((out / "results.json").read_text())
    methods = {m: {k: v for k, v in entry["metrics"].items() if k != "train_seconds"}
               for m, entry in summary["methods"].items()}
    return {"runs": runs, "methods": methods}


@pytest.mark.parametrize("phase, signum, nth", CASES,
                         ids=[f"{p}-{signal.Signals(s).name}-{n}" for p, s, n in CASES])
def test_killed_anywhere_then_rerun_equals_an_uninterrupted_run(tmp_path, reference, phase,
                                                                 signum, nth):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(experiment=repr(EXPERIMENT)))
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(script), str(out), phase, str(int(signum)),
                             str(nth)], capture_output=True, text=True, timeout=120)
    assert killed.returncode != 0, killed.stderr  # it was killed, not finished
    assert not (out / "results.json").exists()
    run_experiment(out_dir=out, log=lambda message: None, **EXPERIMENT)
    assert _outcome(out) == _outcome(reference)
    assert not list(out.rglob("*.tmp"))  # no temporary file of a torn write is left behind
