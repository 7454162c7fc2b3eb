"""``flexmtl reproduce --only`` and ``--report-only`` never drop results they did not
regenerate: a study with no finished run under ``--out`` keeps its entry (and figures) from
the previous ``reproduction.json``, and a full result is not replaced by a quick one.

The studies are fakes over hand-written ``results.json`` files: nothing is trained.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from flexmtl import run_folder
from flexmtl.cli import main
from flexmtl.errors import CorruptFileError
from flexmtl.reproduction import studies as st
from flexmtl.reproduction.report import write_report
from flexmtl.run_folder import ExperimentFolder, ReproductionReport

KEYS = ("fake-a", "fake-b")


def _assess(run: st.StudyRun) -> st.Assessment:
    acc = run.results["acc"]
    return st.Assessment(ours=[f"| accuracy | {acc} |"], reason=f"accuracy {acc}",
                         verdict=st.REPRODUCED if acc > 0.5 else st.NOT_REPRODUCED,
                         numbers={"accuracy": acc})


def _figure(run: st.StudyRun, dest: Path) -> list[Path]:
    path = dest / "fig.png"
    path.write_text(f"{run.mode} {run.results['acc']}")
    return [path]


def _study(key: str, claim: str = "fits") -> st.Study:
    return st.Study(key=key, paper=st.SOFT_ORDERING, figure=f"Fig. {key}", claim=claim,
                    published="it fits", experiment="random-tasks", full=st.Protocol(2),
                    quick=st.Protocol(1, note="tiny"), assess=_assess, figures=_figure)


def _catalogue(monkeypatch, *studies: st.Study) -> None:
    monkeypatch.setattr(st.STUDIES, "_entries", {s.key: s for s in studies})
    monkeypatch.setattr(st, "_ORDER", [s.key for s in studies])


@pytest.fixture(autouse=True)
def catalogue(tmp_path, monkeypatch):
    """Two fake studies and one whose data is absent; run in tmp_path."""
    monkeypatch.chdir(tmp_path)
    missing = st.Study(key="fake-missing", paper=st.GUMBEL_MATRIX, figure="Table X",
                       claim="needs absent data", published="x", experiment="omniglot",
                       full=st.Protocol(10), needs=("omniglot",), assess=_assess)
    _catalogue(monkeypatch, *(_study(k) for k in KEYS), missing)
    monkeypatch.setenv("FLEXMTL_DATA", "/nonexistent-flexmtl-data")


def _finish(out: str, mode: str, key: str, acc: float) -> None:
    """A finished run of study ``key``: its results.json."""
    ExperimentFolder(Path(out, mode, key)).write_results(
        {"acc": acc, "seeds": [0, 1], "data": {"t": "generated tasks"}})


def _quiet(_msg: str) -> None:
    pass


def _first_report(mode: str = "quick") -> None:
    _finish("runs1", mode, "fake-a", 0.9)
    _finish("runs1", mode, "fake-b", 0.8)
    write_report("runs1", "REPRODUCTION.md", log=_quiet)


def _entries() -> dict[str, dict]:
    data = json.loads(ReproductionReport().data.read_text())
    return {e["key"]: e for e in data["studies"]}


def _figure_text(key: str) -> str:
    return (ReproductionReport().study_figures(key) / "fig.png").read_text()


def test_report_only_keeps_every_study_without_runs(capsys):
    _first_report()
    before = _entries()
    capsys.readouterr()
    assert main(["reproduce", "--report-only", "--out", "elsewhere"]) == 0
    log = capsys.readouterr().out
    after = _entries()
    for key in KEYS:
        assert f"{key}: kept from the report of " in log
        kept = after[key]
        assert kept["status"] == "run" and kept["numbers"] == before[key]["numbers"]
        assert kept["verdict"] == before[key]["verdict"] and kept["figures"] == \
            before[key]["figures"]
        assert set(kept["kept"]) == {"generated", "machine"}
    assert _figure_text("fake-a") == "quick 0.9" and _figure_text("fake-b") == "quick 0.8"
    text = Path("REPRODUCTION.md").read_text()
    assert text.count("*Kept from the report of") == 2
    assert "| accuracy | 0.8 |" in text and "**Verdict: reproduced.** accuracy 0.8." in text


def test_only_rerun_replaces_its_study_and_keeps_the_others():
    _first_report()
    _finish("runs2", "quick", "fake-a", 0.3)
    report = write_report("runs2", "REPRODUCTION.md", log=_quiet)
    entries = {e["key"]: e for e in report["studies"]}
    assert entries == _entries()  # what is returned is what was written
    assert entries["fake-a"]["numbers"] == {"accuracy": 0.3} and "kept" not in entries["fake-a"]
    assert entries["fake-a"]["verdict"] == st.NOT_REPRODUCED
    assert entries["fake-b"]["numbers"] == {"accuracy": 0.8} and "kept" in entries["fake-b"]
    assert _figure_text("fake-a") == "quick 0.3" and _figure_text("fake-b") == "quick 0.8"
    text = Path("REPRODUCTION.md").read_text()
    assert "| accuracy | 0.3 |" in text and "| accuracy | 0.8 |" in text


def test_reproduce_only_through_the_command_line(monkeypatch, capsys):
    _first_report()
    ran = []

    def fake_run(name, out_dir, **_kwargs):  # "trains" by writing the results
        ran.append(Path(out_dir).name)
        _finish(str(Path(out_dir).parent.parent), "quick", Path(out_dir).name, 0.7)
        return {}

    monkeypatch.setattr("flexmtl.runner.run_experiment", fake_run)
    assert main(["reproduce", "--quick", "--only", "fake-a", "--out", "runs2",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert ran == ["fake-a"]
    entries = _entries()
    assert entries["fake-a"]["numbers"] == {"accuracy": 0.7}
    assert entries["fake-a"]["run_dir"] == str(Path("runs2", "quick", "fake-a"))
    assert entries["fake-b"]["numbers"] == {"accuracy": 0.8}
    assert entries["fake-b"]["run_dir"] == str(Path("runs1", "quick", "fake-b"))


def test_a_kept_full_result_beats_a_new_quick_one():
    _first_report("full")
    _finish("runs2", "quick", "fake-a", 0.2)
    logged: list[str] = []
    write_report("runs2", "REPRODUCTION.md", log=logged.append)
    entry = _entries()["fake-a"]
    assert (entry["mode"], entry["numbers"]) == ("full", {"accuracy": 0.9})
    assert _figure_text("fake-a") == "full 0.9"  # its figures are not redrawn from the quick
    assert any(m.startswith("fake-a: kept") and "no full finished run under runs2" in m
               for m in logged)


def test_a_new_full_result_replaces_a_kept_quick_one():
    _first_report("quick")
    _finish("runs2", "full", "fake-a", 0.6)
    write_report("runs2", "REPRODUCTION.md", log=_quiet)
    entry = _entries()["fake-a"]
    assert (entry["mode"], entry["numbers"]) == ("full", {"accuracy": 0.6})
    assert "kept" not in entry and _figure_text("fake-a") == "full 0.6"


def test_a_new_quick_result_replaces_a_previous_quick_one():
    _first_report("quick")
    _finish("runs2", "quick", "fake-b", 0.1)
    write_report("runs2", "REPRODUCTION.md", log=_quiet)
    assert _entries()["fake-b"]["numbers"] == {"accuracy": 0.1}


def test_a_kept_entry_takes_the_catalogues_current_text(monkeypatch):
    _first_report()
    _catalogue(monkeypatch, _study("fake-a", claim="fits better"), _study("fake-b"))
    write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
    entry = _entries()["fake-a"]
    assert entry["claim"] == "fits better" and entry["numbers"] == {"accuracy": 0.9}
    assert "fits better" in Path("REPRODUCTION.md").read_text()


def test_an_entry_kept_twice_keeps_its_first_date():
    _first_report()
    data = json.loads(ReproductionReport().data.read_text())
    data["generated"], data["machine"] = "2020-01-01", "an old machine"
    ReproductionReport().data.write_text(json.dumps(data))
    for _ in range(2):
        write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
        assert _entries()["fake-a"]["kept"] == {"generated": "2020-01-01",
                                                "machine": "an old machine"}
    assert "*Kept from the report of 2020-01-01 (an old machine)" in \
        Path("REPRODUCTION.md").read_text()


def test_kept_figures_that_are_gone_are_left_out():
    _first_report()
    (ReproductionReport().study_figures("fake-a") / "fig.png").unlink()
    write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
    assert _entries()["fake-a"]["figures"] == []
    assert _entries()["fake-b"]["figures"] == [str(Path("docs", "reproduction", "fake-b",
                                                         "fig.png"))]


def test_studies_never_run_are_not_invented():
    _first_report()
    write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
    entry = _entries()["fake-missing"]
    assert entry["status"] == "not run here" and "kept" not in entry


def test_a_study_gone_from_the_catalogue_is_not_kept(monkeypatch):
    _first_report()
    _catalogue(monkeypatch, _study("fake-a"))
    write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
    assert list(_entries()) == ["fake-a"]


def test_a_corrupt_previous_report_stops_before_writing(capsys):
    _first_report()
    ReproductionReport().data.write_text('{"studies": [')
    doc = Path("REPRODUCTION.md").read_text()
    assert main(["reproduce", "--report-only", "--out", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flexmtl: error: {ReproductionReport().data} is truncated or "
                          "corrupt") and "Traceback" not in err
    assert Path("REPRODUCTION.md").read_text() == doc


def test_a_report_whose_data_is_gone_is_not_overwritten(capsys):
    # the data deleted (as the message for a corrupt one once said): a report written now
    # would lose the results of every study not rerun
    _first_report()
    ReproductionReport().data.unlink()
    doc = Path("REPRODUCTION.md").read_text()
    assert main(["reproduce", "--report-only", "--out", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert f"its data {ReproductionReport().data} is missing" in err and "git checkout" in err
    assert Path("REPRODUCTION.md").read_text() == doc
    Path("REPRODUCTION.md").unlink()  # the other way out: a new report
    assert main(["reproduce", "--report-only", "--out", "elsewhere"]) == 0


def test_previous_data_that_is_not_a_report():
    _first_report()
    ReproductionReport().data.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="is not a report's data") as info:
        write_report("elsewhere", "REPRODUCTION.md", log=_quiet)
    assert info.value.path == ReproductionReport().data


def test_a_full_disk_while_writing_the_report_keeps_the_previous_one(monkeypatch, capsys):
    _first_report()
    files = ReproductionReport()
    before = (files.doc.read_text(), files.data.read_text())
    _finish("runs2", "quick", "fake-a", 0.1)

    def full(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.os, "fsync", full)
    assert main(["reproduce", "--report-only", "--out", "runs2"]) == 1
    assert capsys.readouterr().err == \
        "flexmtl: error: REPRODUCTION.md: No space left on device\n"
    assert (files.doc.read_text(), files.data.read_text()) == before
