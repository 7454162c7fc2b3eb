"""The benchmark's study level (benchmarks/bench.py) with a stand-in run_experiment: which
variants run, how they alternate, what is compared. Nothing here is timed."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(accuracy: float, sweep: bool = False) -> dict:
    """run_experiment's results of one method, two seeds (of a sweep of two points)."""
    methods = {"soft": {"metrics": {"test_loss": {"values": [0.5, 0.4]},
                                    "test_accuracy": {"values": [accuracy, 0.8]}},
                        "per_task": {"t0": {"test_accuracy": {"values": [accuracy, 0.7]}}},
                        "seeds": [0, 1]}}
    if not sweep:
        return {"sweep": None, "methods": methods}
    return {"sweep": {"points": [{"value": 1, "methods": methods},
                                 {"value": 2, "methods": methods}]}, "methods": methods}


def test_only_the_variants_that_run_experiment_takes(bench, monkeypatch):
    def with_jobs(name, methods=None, seeds=3, out_dir=None, progress=True, plots=True,
                  log=print, jobs=1):
        pass

    def with_batches(name, jobs=1, batch_runs=True):
        pass

    monkeypatch.setitem(bench.STUDY_VARIANTS, "jobs-only", {"jobs": lambda: 2})
    monkeypatch.setattr(bench, "run_experiment", with_jobs)
    assert bench.study_variants(["serial", "jobs-only", "batched"]) == ["jobs-only"]
    monkeypatch.setattr(bench, "run_experiment", with_batches)
    assert bench.study_variants(["serial", "pool", "batched"]) == ["serial", "pool", "batched"]
    # today's one run after the other, each alone
    assert bench.STUDY_VARIANTS["serial"]["jobs"]() == 1
    assert bench.STUDY_VARIANTS["serial"]["batch_runs"]() is False


@pytest.mark.parametrize("pool_accuracy, identical", [(0.9, True), (0.91, False)])
def test_variants_alternate_in_fresh_folders_and_their_runs_are_compared(
        bench, monkeypatch, pool_accuracy, identical):
    calls = []

    def fake(name, out_dir, progress, plots, log, jobs=None, **args):
        assert not progress and not plots
        assert not any(Path(out_dir).iterdir())  # a fresh folder
        (Path(out_dir) / "runs").mkdir()
        calls.append(jobs)
        return _results(0.9 if jobs == 1 else pool_accuracy, sweep=True)

    monkeypatch.setattr(bench, "run_experiment", fake)
    monkeypatch.setitem(bench.STUDY_VARIANTS, "pool", {"jobs": lambda: 2})
    row = bench.time_study({"name": "x", "seeds": 2}, ["serial", "pool"], repeats=2,
                           log=lambda *a, **k: None)
    assert calls == [1, 2, 1, 2]
    assert row["runs"] == 4  # two seeds at two sweep points
    assert row["identical"] == {"serial": True, "pool": identical}
    assert row["max_difference"] == pytest.approx(
        {"serial": 0.0, "pool": 0.0 if identical else 0.01})
    assert row["batched_identical"] is None  # no batched variant ran
    assert set(row["ratio"]) == {"pool"} and len(row["all_seconds"]["pool"]) == 2


def test_run_metrics_name_every_run_and_task(bench):
    metrics = bench.run_metrics(_results(0.9))
    assert metrics["runs"] == 2
    assert metrics[(None, "soft", "test_accuracy")] == [0.9, 0.8]
    assert metrics[(None, "soft", "t0/test_accuracy")] == [0.9, 0.7]


def test_studies_are_scaled_from_their_own_protocols(bench):
    studies = bench.studies(10)
    assert set(studies) == set(bench.STUDY_NAMES)
    fig4a = studies["so-fig4a"]
    assert fig4a["name"] == "mnist-pairs" and fig4a["seeds"] == 3
    assert fig4a["sweep"] == ("num_tasks", (1, 2, 4, 7, 10))
    assert fig4a["overrides"] == {"steps": 500, "eval_every": 25}
    assert studies["four-mnists"]["overrides"]["epochs"] == pytest.approx(1.0)
    assert studies["uci"]["overrides"] == {"steps": 150, "eval_every": 5}


def test_batch_scaling_fits_what_a_batch_and_each_run_cost(bench, monkeypatch):
    """A stand-in train_runs that takes a + b * R seconds of a stand-in clock: the fit finds
    a and b, and the bound is T(1) / b; the sizes alternate and each batch trains its own
    seeds in fresh folders."""
    import flexmtl.runner

    clock = [0.0]
    calls = []

    def fake_train_runs(experiment, method, seeds, config, run_dirs, *args, **kwargs):
        assert len(run_dirs) == len(seeds) == len(set(run_dirs))
        calls.append(len(seeds))
        clock[0] += 3.0 + 0.5 * len(seeds)

    monkeypatch.setattr(flexmtl.runner, "train_runs", fake_train_runs)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    row = bench.batch_scaling("uci", "soft", [1, 2, 4], 10, 2, log=lambda *a, **k: None)
    assert calls == [1, 1, 2, 4, 1, 2, 4]  # a warm-up batch of one, then alternating
    assert row["seconds_per_run"] == {"1": 3.5, "2": 2.0, "4": 1.25}
    assert row["batch_cost"] == pytest.approx(3.0) and row["run_cost"] == pytest.approx(0.5)
    assert row["batching_bound"] == pytest.approx(7.0)
    assert "| uci | soft | 10 x 2 | 1: 3.50, 2: 2.00, 4: 1.25 | 3.00 | 0.50 | 7.00x |" in \
        "\n".join(bench._scaling_markdown([row]))
