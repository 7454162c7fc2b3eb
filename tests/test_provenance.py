"""Provenance of runs (:mod:`flexmtl.provenance`), reuse of runs only of the same code,
per-seed ``runs.json``, ``flexmtl reproduce --check`` and the reference floors.

Everything trains the tiny random-tasks protocol (a few steps, one or two seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flexmtl import provenance
from flexmtl.analysis import floors as floors_mod
from flexmtl.cli import main
from flexmtl.reproduction import report as report_mod
from flexmtl.reproduction import studies as st
from flexmtl.run_folder import ExperimentFolder, ReproductionReport
from flexmtl.runner import run_experiment
from flexmtl.tasks import LazyInputs, Task

TINY = {"steps": 4, "eval_every": 2, "m": 4, "n": 16}


def _quiet(_msg: str) -> None:
    pass


def _assess(run: st.StudyRun) -> st.Assessment:
    return st.Assessment(ours=["| ours |"], verdict=st.PARTLY, reason="tiny")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """One registered study over 2 seeds of one method of tiny random tasks; run in tmp_path."""
    study = st.Study(
        key="tiny", paper=st.SOFT_ORDERING, figure="Fig. T", claim="tiny", published="x",
        experiment="random-tasks", assess=_assess,
        full=st.Protocol(2, TINY, methods=("parallel",)),
        quick=st.Protocol(1, TINY, methods=("parallel",), note="tiny"))
    monkeypatch.setattr(st.STUDIES, "_entries", {"tiny": study})
    monkeypatch.setattr(st, "_ORDER", ["tiny"])
    monkeypatch.chdir(tmp_path)
    return study


def _other_code(monkeypatch, value: str = "0" * 64) -> None:
    monkeypatch.setattr(provenance, "source_hash", lambda: value)


# ---------------------------------------------------------------------- provenance


def test_no_module_the_hash_covers_imports_the_use_package():
    """``use/`` (loading, evaluating, exporting finished runs) is left out of the source hash
    because training never runs it: no covered module may import it, except the package's
    ``__init__``, which only re-exports its names lazily."""
    import ast

    for path in provenance.source_files():
        rel = path.relative_to(provenance.PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}." + a.name for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            used = [n for n in names if n == "flexmtl.use" or n.startswith("flexmtl.use.")]
            if rel == "__init__.py":
                assert used in ([], ["flexmtl.use"]), used
            else:
                assert not used, f"{rel} imports {used}"


def test_source_hash_rule_and_run_provenance(tmp_path):
    files = {p.relative_to(provenance.PACKAGE).as_posix() for p in provenance.source_files()}
    assert {"runner.py", "models.py", "training/trainer.py", "run_folder.py"} <= files
    assert not {"cli.py", "__main__.py", "analysis/plots.py", "analysis/layer_vis_plots.py",
                "provenance.py"} & files
    assert not any(f.startswith(("reproduction/", "use/")) for f in files)
    # the hash follows the bytes of the covered files only
    pkg = tmp_path / "pkg"
    (pkg / "reproduction").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "cli.py").write_text("y = 1\n")
    h = provenance._hash_of(pkg)
    (pkg / "cli.py").write_text("y = 2\n")
    (pkg / "reproduction" / "r.py").write_text("z = 2\n")
    assert provenance._hash_of.__wrapped__(pkg) == h
    (pkg / "a.py").write_text("x = 2\n")
    assert provenance._hash_of.__wrapped__(pkg) != h

    out = tmp_path / "run"
    run_experiment("random-tasks", methods=["parallel"], seeds=1, out_dir=out, overrides=TINY,
                   sweep=False, progress=False, plots=False, log=_quiet)
    run = ExperimentFolder(out).run("parallel", 0)
    prov = run.read_result()["provenance"]
    assert prov["source_hash"] == provenance.source_hash()
    assert prov["torch"] == torch.__version__ and prov["device"] == "cpu"
    assert set(prov) >= {"flexmtl", "commit", "dirty", "python", "numpy", "data"}
    # the data checksums are those of fingerprint.json (data_digest), not hashed again
    fingerprint = run.read_fingerprint()
    assert prov["data"]["random0"]["train.x"] == fingerprint["task random0.train.x"]
    assert set(prov["data"]) == {"random0", "random1"}
    assert provenance.stale_reasons(prov) == []
    assert provenance.stale_reasons(None) == ["no provenance recorded"]


def test_run_warns_in_one_line_about_runs_of_other_code(tmp_path, monkeypatch):
    out = tmp_path / "run"
    kw = dict(methods=["parallel"], out_dir=out, overrides=TINY, sweep=False, progress=False,
              plots=False)
    run_experiment("random-tasks", seeds=1, log=_quiet, **kw)
    _other_code(monkeypatch)
    logged: list[str] = []
    results = run_experiment("random-tasks", seeds=2, log=logged.append, **kw)
    warnings = [line for line in logged if line.startswith("warning:")]
    assert len(warnings) == 1 and "parallel/seed-0" in warnings[0]
    assert "seed-1" not in warnings[0] and "source_hash" in warnings[0]
    assert results["stale_runs"] == ["parallel/seed-0"]


# ---------------------------------------------------------------------- reproduce


def test_reproduce_reruns_stale_studies_unless_allowed(tiny, monkeypatch):
    logs: list[str] = []
    report_mod.reproduce(["tiny"], quick=True, out="runs", progress=False, log=logs.append)
    data = json.loads(ReproductionReport().data.read_text())
    assert data["generated_from"]["source_hash"] == provenance.source_hash()
    assert set(data["generated_from"]) == {"flexmtl", "commit", "dirty", "source_hash"}
    entry = data["studies"][0]
    assert "stale" not in entry
    runs = json.loads(ReproductionReport().study_runs("tiny").read_text())
    assert entry["runs_file"] == "docs/reproduction/tiny/runs.json"
    (r,) = runs["runs"]
    assert r["method"] == "parallel" and r["seed"] == 0 and r["value"] is None
    assert set(r["values"]) == {"test", "val", "tasks", "analysis", "best_step", "steps"}
    assert set(r["values"]["tasks"]) == {"random0", "random1"}
    assert r["provenance"]["source_hash"] == provenance.source_hash()
    result = ExperimentFolder(Path("runs/quick/tiny")).run("parallel", 0).read_result()
    assert r["values"]["test"]["loss"] == result["test"]["loss"]

    # the floors: in the run folder and, summarised over seeds, in the report
    floors = ExperimentFolder(Path("runs/quick/tiny")).read_floors()
    task = floors["points"][0]["seeds"]["0"]["random0"]
    assert 0.0 <= task["majority"] <= 1.0 and 0.0 <= task["logistic"] <= 1.0
    (row,) = entry["floors"]
    assert row["majority"]["mean"] == pytest.approx(
        (task["majority"] + floors["points"][0]["seeds"]["0"]["random1"]["majority"]) / 2)
    text = Path("REPRODUCTION.md").read_text()
    assert "Reference floors on the same splits: majority class " in text

    # other code now: the finished run is stale
    _other_code(monkeypatch)
    logs.clear()
    report_mod.reproduce(["tiny"], quick=True, out="runs", progress=False, log=logs.append,
                         allow_stale=True)
    assert any("--allow-stale: reusing them" in line for line in logs)
    assert any("done before" in line for line in logs)
    entry = json.loads(ReproductionReport().data.read_text())["studies"][0]
    assert entry["stale"]["text"].startswith("stale: run on ")
    assert entry["stale"]["text"].endswith("code has changed since")
    assert "Stale: run on " in Path("REPRODUCTION.md").read_text()

    logs.clear()
    report_mod.reproduce(["tiny"], quick=True, out="runs", progress=False, log=logs.append)
    assert any("rerunning the study from scratch" in line for line in logs)
    assert not any("done before" in line for line in logs)
    entry = json.loads(ReproductionReport().data.read_text())["studies"][0]
    assert "stale" not in entry


def test_runs_without_provenance_count_as_stale(tiny):
    report_mod.reproduce(["tiny"], quick=True, out="runs", progress=False, log=_quiet)
    folder = ExperimentFolder(Path("runs/quick/tiny"))
    run = folder.run("parallel", 0)
    result = run.read_result()
    del result["provenance"]
    run.write_result(result)  # as an older flexmtl wrote it
    assert report_mod.stale_runs(folder) == {"parallel/seed-0": ["no provenance recorded"]}
    report_mod.write_report("runs", log=_quiet)
    entry = json.loads(ReproductionReport().data.read_text())["studies"][0]
    assert "an older flexmtl" in entry["stale"]["text"]


def test_check_reruns_the_study_and_compares_every_value_exactly(tiny, capsys):
    report_mod.reproduce(["tiny"], quick=True, out="runs", progress=False, log=_quiet,
                         floors=False)
    capsys.readouterr()
    assert main(["reproduce", "--check", "tiny", "--quick", "--no-progress"]) == 0
    assert "all 1 committed run(s) reproduced exactly" in capsys.readouterr().out
    path = ReproductionReport().study_runs("tiny")
    runs = json.loads(path.read_text())
    runs["runs"][0]["values"]["test"]["loss"] += 1e-12
    path.write_text(json.dumps(runs))
    assert main(["reproduce", "--check", "tiny", "--quick", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 mismatch(es)" in out and "parallel seed 0: .test.loss: committed" in out
    # the full protocol was not what was committed
    assert main(["reproduce", "--check", "tiny", "--no-progress"]) == 2
    assert "with --quick" in capsys.readouterr().err


def test_compare_runs_names_missing_runs_and_nan_is_equal():
    a = [{"value": 16, "method": "m", "seed": 0, "values": {"x": float("nan"), "y": 1}}]
    assert report_mod.compare_runs(a, json.loads(json.dumps(a))) == []
    b = [{**a[0], "seed": 1}]
    lines = report_mod.compare_runs(a, b)
    assert lines == ["value 16, m seed 0: committed, but not rerun by this protocol",
                     "value 16, m seed 1: rerun, but not in the committed runs"]
    c = [{**a[0], "values": {"x": float("nan"), "y": 1.0}}]  # 1 and 1.0: not the same JSON
    assert report_mod.compare_runs(a, c) == ["value 16, m seed 0: .y: committed 1, rerun 1.0"]


# ---------------------------------------------------------------------- floors


class _Lazy(LazyInputs):
    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x

    @property
    def shape(self):
        return tuple(self.x.shape)

    def read(self, index):
        return self.x[torch.from_numpy(index)]


def test_reference_floors_majority_logistic_and_caps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, 3, generator=g)
    y = (x[:, 0, 0] > 0.5).long()  # linearly separable, mostly class 0
    clf = Task("clf", "multiclass", (x[:200], y[:200]), (x[200:250], y[200:250]),
               (x[250:], y[250:]), num_outputs=2)
    reg = Task("reg", "regression", (x[:200], x[:200, 0, :1]), (x[200:], x[200:, 0, :1]))
    lazy = Task("lazy", "binary", (_Lazy(x[:200]), y[:200].float()),
                (_Lazy(x[200:]), y[200:].float()))  # no test: scored on val
    floors = floors_mod.reference_floors([clf, reg, lazy], lazy_limit=50)
    assert set(floors) == {"clf", "lazy"}
    expected = float((y[250:] == 0).float().mean())
    assert floors["clf"]["majority"] == pytest.approx(expected)
    assert floors["clf"]["logistic"] > floors["clf"]["majority"]
    assert floors["clf"]["split"] == "test" and "note" not in floors["clf"]
    assert floors["lazy"]["split"] == "val" and floors["lazy"]["train_examples"] == 50
    assert "train subsampled to 50 of 200 examples" in floors["lazy"]["note"]
    assert floors == floors_mod.reference_floors([clf, reg, lazy], lazy_limit=50)  # fixed seeds


def test_per_seed_runs_and_floors_of_a_sweep(tmp_path):
    out = tmp_path / "run"
    run_experiment("random-tasks", methods=["parallel"], seeds=1, out_dir=out,
                   overrides={k: v for k, v in TINY.items() if k != "n"},
                   sweep=("n", (8, 16)), progress=False, plots=False, log=_quiet)
    folder = ExperimentFolder(out)
    runs = report_mod.per_seed_runs(folder)
    assert [(r["value"], r["method"], r["seed"]) for r in runs] == [
        (8, "parallel", 0), (16, "parallel", 0)]
    floors = report_mod.write_floors(folder, log=_quiet)
    assert [p["value"] for p in floors["points"]] == [8, 16]
    rows = report_mod.floors_entry(folder.read_floors())
    assert [(r["key"], r["value"], r["seeds"]) for r in rows] == [("n", 8, 1), ("n", 16, 1)]
    assert {r["split"] for r in rows} == {"test"}
    line = report_mod._provenance_lines({"floors": rows})[0]
    assert line.startswith("Reference floors on the same splits: n=8: majority class ")
    assert "(test accuracy, mean over tasks" in line
    val_rows = [{**r, "split": "val"} for r in rows]  # tasks without a test split
    assert "(validation accuracy, mean over tasks" in \
        report_mod._provenance_lines({"floors": val_rows})[0]
    folder.clear()  # --restart: the floors go with the runs
    assert folder.read_floors() is None


def test_floors_are_scored_once_per_distinct_data(tmp_path, monkeypatch):
    """Seeds whose tasks hold the same data (the UCI split is fixed across seeds) share one
    scoring of each task; the floors equal those scored seed by seed."""
    pytest.importorskip("sklearn")
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "no-data"))
    out = tmp_path / "uci"
    run_experiment("uci", seeds=2, steps=2, out_dir=out, progress=False, plots=False,
                   log=_quiet, overrides=["tasks=iris,wine", "width=8", "eval_every=2"])
    scored = []
    original = floors_mod._task_floors
    monkeypatch.setattr(floors_mod, "_task_floors",
                        lambda task, *a: scored.append(task.name) or original(task, *a))
    floors = report_mod.write_floors(ExperimentFolder(out), log=_quiet)
    assert scored == ["iris", "wine"]  # not once per seed
    by_seed = floors["points"][0]["seeds"]
    assert list(by_seed) == ["0", "1"] and by_seed["0"] == by_seed["1"]
    from flexmtl.experiments import get_experiment

    exp = get_experiment("uci")
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert by_seed["1"] == floors_mod.reference_floors(exp.build_tasks(cfg, 1))
