"""The run folder (flexmtl.run_folder): atomic writes, clear errors on torn files, the
documented layout."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch

import flexmtl.run_folder as rf
from flexmtl.errors import CorruptFileError
from flexmtl.run_folder import (
    CsvLog,
    ExperimentFolder,
    PlotNames,
    ReproductionReport,
    TrainingRun,
    atomic_write,
    read_json,
    truncate_csv,
    write_json,
)
from flexmtl.runner import run_experiment

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_KW = dict(methods=["parallel"], seeds=1, steps=4, overrides={"n": 8, "m": 4},
              sweep=None, progress=False, plots=False, log=lambda _: None)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------- atomic writes


def test_a_write_failing_midway_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"test": 1})

    def torn(f):
        f.write(b'{"test": 2, "tr')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, torn)
    assert read_json(path) == {"test": 1}
    assert leftovers(tmp_path) == []
    with pytest.raises(TypeError):  # not serialisable: nothing written
        TrainingRun(tmp_path).write_result({"test": object()})
    assert read_json(path) == {"test": 1}


def test_a_checkpoint_write_failing_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    run = TrainingRun(tmp_path)
    run.save_last({"step": 5})

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(rf.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        run.save_last({"step": 10})
    monkeypatch.undo()
    assert run.read_last() == {"step": 5}
    assert leftovers(tmp_path) == []


def test_json_files_are_replaced_atomically_with_plain_permissions(tmp_path, monkeypatch):
    folder = ExperimentFolder(tmp_path / "run")
    folder.write_manifest({"experiment": "uci"})
    (tmp_path / "plain").write_text("x")
    assert folder.manifest.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(rf.os, "replace", lambda a, b: (replaced.append(Path(b)),
                                                        real_replace(a, b)))
    folder.write_results({"methods": {}})
    assert replaced == [folder.results]
    assert json.loads(folder.results.read_text()) == {"methods": {}}


def test_truncating_a_log_on_resume_rewrites_it_atomically(tmp_path, monkeypatch):
    log = CsvLog(tmp_path / "train_log.csv")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 0.5})
    log.close()
    with open(tmp_path / "train_log.csv", "a") as f:
        f.write("4,0.")  # a row torn by a kill
    before = (tmp_path / "train_log.csv").read_text()

    def fail(*_args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(rf.os, "replace", fail)
    with pytest.raises(OSError):
        truncate_csv(tmp_path / "train_log.csv", 2)
    assert (tmp_path / "train_log.csv").read_text() == before
    monkeypatch.undo()
    truncate_csv(tmp_path / "train_log.csv", 2)
    with open(tmp_path / "train_log.csv", newline="") as f:
        assert list(csv.reader(f)) == [["step", "loss"], ["1", "0.5"], ["2", "0.5"]]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------- torn files


@pytest.mark.parametrize("name", ["result.json", "config.json", "results.json"])
def test_a_truncated_json_file_names_itself_and_what_to_do(tmp_path, name):
    run, folder = TrainingRun(tmp_path), ExperimentFolder(tmp_path)
    read = {"result.json": run.read_result, "config.json": folder.read_manifest,
            "results.json": folder.read_results}[name]
    assert read() is None  # not there yet
    (tmp_path / name).write_text('{"method": "soft", "se')
    with pytest.raises(CorruptFileError, match="truncated or corrupt") as err:
        read()
    assert str(tmp_path / name) in str(err.value) and "delete" in str(err.value)
    assert err.value.path == tmp_path / name
    (tmp_path / name).write_text("[1, 2]")  # valid JSON, but not what flexmtl writes
    with pytest.raises(CorruptFileError, match="not an object"):
        read()


@pytest.mark.parametrize("size", [0, 10, 200])
def test_a_truncated_checkpoint_names_itself_and_what_to_do(tmp_path, size):
    run = TrainingRun(tmp_path)
    run.save_last({"step": 3, "model": {"w": torch.zeros(50)}})
    run.last.write_bytes(run.last.read_bytes()[:size])
    with pytest.raises(CorruptFileError, match="last.pt is truncated or corrupt") as err:
        run.read_last()
    assert str(run.last) in str(err.value) and "restart that run" in str(err.value)


def test_the_runner_stops_on_a_torn_result_or_manifest_with_the_file_named(tmp_path):
    out = tmp_path / "run"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    run = ExperimentFolder(out).run("parallel", 0)
    good = run.result.read_text()
    run.result.write_text(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match=re.escape(str(run.result))):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)
    run.result.write_text(good)
    manifest = ExperimentFolder(out).manifest
    manifest.write_text(manifest.read_text()[:20])
    with pytest.raises(CorruptFileError, match=re.escape(str(manifest))):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)


def test_the_runner_stops_on_a_torn_last_checkpoint_with_the_file_named(tmp_path):
    out = tmp_path / "run"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    run = ExperimentFolder(out).run("parallel", 0)
    run.result.unlink()  # an unfinished run: it resumes from last.pt
    run.last.write_bytes(run.last.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=re.escape(str(run.last))):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)
    run.last.unlink()  # what the message says to do: the run is redone
    results = run_experiment("random-tasks", out_dir=out, **RUN_KW)
    assert run.is_finished() and results["methods"]["parallel"]["seeds"] == [0]


def test_snapshots_of_a_torn_sharing_file_fall_back_to_last(tmp_path):
    run = TrainingRun(tmp_path)
    assert run.sharing_snapshots() == []
    run.save_last({"sharing": [(0, torch.ones(2, 3))]})
    run.sharing.write_bytes(b"torn")
    snaps = run.sharing_snapshots()
    assert [step for step, _ in snaps] == [0] and snaps[0][1].shape == (2, 3)


# ---------------------------------------------------------------------- layout


def test_the_names_are_the_documented_layout():
    text = README.read_text()
    paragraph = text[text.index("A run folder holds"):text.index("```json", text.index(
        "A run folder holds"))]
    documented = set(re.findall(r"`([\w.]+\.(?:json|csv|pt))`", paragraph))
    assert documented == {ExperimentFolder.MANIFEST, ExperimentFolder.RESULTS,
                          TrainingRun.TRAIN_LOG, TrainingRun.EVAL_LOG, TrainingRun.LAST,
                          TrainingRun.LAST_PREV, TrainingRun.BEST, TrainingRun.SHARING,
                          TrainingRun.FINGERPRINT, TrainingRun.RESULT}
    assert f"Plots (`{ExperimentFolder.PLOTS}/`)" in text
    assert f"[{ReproductionReport.DOC}]({ReproductionReport.DOC})" in text
    figures = ReproductionReport(ReproductionReport.DOC).figures.as_posix()
    assert f"]({figures}/so-fig5b/{PlotNames.LEARNING_CURVES})" in text
    assert f"]({figures}/gm-fig5-6/{PlotNames.similarity('gumbel-budget')})" in text
    assert f"`{PlotNames.layer_sweep(0)}`" in text.replace(f"{ExperimentFolder.PLOTS}/", "")


def test_experiment_folder_paths():
    folder = ExperimentFolder("out")
    assert folder.run("soft", 2).path == Path("out/soft/seed-2")
    assert folder.run("soft", 2, ("n", 8)).path == Path("out/n=8/soft/seed-2")
    assert folder.run("soft", 2).seed == 2 and TrainingRun("out/soft").seed is None
    assert folder.run("soft", 0).result == Path("out/soft/seed-0/result.json")
    assert folder.plots / PlotNames.soft_order("soft") == Path("out/plots/soft_order.png")
    assert PlotNames.soft_order("parallel") == "soft_order_parallel.png"


def test_seed_runs_are_ordered_by_seed_and_has_runs_needs_a_checkpoint_or_result(tmp_path):
    folder = ExperimentFolder(tmp_path)
    for seed in (10, 2, 0):
        folder.run("soft", seed).path.mkdir(parents=True)
    (tmp_path / "soft" / "seed-x").mkdir()
    (tmp_path / "plots").mkdir()
    assert list(ExperimentFolder.method_dirs(tmp_path)) == ["soft"]
    runs = ExperimentFolder.seed_runs(tmp_path / "soft")
    assert [r.path.name for r in runs] == ["seed-0", "seed-2", "seed-10", "seed-x"]
    assert not folder.has_runs()
    folder.run("soft", 2).save_last({"step": 1})
    assert folder.has_runs()
