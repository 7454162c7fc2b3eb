"""``random-tasks-failing``: random-tasks whose ``soft`` model cannot be built for seed 1.

Registered when this module is imported -- also in a worker process, which imports it to
find the experiment (the module of its ``build_tasks``; :func:`flexmtl.runner.train_run`).
"""

from __future__ import annotations

from dataclasses import replace

from flexmtl.experiments import EXPERIMENTS, get_experiment, register_experiment

NAME = "random-tasks-failing"
#: the run that fails, and the message it fails with
FAILING_METHOD, FAILING_SEED = "soft", 1
MESSAGE = "a deliberate failure"


def build_tasks(cfg, seed):
    return get_experiment("random-tasks").build_tasks(cfg, seed)


def build_model(method, tasks, cfg, seed):
    if (method, seed) == (FAILING_METHOD, FAILING_SEED):
        raise RuntimeError(MESSAGE)
    return get_experiment("random-tasks").build_model(method, tasks, cfg, seed)


def register() -> None:
    """Register the experiment (once)."""
    if NAME not in EXPERIMENTS:
        register_experiment(replace(get_experiment("random-tasks"), name=NAME,
                                    build_tasks=build_tasks, build_model=build_model))


register()
