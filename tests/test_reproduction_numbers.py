"""Every number in ``REPRODUCTION.md`` is produced by the runs: none is typed into the source.

The whole catalogue is rendered twice from fake finished runs (``results.json`` and the
run-folder readers replaced), with different random values and seed counts. A number that
stays in place between the two reports was not measured; it must then be part of the text
the catalogue declares -- the papers' published results, the claims and the rules that judge
them, the protocols and their commands. Anything else that stays (a number typed into a
study's assessment or remark) fails the test; the last test checks that it does.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

import numpy as np
import pytest

from flexmtl.analysis.stats import summarize
from flexmtl.reproduction import gumbel_matrix as gm
from flexmtl.reproduction import report as report_mod
from flexmtl.reproduction import soft_ordering as so
from flexmtl.reproduction import studies as st
from flexmtl.run_folder import ReproductionReport

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")
WORD = re.compile(r"\S+")

LAYER_VIS = ["depth_trend", "primitive_similarity", "other_layer_similarity",
             "left_share_layer1", "left_share_digit", "decreasing_fraction",
             *(f"effect_depth{d}" for d in range(1, 5)),
             *(f"shape_change_depth{d}" for d in range(1, 5))]
METRICS = {  # what each experiment's results hold, per method
    "random-tasks": ["test_accuracy"],
    "mnist-pairs": ["test_accuracy"],
    "uci": ["val_loss", "test_accuracy"],
    "tabular": ["val_loss", "test_accuracy"],
    "planted-groups": ["test_loss", "group_ari", "within_group_similarity",
                       "across_group_similarity", "groups_separated", "active_connections",
                       "distinct_embeddings"],
    "planted-orders": ["test_loss", "order_match", "order_chance", "order_chance_p95",
                       "scale_max"],
    "layer-vis": LAYER_VIS,
    "synthetic-transfer": ["test_loss"],
    "synthetic-pairs": ["test_loss", "within_pair_similarity", "across_pair_similarity"],
    "four-mnists": ["test_accuracy", "active_connections"],
    "clusters": ["cluster_ari", "mnist_identical", "fashion_identical",
                 "digits8x8_identical", "active_connections"],
}
CLUSTER_TASKS = [f"{g}-{i}" for g in ("mnist", "fashion", "digits8x8") for i in range(10)]


def _fake_results(study: st.Study, rng: np.random.Generator, seeds: int) -> dict:
    protocol = study.full
    assert protocol is not None

    def methods() -> dict:
        out = {}
        for m in protocol.methods or ("soft",):
            metrics = {k: summarize(rng.uniform(0.05, 0.95, seeds))
                       for k in METRICS[study.experiment]}
            if study.experiment == "synthetic-pairs":
                metrics["pairs_recovered"] = summarize(rng.integers(0, 2, seeds))
            out[m] = {"metrics": metrics}
        return out

    results: dict = {"seeds": list(range(seeds)), "config": {},
                     "data": {t: "fake data" for t in CLUSTER_TASKS}
                     if study.experiment == "clusters" else {"task": "fake data"}}
    if protocol.sweep:
        key, values = protocol.sweep
        results["sweep"] = {"key": key, "primary": values[-1], "points": [
            {"value": v, "methods": methods()} for v in values]}
    else:
        results["methods"] = methods()
    return results


def _render(tmp_path: Path, monkeypatch, sentinel: int, seeds: int,
            change=None) -> tuple[str, dict]:
    """The report of the whole catalogue over fake runs drawn with ``sentinel``."""
    rng = np.random.default_rng(sentinel)
    seed_paths = [tmp_path / f"seed-{i}" for i in range(seeds)]
    rngs = {p: np.random.default_rng([sentinel, i]) for i, p in enumerate(seed_paths)}

    def snapshots(seed_dir: Path) -> list[tuple[int, np.ndarray]]:
        r = rngs[seed_dir]
        if seed_dir.name.startswith("seed-") and "gm" in str(seed_dir.parent.name):
            return [(s, r.uniform(0, 1, (4, 12))) for s in (0, 50, 100)]
        scales = r.uniform(0, 1, (3, 2, 4, 4))
        return [(s, x / x.sum(axis=1, keepdims=True)) for s, x in zip((0, 50, 100), scales)]

    def sharing(run: st.StudyRun, method: str, point=None) -> list[dict]:
        return [{"embeddings": rng.integers(0, 2, (4, 4)).tolist(),
                 "probabilities": rng.uniform(0, 1, (4, 12)).tolist(),
                 "layer_sizes": [4, 4, 4]} for _ in range(seeds)]

    gm_paths = [tmp_path / "gm" / f"seed-{i}" for i in range(seeds)]
    rngs.update({p: np.random.default_rng([sentinel, 100 + i]) for i, p in enumerate(gm_paths)})
    monkeypatch.setattr(so, "snapshots", snapshots)
    monkeypatch.setattr(so, "_two_task_soft_runs", lambda run: seed_paths)
    monkeypatch.setattr(gm, "snapshots", snapshots)
    monkeypatch.setattr(gm, "_gumbel_runs", lambda run: gm_paths)
    monkeypatch.setattr(gm, "sharing_summaries", sharing)
    # the Fig. 7 readings' seed folders: their allocation snapshots (above) and validation
    # curves, evaluated every `every` steps (drawn, as a run's config would set it)
    every = int(rng.integers(20, 200))

    def curves(run: st.StudyRun, method: str, point=None) -> dict[int, dict[int, float]]:
        return {i: {k * every: float(rngs[p].uniform(0, 10)) for k in range(1, 13)}
                for i, p in enumerate(gm_paths)}
    monkeypatch.setattr(gm, "validation_curves", curves)
    monkeypatch.setattr(gm, "seed_dirs", lambda folder: gm_paths)
    monkeypatch.setattr(so, "_layer_metrics", lambda run: ([
        {k: rng.uniform(-1, 1, seeds).tolist() for k in ("same", "other", "trend")}
        for _ in range(4)], ""))

    out = tmp_path / f"runs-{sentinel}"
    studies = [dataclasses.replace(s, figures=None) for s in st.all_studies()]
    if change is not None:
        studies = [change(s) for s in studies]
    monkeypatch.setattr(st.STUDIES, "_entries", {s.key: s for s in studies})
    monkeypatch.setattr(st, "_ORDER", [s.key for s in studies])
    for study in studies:
        if study.runs_with is None and report_mod.unavailable(study) is None:
            folder = ReproductionReport.study_folder(out, "full", study.key)
            results = _fake_results(study, rng, seeds)
            folder.write_results(results)
            # the reference floors (majority class, logistic regression) of its seeds
            sweep = results.get("sweep")
            values = [p["value"] for p in sweep["points"]] if sweep else [None]
            folder.write_floors({"protocol": "fake", "sweep_key": sweep and sweep["key"],
                                 "points": [{"value": v, "seeds": {
                                     str(i): {"task": {"majority": float(rng.uniform()),
                                                       "logistic": float(rng.uniform())}}
                                     for i in range(seeds)}} for v in values]})
    doc = tmp_path / f"REPRODUCTION-{sentinel}.md"
    report = report_mod.write_report(out, doc, log=lambda _msg: None)
    return doc.read_text(), report


def _declared(report: dict) -> set[str]:
    """The numbers of the text the catalogue declares: header and rule, and for each study
    its figure, claims, published result, protocols, commands and the tests that judge it."""
    texts = [st.RULE, st.SOFT_ORDERING, st.GUMBEL_MATRIX, report["generated"],
             report["machine"], report_mod.render(
        {"generated": "", "machine": "", "studies": []})]
    for e in report["studies"]:
        texts += [e["key"], e["figure"], e["claim"], e["published"], e.get("command", ""),
                  e.get("run_command", ""), e.get("protocol_note", ""), e.get("why", "")]
        texts += [c["text"] + " " + c["test"] + " " + c["needs"] for c in e.get("claims", [])]
    for study in st.all_studies():
        for protocol in (study.full, study.quick):
            if protocol is not None:
                texts += [protocol.note, protocol.command(study.experiment)]
    return {n for t in texts for n in NUMBER.findall(t)}


def unmeasured(a: str, others: list[str], declared: set[str]) -> list[str]:
    """Numbers of report ``a`` that stay in place in every other report and are not declared
    text. (Several others: two random draws can agree on a rounded number by chance.)"""
    wa = WORD.findall(a)
    staying = None
    for other in others:
        matcher = difflib.SequenceMatcher(None, wa, WORD.findall(other), autojunk=False)
        kept = {i for block in matcher.get_matching_blocks()
                for i in range(block.a, block.a + block.size)}
        staying = kept if staying is None else staying & kept
    return [n for i in sorted(staying or ()) for n in NUMBER.findall(wa[i])
            if n not in declared]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("FLEXMTL_DATA", "/nonexistent-flexmtl-data")


#: the fake draws (sentinel, seeds) of the reports compared: a rounded number (one decimal)
#: stays in place by chance in all of them far more rarely than in two or three
DRAWS = ((1, 3), (2, 5), (3, 4), (4, 6))


def _renders(tmp_path: Path, monkeypatch, change=None) -> tuple[list[str], set[str], dict]:
    """The reports of every draw of :data:`DRAWS`, the numbers their catalogue declares, and
    the first one's report data."""
    texts, declared, first = [], set(), None
    for sentinel, seeds in DRAWS:
        text, report = _render(tmp_path / str(sentinel), monkeypatch, sentinel, seeds, change)
        texts.append(text)
        declared |= _declared(report)
        first = first or report
    assert first is not None
    return texts, declared, first


