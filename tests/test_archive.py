"""Moving runs between machines (flexmtl.use.archive, `flexmtl pack` / `flexmtl unpack`): a
study run in two sittings on two "machines" (folders), carried by an archive, ends with the
runs of one sitting in one folder; packing is deterministic; merging never loses a run; a
folder of another configuration, a damaged archive or a locked folder is refused."""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from study_helpers import (  # noqa: F401 (_isolate: autouse)
    _isolate,
    interrupted_at,
    quiet,
    run_results,
)

from flexmtl.cli import main
from flexmtl.errors import CorruptFileError, FlexMTLError, FolderLockedError, FolderMismatchError
from flexmtl.run_folder import FolderLock
from flexmtl.runner import run_experiment
from flexmtl.use import pack_runs, unpack_runs

#: 2 sweep values x 2 methods x 2 seeds of tiny runs
STUDY = dict(methods=["parallel", "soft"], seeds=2, steps=20,
             overrides={"n": 16, "m": 8, "eval_every": 5}, sweep=("n", [8, 16]),
             progress=False, plots=False, jobs=1, log=quiet)
HALF = "n=8/parallel/seed-1"


def stopped_at_step_12(monkeypatch, out: str) -> None:
    """Seed 0 of every run finished in ``out``, then HALF stopped at step 12 (its checkpoint:
    step 10)."""
    run_experiment("random-tasks", out_dir=out, **{**STUDY, "seeds": 1})

    interrupted_at(monkeypatch, 12, lambda: run_experiment(
        "random-tasks", out_dir=out, **{**STUDY, "methods": ["parallel"]}))
    assert Path(out, HALF, "last.pt").is_file() and not Path(out, HALF, "result.json").exists()


def test_a_study_in_two_sittings_on_two_machines_ends_as_in_one(monkeypatch):
    run_experiment("random-tasks", out_dir="ref", **STUDY)
    stopped_at_step_12(monkeypatch, "a")
    summary = pack_runs("a", "carry.tar.gz", log=quiet)
    assert summary.finished == ["n=16/parallel/seed-0", "n=16/soft/seed-0",
                                "n=8/parallel/seed-0", "n=8/soft/seed-0"]
    assert summary.unfinished == [HALF]

    unpacked = unpack_runs("carry.tar.gz", "b", log=quiet)
    assert (unpacked.finished, unpacked.unfinished) == (summary.finished, summary.unfinished)
    assert run_results(Path("b")) == run_results(Path("a"))  # the finished runs, as they were
    carried = {p: p.stat().st_mtime_ns for p in Path("b").rglob("result.json")}
    logged: list[str] = []
    run_experiment("random-tasks", out_dir="b", **{**STUDY, "log": logged.append})
    assert {p: p.stat().st_mtime_ns for p in carried} == carried  # reused, not retrained
    assert sum(": done before (test loss " in line for line in logged) == 4
    results, expected = run_results(Path("b")), run_results(Path("ref"))
    resumed = results.pop(HALF)
    assert (resumed["resumed_from"], resumed["steps"]) == (10, 20)  # from the carried last.pt
    assert resumed["test"]["loss"] == pytest.approx(expected.pop(HALF)["test"]["loss"],
                                                    rel=1e-6)
    assert results == expected
    assert not list(Path("b").rglob("run.lock"))


def test_packing_is_deterministic_and_finished_only_leaves_out_checkpoints(monkeypatch):
    stopped_at_step_12(monkeypatch, "a")
    pack_runs("a", "one.tar.gz", log=quiet)
    pack_runs("a", "two.tar.gz", log=quiet)
    assert Path("one.tar.gz").read_bytes() == Path("two.tar.gz").read_bytes()
    summary = pack_runs("a", "small.tar.gz", finished_only=True, log=quiet)
    assert summary.unfinished == [] and summary.left_out == [HALF]
    with tarfile.open("small.tar.gz") as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith(("last.pt", ".prev.pt", "run.lock"))]
    assert {"config.json", "archive.json", "n=8/soft/seed-0/result.json",
            "n=8/soft/seed-0/best.pt"} <= set(names)
    assert not [n for n in names if n.startswith(HALF)]
    with tarfile.open("one.tar.gz") as tar:
        assert f"{HALF}/last.pt" in tar.getnames()
        assert "results.json" not in tar.getnames()  # rewritten by the command, not carried


