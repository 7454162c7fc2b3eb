"""Where a study's runs train (flexmtl.executors): worker processes and Ray give the same
runs and summaries as the serial loop, resume a half-done study, name a failed run, stop
cleanly on SIGTERM; the command line's --jobs, --executor and --address."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from processes import sigterm_when
from study_helpers import (  # noqa: F401 (_isolate: autouse)
    _isolate,
    interrupted_at,
    quiet,
    run_results,
)

import flexmtl
import flexmtl.reproduction
import flexmtl.runner
from flexmtl.cli import main
from flexmtl.errors import ConfigError, RunFailedError, UnknownNameError
from flexmtl.executors import JOBS_VARIABLE, check_executor, worker_count
from flexmtl.experiments import EXPERIMENTS
from flexmtl.runner import run_experiment

#: a study of 8 tiny runs: 2 sweep values x 2 methods x 2 seeds
STUDY = dict(methods=["parallel", "soft"], seeds=2, steps=20,
             overrides={"n": 16, "m": 8, "eval_every": 5}, sweep=("n", [8, 16]),
             progress=False, plots=False)
def summary(out: Path) -> dict:
    """results.json without its timing: the study's wall time and every train_seconds."""
    results = json.loads((out / "results.json").read_text())
    results.pop("wall_seconds")
    points = results["sweep"]["points"] if results["sweep"] else []
    for point in [results, *points]:
        for entry in point["methods"].values():
            entry["metrics"].pop("train_seconds")
    return results


def test_worker_processes_give_the_serial_results(tmp_path):
    serial = run_experiment("random-tasks", out_dir="serial", jobs=1, log=quiet, **STUDY)
    logged: list[str] = []
    pooled = run_experiment("random-tasks", out_dir="pool", jobs=2, log=logged.append, **STUDY)
    assert len(run_results(Path("serial"))) == 8
    assert run_results(Path("pool")) == run_results(Path("serial"))
    assert summary(Path("pool")) == summary(Path("serial"))
    assert pooled["methods"]["soft"]["best_steps"] == serial["methods"]["soft"]["best_steps"]
    assert ("  8 run(s) to train (4 batch(es) of seeds trained as one), 2 at a time in worker "
            "processes") in logged
    finished = [line for line in logged if ": test loss " in line]
    assert len(finished) == 8 and any(" soft seed 1 (n=16): test loss " in line
                                       for line in finished)
    assert not list(Path("pool").rglob("run.lock"))


def test_a_half_done_study_resumes_in_worker_processes(monkeypatch):
    run_experiment("random-tasks", out_dir="ref", jobs=1, log=quiet, **STUDY)
    # first one seed of one method, then its second seed stopped at step 12 (its checkpoint:
    # step 10), both in this process
    study = {**STUDY, "methods": ["parallel"]}
    run_experiment("random-tasks", out_dir="o", **{**study, "seeds": 1}, jobs=1, log=quiet)

    interrupted_at(monkeypatch, 12, lambda: run_experiment("random-tasks", out_dir="o", **study,
                                                          jobs=1, log=quiet))
    half = "n=8/parallel/seed-1"
    assert Path("o", half, "last.pt").exists() and not Path("o", half, "result.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in Path("o").rglob("result.json")}
    assert len(finished) == 2

    logged: list[str] = []
    run_experiment("random-tasks", out_dir="o", jobs=2, log=logged.append, **STUDY)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # reused, not retrained
    assert sum(": done before (test loss " in line for line in logged) == 2
    assert ("  6 run(s) to train (2 batch(es) of seeds trained as one), 2 at a time in worker "
            "processes") in logged
    results, expected = run_results(Path("o")), run_results(Path("ref"))
    resumed = results.pop(half)
    assert (resumed["resumed_from"], resumed["steps"]) == (10, 20)
    # the resumed run ends as if it had never stopped; the others are the serial ones
    assert resumed["best_step"] == expected[half]["best_step"]
    assert resumed["test"]["loss"] == pytest.approx(expected.pop(half)["test"]["loss"],
                                                    rel=1e-6)
    assert results == expected
    assert not list(Path("o").rglob("run.lock"))


@pytest.fixture
def failing_experiment():
    """random-tasks-failing (tests/failing_experiment.py), registered while the test runs."""
    import failing_experiment

    failing_experiment.register()
    yield failing_experiment
    EXPERIMENTS.unregister(failing_experiment.NAME)


def test_a_failed_run_in_a_worker_names_the_run(failing_experiment):
    logged: list[str] = []
    with pytest.raises(RunFailedError) as caught:
        run_experiment(failing_experiment.NAME, out_dir="o", jobs=2, log=logged.append,
                       **{**STUDY, "sweep": None})
    error = caught.value
    assert str(error) == "run soft seed 1 failed: RuntimeError: a deliberate failure"
    assert (error.run, error.error_type, error.expected) == ("soft seed 1", "RuntimeError",
                                                             False)
    assert isinstance(error.error, RuntimeError)
    assert "in build_model" in error.traceback  # the worker's own traceback
    assert error.traceback.rstrip().endswith("RuntimeError: a deliberate failure")
    assert any(line.startswith("  soft seed 1: failed (RuntimeError: a deliberate failure)")
               for line in logged)
    # the other runs finished; nothing was summarised; every lock is released
    assert sorted(run_results(Path("o"))) == ["parallel/seed-0", "parallel/seed-1",
                                              "soft/seed-0"]
    assert not Path("o/results.json").exists()
    assert not list(Path("o").rglob("run.lock"))


TINY = ["random-tasks", "n=8", "m=4", "--steps", "6", "--seeds", "2", "--methods",
        "parallel", "--no-sweep", "--no-progress", "--no-plots", "--out", "o"]


def test_cli_diverged_run_in_a_worker_is_one_line_naming_it(capsys):
    assert main(["run", *TINY, "lr=inf", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # a flexmtl error: one line says it all
    last = err.strip().splitlines()[-1]
    assert last.startswith("flexmtl: error: run parallel seed ")
    assert " failed: loss became nan at step 2 (tasks: random0, random1)" in last
    assert not Path("o/results.json").exists()
    assert not list(Path("o").rglob("result.json"))


def test_sigterm_stops_the_workers_and_releases_every_lock(tmp_path):
    out = tmp_path / "o"
    args = [a if a != "6" else "1000000" for a in TINY[:-1]]  # long enough to be stopped
    returncode, err = sigterm_when(
        ["run", *args, str(out), "eval_every=5", "--jobs", "2"],
        lambda: len(list(out.rglob("seed-*/last.pt"))) >= 2, "the runs")
    assert returncode == 143, err
    assert err.splitlines()[-1] == ("flexmtl: stopped by SIGTERM; rerun the same command to "
                                    "resume")
    assert "Traceback" not in err
    assert not list(out.rglob("run.lock"))  # the study's and each worker's run


def test_ray_tasks_give_the_local_results(tmp_path):
    ray = pytest.importorskip("ray")
    study = {**STUDY, "sweep": ("n", [8])}
    run_experiment("random-tasks", out_dir="local", jobs=1, log=quiet, **study)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        logged: list[str] = []
        run_experiment("random-tasks", out_dir="ray", executor="ray", jobs=2,
                       log=logged.append, **study)
    finally:
        ray.shutdown()
    assert "  Ray cluster of 2 CPU(s): 2 run(s) at a time" in logged
    assert run_results(Path("ray")) == run_results(Path("local"))
    assert summary(Path("ray")) == summary(Path("local"))


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(jobs=0), ConfigError, "jobs must be >= 1, got 0"),
    (dict(jobs=1.5), ConfigError, "jobs must be a whole number (how many runs train at "
                                  "once), got 1.5"),
    (dict(jobs=True), ConfigError, "jobs must be a whole number"),
    (dict(executor="rya"), UnknownNameError, "unknown executor 'rya'. Did you mean 'ray'? "
                                             "Known: local, ray."),
    (dict(address="head:6379"), ConfigError, "address 'head:6379' is the Ray cluster to "
                                             "connect to; it needs executor='ray'"),
])
def test_bad_executor_settings_are_refused_before_anything_is_written(kwargs, error, message):
    with pytest.raises(error) as caught:
        run_experiment("random-tasks", out_dir="o", log=quiet, **{**STUDY, **kwargs})
    assert message in str(caught.value)
    assert not Path("o").exists()