def test_every_number_of_the_report_comes_from_the_runs(tmp_path, monkeypatch, offline):
    (a, *others), declared, report_a = _renders(tmp_path, monkeypatch)
    # the fakes reach every study that can run here, and every one is judged claim by claim
    run = [e for e in report_a["studies"] if e["status"] == "run"]
    assert len(run) >= 12 and all(e["claims"] for e in report_a["studies"])
    assert all(e["floors"] for e in run) and a.count("Reference floors on the same splits") \
        == len(run)
    assert all(e["verdict"] in st.VERDICTS for e in run)
    # the Fig. 7 readings' lines from the seeds' curves and snapshots are rendered (and checked)
    assert "Drop of the combined validation loss" in a and "most likely allocation" in a
    assert unmeasured(a, others, declared) == []
    # a study reading another's runs shares its per-seed file, never a copy
    entries = {e["key"]: e for e in report_a["studies"]}
    readers = [e for e in run if st.STUDIES.get(e["key"]).runs_with]
    assert readers and all(e["runs_file"] == entries[st.STUDIES.get(e["key"]).runs_with]
                           ["runs_file"] for e in readers)
    # the summary has one line per claim
    summary = a.split("## Summary")[1].split("\n## ")[0]
    claims = sum(len(e["claims"]) for e in report_a["studies"])
    assert summary.count("\n| ") == claims + 1  # and the header


@pytest.mark.parametrize("where", ["ours", "remark"])
def test_a_typed_number_is_caught(tmp_path, monkeypatch, offline, where):
    """The check above is real: a number typed into an assessment or a remark is found."""

    def typed(study: st.Study) -> st.Study:
        if study.key != "so-fig5b":
            return study
        if where == "remark":
            return dataclasses.replace(study, remark="Earlier runs reached 0.8047 accuracy.")

        def assess(run: st.StudyRun) -> st.Assessment:
            a = study.assess(run)
            a.ours.append("With dropout 0.2 the methods reach 0.8047.")
            return a

        return dataclasses.replace(study, assess=assess)

    (a, *others), declared, _ = _renders(tmp_path, monkeypatch, typed)
    assert unmeasured(a, others, declared) == ["0.8047"]