def test_finished_runs_can_travel_without_their_train_logs(monkeypatch):
    """``without_train_logs`` drops finished runs' per-step losses, which nothing reads once a
    run has finished: the carried study ends as in one sitting, summary and plots included."""
    run_experiment("random-tasks", out_dir="ref", **STUDY)
    stopped_at_step_12(monkeypatch, "a")
    full = pack_runs("a", "full.tar.gz", log=quiet)
    summary = pack_runs("a", "light.tar.gz", without_train_logs=True, log=quiet)
    assert (summary.finished, summary.unfinished) == (full.finished, full.unfinished)
    assert summary.logs_left_out == summary.finished
    assert Path("light.tar.gz").stat().st_size < Path("full.tar.gz").stat().st_size
    with tarfile.open("light.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"{rel}/train_log.csv" for rel in full.finished}.isdisjoint(names)
    assert f"{HALF}/train_log.csv" in names  # an unfinished run goes on appending to it
    assert {f"{rel}/{name}" for rel in full.finished
            for name in ("result.json", "eval_log.csv", "best.pt")} <= names

    unpack_runs("light.tar.gz", "b", log=quiet)
    run_experiment("random-tasks", out_dir="b", **{**STUDY, "plots": True})
    results, expected = run_results(Path("b")), run_results(Path("ref"))
    assert results.pop(HALF)["test"]["loss"] == pytest.approx(
        expected.pop(HALF)["test"]["loss"], rel=1e-6)
    assert results == expected
    summary_b = json.loads(Path("b", "results.json").read_text())
    assert set(summary_b) == set(json.loads(Path("ref", "results.json").read_text()))
    assert list(Path("b", "plots").glob("*.png"))  # drawn from the carried logs
    assert main(["pack", "b", "b.tar.gz", "--without-train-logs"]) == 0


def test_merging_keeps_every_run_and_prefers_finished_ones(monkeypatch):
    stopped_at_step_12(monkeypatch, "a")
    pack_runs("a", "half.tar.gz", log=quiet)
    run_experiment("random-tasks", out_dir="a", **STUDY)  # now every run of "a" is finished
    pack_runs("a", "done.tar.gz", log=quiet)
    finished = (Path("a") / HALF / "result.json").read_bytes()

    # the folder holds HALF unfinished: the archive's finished HALF replaces it
    unpack_runs("half.tar.gz", "b", log=quiet)
    assert Path("b", "results.json").exists() is False
    summary = unpack_runs("done.tar.gz", "b", log=quiet)
    assert HALF in summary.finished and "n=8/soft/seed-0" in summary.kept
    assert (Path("b") / HALF / "result.json").read_bytes() == finished
    assert not (Path("b") / HALF / "last.pt").exists()
    assert run_results(Path("b")) == run_results(Path("a"))

    # the folder holds HALF finished: the archive's unfinished HALF does not replace it
    summary = unpack_runs("half.tar.gz", "b", log=quiet)
    assert HALF in summary.kept and not summary.finished and not summary.unfinished
    assert (Path("b") / HALF / "result.json").read_bytes() == finished

    # two unfinished copies: the folder's is kept
    unpack_runs("half.tar.gz", "c", log=quiet)
    last = (Path("c") / HALF / "last.pt").read_bytes()
    kept = unpack_runs("half.tar.gz", "c", log=quiet).kept
    assert set(kept) == {HALF, *run_results(Path("c"))}
    assert (Path("c") / HALF / "last.pt").read_bytes() == last


def test_unpacking_merges_seeds_and_drops_the_stale_summary(monkeypatch):
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "seeds": 1})
    run_experiment("random-tasks", out_dir="b", **STUDY)
    b_results = run_results(Path("b"))
    # seeds 0-1 of "b" into a folder that holds seed 0: nothing retrained, summary dropped
    pack_runs("b", "b.tar.gz", log=quiet)
    assert Path("a", "results.json").exists()
    summary = unpack_runs("b.tar.gz", "a", log=quiet)
    assert len(summary.finished) == 4 and len(summary.kept) == 4
    assert not Path("a", "results.json").exists()
    assert json.loads(Path("a", "config.json").read_text())["seeds"] == [0, 1]
    logged: list[str] = []
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "log": logged.append})
    assert sum(": done before (test loss " in line for line in logged) == 8
    assert run_results(Path("a")) == b_results
    assert Path("a", "results.json").exists()


def test_a_folder_of_another_configuration_is_refused_with_nothing_written():
    run_experiment("random-tasks", out_dir="a", **STUDY)
    pack_runs("a", "a.tar.gz", log=quiet)
    other = {**STUDY, "overrides": {**STUDY["overrides"], "m": 4}}
    run_experiment("random-tasks", out_dir="b", **{**other, "seeds": 1})
    before = {p: p.read_bytes() for p in Path("b").rglob("*") if p.is_file()}
    with pytest.raises(FolderMismatchError, match=r"m: 4 -> 8"):
        unpack_runs("a.tar.gz", "b", log=quiet)
    assert {p: p.read_bytes() for p in Path("b").rglob("*") if p.is_file()} == before