def test_default_jobs(monkeypatch):
    monkeypatch.setenv(JOBS_VARIABLE, "3")
    assert worker_count(None, 10) == 3 and worker_count(None, 2) == 2
    assert worker_count(4, 10) == 4 and worker_count(4, 1) == 1
    check_executor("local", None, None, torchrun=True)  # the default: serial under torchrun
    monkeypatch.delenv(JOBS_VARIABLE)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert worker_count(None, 1000) == cores
    monkeypatch.setenv(JOBS_VARIABLE, "all")
    with pytest.raises(ConfigError, match="FLEXMTL_JOBS='all' must be a whole number >= 1"):
        check_executor("local", None, None)
    with pytest.raises(ConfigError, match="under torchrun every process trains each run"):
        check_executor("local", 2, None, torchrun=True)
    check_executor("local", 1, None, torchrun=True)


def test_cli_passes_the_executor_options(monkeypatch):
    calls = []
    monkeypatch.setattr(flexmtl.runner, "run_experiment",
                        lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(flexmtl.reproduction, "reproduce",
                        lambda *args, **kwargs: calls.append(kwargs))
    assert main(["run", "uci", "--jobs", "3"]) == 0
    assert main(["run", "uci", "--executor", "ray", "--address", "head:6379"]) == 0
    assert main(["reproduce", "--quick", "--jobs", "2", "--executor", "ray"]) == 0
    assert [(c["jobs"], c["executor"], c["address"]) for c in calls] == [
        (3, "local", None), (None, "ray", "head:6379"), (2, "ray", None)]


@pytest.mark.parametrize("args, message", [
    (["run", "uci", "--jobs", "0"], "jobs must be >= 1, got 0"),
    (["run", "uci", "--executor", "rya"], "unknown executor 'rya'. Did you mean 'ray'?"),
    (["run", "uci", "--address", "head:6379"], "it needs executor='ray' (--executor ray)"),
    (["reproduce", "--check", "so-fig2a", "--jobs", "2"],
     "--check reruns one study into a temporary folder, one run after the other; it takes "
     "neither --only, --restart, --allow-stale, --jobs, --executor nor --address"),
    (["reproduce", "--report-only", "--executor", "ray"],
     "--report-only rewrites the whole report from every finished run without training"),
    (["reproduce", "--only", "so-fig2a", "--jobs", "0", "--out", "r"],
     "jobs must be >= 1, got 0"),
])
def test_cli_bad_executor_flags(args, message, capsys):
    assert main([*args, "--out", "o"] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err
    assert err.startswith("flexmtl: error: ") and message in err
    assert not Path("o").exists() and not Path("r").exists()
    with pytest.raises(SystemExit):  # not a number: argparse's usage error
        main(["run", "uci", "--jobs", "all"])