def _tar(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


LISTING = b'{"format": "flexmtl-runs", "version": 1, "finished": %s, "unfinished": {}}'
MANIFEST = b'{"experiment": "random-tasks", "methods": ["soft"], "seeds": [0]}'


def _run_member(run: str) -> dict[str, bytes]:
    """An archive holding one finished run named ``run``."""
    return {"archive.json": LISTING % json.dumps([run]).encode(), "config.json": MANIFEST,
            f"{run}/result.json": b"{}"}


@pytest.mark.parametrize("content, message", [
    (b"not an archive", "not a tar file, gzipped or not"),
    (_tar({"config.json": MANIFEST}), "it has no archive.json"),
    (_tar({"archive.json": b'{"format": "zip"}', "config.json": MANIFEST}),
     "does not say format 'flexmtl-runs'"),
    (_tar({"archive.json": LISTING % b'"soft/seed-0"', "config.json": MANIFEST}),
     "does not list finished runs"),
    (_tar({"archive.json": LISTING % b"[]", "config.json": b'{"experiment": "random-tasks"}'}),
     "does not name the experiment, its methods and its seeds"),
    (_tar({"archive.json": LISTING % b"[]", "config.json": MANIFEST,
           "soft/seed-0/notes.txt": b""}), "unexpected member 'soft/seed-0/notes.txt'"),
    (_tar({"archive.json": LISTING % b'["soft/seed-0"]', "config.json": MANIFEST}),
     "listed as finished but has no result.json"),
    (_tar({"archive.json": LISTING % b"[]", "config.json": MANIFEST,
           "soft/seed-0/result.json": b"{}"}), "runs not listed once: soft/seed-0"),
    # names that would land elsewhere, or that no run of flexmtl has
    *[(_tar(_run_member(run)), "unexpected member") for run in (
        "../evil/seed-0", "soft/../../seed-0", "a\\..\\..\\evil/seed-0", "C:evil/seed-0",
        "k=..\\x/soft/seed-0", "soft./seed-0", "soft/seed-007", "soft/seed-\u0663",
        "soft/seed-0/seed-0", "seed-0", "k/soft/seed-0", "a=1/b=2/seed-0")],
])
def test_a_damaged_archive_is_refused_before_anything_is_written(content, message):
    Path("bad.tar.gz").write_bytes(content)
    with pytest.raises(CorruptFileError, match=re.escape(message)):
        unpack_runs("bad.tar.gz", "b", log=quiet)
    assert not Path("b").exists()


def test_a_link_in_an_archive_is_refused():
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("archive.json", LISTING % b"[]"), ("config.json", MANIFEST)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("soft/seed-0/result.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    Path("bad.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(CorruptFileError, match="is not a plain file"):
        unpack_runs("bad.tar.gz", "b", log=quiet)


def test_a_locked_folder_is_refused_and_a_folder_without_runs_is_named():
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "seeds": 1})
    with FolderLock("a"):
        with pytest.raises(FolderLockedError):
            pack_runs("a", "a.tar.gz", log=quiet)
    assert not Path("a.tar.gz").exists()
    Path("empty").mkdir()
    with pytest.raises(FlexMTLError, match="not a run folder of flexmtl"):
        pack_runs("empty", "e.tar.gz", log=quiet)


def test_cli_pack_and_unpack(capsys):
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "seeds": 1})
    assert main(["pack", "a", "a.tar.gz", "--finished-only"]) == 0
    assert "4 run(s) finished" in capsys.readouterr().out
    assert main(["unpack", "a.tar.gz", "b"]) == 0
    assert run_results(Path("b")) == run_results(Path("a"))
    assert main(["unpack", "missing.tar.gz", "c"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "flexmtl: error: archive missing.tar.gz does not exist"


def test_a_truncated_archive_is_refused():
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "seeds": 1})
    pack_runs("a", "a.tar.gz", log=quiet)
    whole = Path("a.tar.gz").read_bytes()
    Path("a.tar.gz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(CorruptFileError, match="a.tar.gz is not an archive of flexmtl runs"):
        unpack_runs("a.tar.gz", "b", log=quiet)
    assert not Path("b").exists()


def test_a_run_stopped_between_a_new_best_model_and_its_checkpoint_resumes_after_carrying(
        monkeypatch):
    """A checkpoint every 10 steps, evaluations every 2: stopped at step 17, last.pt (step 10)
    selected an older model than best.pt; packing settles that as a resume would."""
    study = {**STUDY, "methods": ["parallel"], "sweep": False, "seeds": 1,
             "overrides": {**STUDY["overrides"], "eval_every": 2, "checkpoint_every": 10}}
    run_experiment("random-tasks", out_dir="ref", **study)
    interrupted_at(monkeypatch, 17, lambda: run_experiment("random-tasks", out_dir="a", **study))
    run = Path("a/parallel/seed-0")
    assert (run / "best.prev.pt").is_file()  # the case: a new best model since the checkpoint
    summary = pack_runs("a", "carry.tar.gz", log=quiet)
    assert summary.unfinished == ["parallel/seed-0"] and not (run / "best.prev.pt").exists()
    unpack_runs("carry.tar.gz", "b", log=quiet)
    run_experiment("random-tasks", out_dir="b", **study)
    resumed, expected = run_results(Path("b")), run_results(Path("ref"))
    assert resumed["parallel/seed-0"]["resumed_from"] == 10
    assert resumed["parallel/seed-0"]["test"]["loss"] == pytest.approx(
        expected["parallel/seed-0"]["test"]["loss"], rel=1e-6)


def test_of_two_unfinished_copies_the_later_checkpoint_is_kept(monkeypatch):
    """Machine A stops at step 12 (checkpoint 10) and packs; machine B goes on to step 17
    (checkpoint 15) and packs; unpacking B's archive on A takes B's run, and A's on B keeps
    B's."""
    study = {**STUDY, "methods": ["parallel"], "sweep": False, "seeds": 1}
    interrupted_at(monkeypatch, 12, lambda: run_experiment("random-tasks", out_dir="a", **study))
    pack_runs("a", "a.tar.gz", log=quiet)
    unpack_runs("a.tar.gz", "b", log=quiet)
    interrupted_at(monkeypatch, 17, lambda: run_experiment("random-tasks", out_dir="b", **study))
    pack_runs("b", "b.tar.gz", log=quiet)
    with tarfile.open("b.tar.gz") as tar:
        handle = tar.extractfile("archive.json")
        assert handle is not None
        assert json.loads(handle.read())["unfinished"] == {"parallel/seed-0": {"step": 15}}
    last_b = Path("b/parallel/seed-0/last.pt").read_bytes()
    assert unpack_runs("b.tar.gz", "a", log=quiet).unfinished == ["parallel/seed-0"]
    assert Path("a/parallel/seed-0/last.pt").read_bytes() == last_b
    assert unpack_runs("a.tar.gz", "b", log=quiet).kept == ["parallel/seed-0"]
    assert Path("b/parallel/seed-0/last.pt").read_bytes() == last_b


def test_an_unpack_killed_midway_leaves_whole_runs_and_can_be_run_again(monkeypatch):
    import flexmtl.use.archive as archive

    run_experiment("random-tasks", out_dir="a", **STUDY)
    pack_runs("a", "a.tar.gz", log=quiet)
    real, calls = archive._swap_in, []

    def dies_in_the_third_run(*args):
        calls.append(args[1])
        if len(calls) == 3:
            real(*args)  # written and renamed into place, then the process dies
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(archive, "_swap_in", dies_in_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        unpack_runs("a.tar.gz", "b", log=quiet)
    monkeypatch.setattr(archive, "_swap_in", real)
    assert Path("b/config.json").is_file()  # written first: the folder stays usable
    assert len(run_results(Path("b"))) == 3 and not list(Path("b").rglob(".unpack-*"))
    summary = unpack_runs("a.tar.gz", "b", log=quiet)
    assert len(summary.kept) == 3 and len(summary.finished) == 5
    assert run_results(Path("b")) == run_results(Path("a"))


def test_a_folder_with_a_manifest_but_no_runs_takes_the_archives():
    run_experiment("random-tasks", out_dir="a", **{**STUDY, "seeds": 1})
    pack_runs("a", "a.tar.gz", log=quiet)
    Path("b").mkdir()
    other = json.loads(Path("a/config.json").read_text())
    other["config"]["m"] = 4
    Path("b/config.json").write_text(json.dumps(other))  # as a rerun into it would, accepted
    unpack_runs("a.tar.gz", "b", log=quiet)
    assert json.loads(Path("b/config.json").read_text()) == json.loads(
        Path("a/config.json").read_text())


def test_a_run_a_trainer_holds_is_not_replaced(monkeypatch):
    study = {**STUDY, "methods": ["parallel"], "sweep": False, "seeds": 1}
    run_experiment("random-tasks", out_dir="a", **study)
    pack_runs("a", "a.tar.gz", log=quiet)
    interrupted_at(monkeypatch, 2, lambda: run_experiment("random-tasks", out_dir="b", **study))
    with FolderLock("b/parallel/seed-0"):  # as a Trainer(out_dir=...) of its own holds it
        with pytest.raises(FolderLockedError):
            unpack_runs("a.tar.gz", "b", log=quiet)
    assert not Path("b/parallel/seed-0/result.json").exists()
