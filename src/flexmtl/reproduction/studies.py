"""The reproduction catalogue: one :class:`Study` per paper figure or table.

A study names the experiment that reproduces it, two protocols (``full``: the paper's, scaled
down only where its ``note`` says; ``quick``: a stated smaller version for a laptop), the
published result in words and numbers, the paper's claims about it (:class:`Claim`, the main
one marked) and an ``assess`` function that reads our finished runs and judges each claim
(:class:`ClaimResult`). The verdict is not chosen by a study: :func:`verdict` computes it from
the judged claims by the one rule :data:`RULE` (also the report's header).
"""

from __future__ import annotations

import csv
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flexmtl.analysis.stats import summarize
from flexmtl.errors import FlexMTLError
from flexmtl.registry import Registry
from flexmtl.run_folder import ExperimentFolder, TrainingRun

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
SOFT_ORDERING = "Soft layer ordering (Meyerson & Miikkulainen, ICLR 2018)"
GUMBEL_MATRIX = "Gumbel-Matrix (Maziarz et al.)"


@dataclass(frozen=True)
class Protocol:
    """How a study runs: seeds, config overrides, sweep and methods of its experiment."""

    seeds: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    sweep: tuple[str, tuple] | None = None
    methods: tuple[str, ...] | None = None
    note: str = ""  # what differs from the paper's protocol, said in the report

    def command(self, experiment: str) -> str:
        """The ``flexmtl run`` command line of this protocol."""
        parts = ["flexmtl", "run", experiment, "--seeds", str(self.seeds)]
        if self.methods:
            parts += ["--methods", ",".join(self.methods)]
        if self.sweep:
            parts += ["--sweep", f"{self.sweep[0]}=" + ",".join(str(v) for v in self.sweep[1])]
        else:
            parts.append("--no-sweep")
        parts += [f"{k}={_arg(v)}" for k, v in self.overrides.items()]
        return " ".join(parts)


def _arg(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


HOLDS, FAILS, TREND, NOT_RUN = "holds", "fails", "trend", "not run"
NOT_JUDGED = "not judged"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_JUDGED)
ALPHA = 0.05

#: the one verdict rule, stated once in the report's header
RULE = (
    "Each figure's claims are listed, the paper's main claim marked **main**, and each is "
    "judged on our runs: *holds*, *fails*, *trend* or *not run*. A comparison \"A better than "
    "B\" holds when the 95% Student-t interval of the per-seed difference A - B (seeds paired: "
    "the same seed builds the same data) excludes zero in the claimed direction; a difference "
    "of the claimed sign whose interval contains zero is a *trend*, and a trend does not hold. "
    "A claim about one measured quantity (\"above 0.9\", \"decreases\") holds when its 95% "
    "interval over seeds lies on the claimed side of the stated bound; \"about equal\" holds "
    "when the interval of the difference lies within the stated margin; \"at least as good "
    "as\" (ours, for library defaults) holds unless the interval of the difference excludes "
    "zero on the other side, and needs two seeds or more. A claim about a count "
    "(\"in most seeds\", \"all tasks of a cluster\") is judged by an exact one-sided binomial "
    "test: it holds when P(X >= k) for X ~ Binomial(n, p0) is below 0.05 (p0 stated with the "
    "claim). Verdicts: *reproduced* = every claim holds; *partly* = the main claim holds and "
    "some other claim does not (fails, is a trend, or was not run); *not reproduced* = the "
    "main claim fails or is only a trend; *not judged* = the main claim was not run. The data "
    "a study ran on is shown beside its verdict and never changes it."
)

PAIRED_TEST = "paired 95% t-interval of the per-seed difference"
COUNT_TEST = "exact one-sided binomial test, p0 = {p0:g}, alpha = 0.05"


@dataclass(frozen=True)
class Claim:
    """One claim the paper makes about a figure; ``main``: the figure's main claim.
    ``needs``: when the study's runs cannot judge it, the command that would run it (or why
    none can)."""

    text: str
    main: bool = False
    needs: str = ""


@dataclass(frozen=True)
class ClaimResult:
    """A claim judged on our runs: ``status`` (holds, fails, trend, not run), the
    ``evidence`` (numbers measured by the runs) and the ``test`` (which rule judged it)."""

    claim: Claim
    status: str
    evidence: str
    test: str

    def as_dict(self) -> dict:
        return {"text": self.claim.text, "main": self.claim.main, "status": self.status,
                "evidence": self.evidence, "test": self.test, "needs": self.claim.needs}


def verdict(results: Sequence[ClaimResult]) -> str:
    """The verdict of judged claims, by :data:`RULE`."""
    mains = [r for r in results if r.claim.main]
    if not mains:
        raise FlexMTLError("a study's claims must mark a main claim")
    if any(r.status == NOT_RUN for r in mains):
        return NOT_JUDGED
    if any(r.status != HOLDS for r in mains):
        return NOT_REPRODUCED
    return REPRODUCED if all(r.status == HOLDS for r in results) else PARTLY


def _direction(diff: dict, lower_is_better: bool) -> str:
    """holds / trend / fails of a difference whose claimed sign is < 0 (lower_is_better)
    or > 0."""
    good = diff["mean"] < 0 if lower_is_better else diff["mean"] > 0
    if not good:
        return FAILS
    return HOLDS if significant(diff) else TREND


def paired_claim(claim: Claim, name_a: str, a: dict, name_b: str, b: dict,
                 lower_is_better: bool, digits: int = 3, scale: float = 1.0,
                 where: str = "") -> ClaimResult:
    """``A better than B`` by the paired 95% interval of the per-seed difference."""
    diff = paired_difference(a, b)
    status = _direction(diff, lower_is_better)
    at = f"{where}: " if where else ""
    evidence = (f"{at}{name_a} {fmt(a, digits, scale)} vs {name_b} {fmt(b, digits, scale)}, "
                f"difference {fmt(diff, digits, scale)} ({diff['n']} seeds)")
    return ClaimResult(claim, status, evidence, PAIRED_TEST)


def noninferior_claim(claim: Claim, name_a: str, a: dict, name_b: str, b: dict, margin: float,
                      where: str = "") -> ClaimResult:
    """``A as good as B``: holds when the lower end of the paired 95% interval of the per-seed
    difference A - B lies above ``-margin``; otherwise it fails (no trend: the claim is that
    A loses at most ``margin``)."""
    diff = paired_difference(a, b)
    low = diff["mean"] - diff["ci95"]
    ok = not math.isnan(low) and low > -margin
    at = f"{where}: " if where else ""
    return ClaimResult(claim, HOLDS if ok else FAILS,
                       f"{at}{name_a} {fmt(a)} vs {name_b} {fmt(b)}, difference {fmt(diff)} "
                       f"({diff['n']} seeds)", f"{PAIRED_TEST} above -{margin}")


def not_worse_claim(claim: Claim, name_a: str, a: dict, name_b: str, b: dict,
                    lower_is_better: bool, digits: int = 3, where: str = "") -> ClaimResult:
    """``A at least as good as B``: holds unless the paired 95% interval of the per-seed
    difference lies wholly on B's side (a B ahead by chance alone does not fail it)."""
    diff = paired_difference(a, b)
    behind = diff["mean"] > 0 if lower_is_better else diff["mean"] < 0
    at = f"{where}: " if where else ""
    evidence = (f"{at}{name_a} {fmt(a, digits)} vs {name_b} {fmt(b, digits)}, difference "
                f"{fmt(diff, digits)} ({diff['n']} seeds)")
    if math.isnan(diff.get("ci95", math.nan)):  # one seed: no interval, nothing to judge on
        status = FAILS if behind else TREND
    else:
        status = FAILS if behind and significant(diff) else HOLDS
    return ClaimResult(claim, status, evidence,
                       f"{PAIRED_TEST}: fails only when it excludes zero on {name_b}'s side "
                       "(two seeds or more)")


def bound_claim(claim: Claim, name: str, values: Sequence[float], bound: float, above: bool,
                digits: int = 3, scale: float = 1.0) -> ClaimResult:
    """One measured quantity (per seed) on the claimed side of ``bound``: holds when its 95%
    interval lies there, a trend when only its mean does."""
    s = summarize(list(values))
    ci = s["ci95"]
    edge = s["mean"] - ci if above else s["mean"] + ci
    mean_ok = s["mean"] > bound if above else s["mean"] < bound
    edge_ok = not math.isnan(ci) and (edge > bound if above else edge < bound)
    status = HOLDS if edge_ok else TREND if mean_ok else FAILS
    evidence = f"{name} {fmt(s, digits, scale)} ({s['n']} seeds)"
    side = "above" if above else "below"
    return ClaimResult(claim, status, evidence,
                       f"95% t-interval over seeds {side} {bound * scale:g}")


def within_claim(claim: Claim, name: str, values: Sequence[float], target: float,
                 margin: float, digits: int = 3, scale: float = 1.0) -> ClaimResult:
    """One measured quantity about equal to ``target``: its 95% interval over seeds lies
    within ``target`` +- ``margin``."""
    s = summarize(list(values))
    ci = s["ci95"]
    inside = not math.isnan(ci) and abs(s["mean"] - target) + ci < margin
    return ClaimResult(claim, HOLDS if inside else FAILS, f"{name} {fmt(s, digits, scale)} "
                       f"({s['n']} seeds)", f"95% t-interval over seeds within "
                       f"{target * scale:g} ± {margin * scale:g}")


def margin_claim(claim: Claim, name_a: str, a: dict, name_b: str, b: dict, margin: float,
                 digits: int = 3, scale: float = 1.0) -> ClaimResult:
    """``A about equal to B``: the paired interval of A - B lies within +-``margin``."""
    diff = paired_difference(a, b)
    ci = diff["ci95"]
    inside = not math.isnan(ci) and abs(diff["mean"]) + ci < margin
    evidence = (f"{name_a} {fmt(a, digits, scale)} vs {name_b} {fmt(b, digits, scale)}, "
                f"difference {fmt(diff, digits, scale)} ({diff['n']} seeds)")
    return ClaimResult(claim, HOLDS if inside else FAILS, evidence,
                       f"{PAIRED_TEST} within ±{margin * scale:g}")


def binomial_tail(k: int, n: int, p0: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p0), exactly."""
    return sum(math.comb(n, i) * p0 ** i * (1 - p0) ** (n - i) for i in range(k, n + 1))


def count_claim(claim: Claim, k: int, n: int, what: str, p0: float = 0.5,
                alpha: float = ALPHA) -> ClaimResult:
    """``in most of n`` (more than a share ``p0``): exact one-sided binomial test."""
    p = binomial_tail(k, n, p0) if n else 1.0
    status = HOLDS if n and p < alpha else TREND if n and k > p0 * n else FAILS
    return ClaimResult(claim, status, f"{k} of {n} {what} (one-sided p = {p:.3g})",
                       COUNT_TEST.format(p0=p0))


def all_claim(claim: Claim, parts: Sequence[ClaimResult]) -> ClaimResult:
    """A claim that must hold at every point (size, task count, method): holds when every
    part holds; fails when any part fails; a trend otherwise."""
    if not parts:
        return not_run(claim, "the runs have no point to judge it on")
    statuses = {r.status for r in parts}
    status = FAILS if FAILS in statuses else HOLDS if statuses == {HOLDS} else TREND
    held = sum(r.status == HOLDS for r in parts)
    evidence = f"holds at {held} of {len(parts)}: " + "; ".join(
        f"{r.evidence} [{r.status}]" for r in parts)
    return ClaimResult(claim, status, evidence, parts[0].test + ", at every point")


def not_run(claim: Claim, why: str = "") -> ClaimResult:
    """A claim the study's runs cannot judge (``why``; the claim's ``needs`` says how to)."""
    how = (f"run `{claim.needs}`" if claim.needs.startswith("flexmtl ") else claim.needs)
    return ClaimResult(claim, NOT_RUN, "; ".join(x for x in (why, how) if x), "-")


@dataclass
class Assessment:
    """What our runs show: a markdown table (or lines), the judged claims and numbers. The
    verdict and its reason follow from ``claims`` (:func:`verdict`); an assessment without
    claims (a test's fake study) must give both."""

    ours: list[str]
    claims: list[ClaimResult] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    verdict: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.claims:
            self.verdict = verdict(self.claims)
            self.reason = "; ".join(f"{r.claim.text}: {r.status}" for r in self.claims)
        elif not self.verdict:
            raise FlexMTLError("an assessment needs judged claims")


@dataclass(frozen=True)
class StudyRun:
    """A finished run of a study's experiment: its folder, ``results.json`` and mode."""

    run_dir: Path
    results: dict
    mode: str


@dataclass(frozen=True)
class Study:
    """One figure or table of a paper and how we reproduce it.

    ``runs_with``: the key of another study whose runs this one analyses (e.g. Fig. 4b-d
    reads the two-task soft-ordering runs of Fig. 4a); such a study has no protocol of its own.
    ``needs``: data sources (``flexmtl data`` names) that must be present for it to run.
    ``claims``: the paper's claims about the figure, the main one marked; ``assess`` judges
    each of them, in this order. ``remark``: words shown with the verdict; it must not quote
    a number (every number of the report is measured by ``flexmtl reproduce``).
    ``ablation_of``: the key of the study whose disagreement this one investigates, with its
    own protocol and runs.
    """

    key: str
    paper: str
    figure: str
    claim: str
    published: str
    experiment: str
    assess: Callable[[StudyRun], Assessment]
    full: Protocol | None = None
    quick: Protocol | None = None
    figures: Callable[[StudyRun, Path], list[Path]] | None = None
    runs_with: str | None = None
    needs: tuple[str, ...] = ()
    gpu: bool = False
    claims: tuple[Claim, ...] = ()
    remark: str = ""
    ablation_of: str = ""
    data: Callable[[StudyRun], str] | None = None
    fixture_test: str = ""  # the test that runs the pipeline on fixture files, for absent data


STUDIES: Registry[Study] = Registry("reproduction study")
_ORDER: list[str] = []  # catalogue order: the report follows the papers


def register_study(study: Study) -> Study:
    STUDIES.register(study.key, study)
    _ORDER.append(study.key)
    return study


def all_studies() -> list[Study]:
    """Every study: the soft ordering paper first, each paper's figures in the order they
    were registered (the paper's order)."""
    studies = [STUDIES.get(k) for k in _ORDER]
    papers = [SOFT_ORDERING, GUMBEL_MATRIX]
    return sorted(studies, key=lambda s: papers.index(s.paper) if s.paper in papers else 2)


def get_study(key: str) -> Study:
    return STUDIES.get(key)


# ---------------------------------------------------------------------- reading results


def points(results: dict) -> list[tuple[Any, dict]]:
    """``[(sweep value or None, {method: entry})]`` of a ``results.json``."""
    sweep = results.get("sweep")
    if sweep:
        return [(p["value"], p["methods"]) for p in sweep["points"]]
    return [(None, results["methods"])]


def metric_or_none(methods: dict, method: str, key: str) -> dict | None:
    """The summary of ``key`` of ``method`` in a ``{method: entry}`` dict, or None if absent."""
    return ((methods.get(method) or {}).get("metrics") or {}).get(key)


def metric(methods: dict, method: str, key: str) -> dict:
    """The summary of ``key`` of ``method``; a run that lacks it stops with an error."""
    summary = metric_or_none(methods, method, key)
    if summary is None:
        raise FlexMTLError(f"the results have no {key!r} for method {method!r}")
    return summary


def fmt(summary: dict | None, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± ci95`` of a :func:`~flexmtl.analysis.stats.summarize` dict ("-" if none)."""
    if summary is None:
        return "-"
    mean = summary["mean"] * scale
    ci = summary.get("ci95", math.nan)
    if ci is None or math.isnan(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci * scale:.{digits}f}"


def paired_difference(a: dict, b: dict) -> dict:
    """Per-seed ``a - b`` summarised (mean, 95% CI); seeds are paired by position."""
    return summarize([x - y for x, y in zip(a["values"], b["values"])])


def significant(diff: dict) -> bool:
    """Whether the 95% interval of a difference excludes zero."""
    ci = diff.get("ci95", math.nan)
    return not math.isnan(ci) and abs(diff["mean"]) > ci


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def data_notes(run: StudyRun, limit: int = 8) -> str:
    """The data a run used: the distinct clauses of its tasks' notes (``results.json``), with
    per-task numbers (``copy 1``, ``all classes but 3``, ``image 7``) folded into ``i``."""
    notes = (run.results.get("data") or {}).values()
    parts = [re.sub(r"\b(copy|but|image) \d+\b", r"\1 i", part)
             for note in notes for part in note.split("; ")]
    parts = list(dict.fromkeys(p for p in parts if p))
    if not parts:
        return "-"
    shown = "; ".join(parts[:limit])
    return shown + (f"; and {len(parts) - limit} more (see {ExperimentFolder.RESULTS})"
                    if len(parts) > limit else "")


def snapshots(seed_dir: Path) -> list[tuple[int, np.ndarray]]:
    """``[(step, float64 array)]``: a run's soft-order scales or connection probabilities over
    training (:meth:`~flexmtl.run_folder.TrainingRun.sharing_snapshots`)."""
    return [(step, s.double().numpy()) for step, s in TrainingRun(seed_dir).sharing_snapshots()]


def copy_plots(*names: str) -> Callable[[StudyRun, Path], list[Path]]:
    """A ``figures`` function copying the run's own plots (``plots/NAME``) into the report."""

    def figures(run: StudyRun, dest: Path) -> list[Path]:
        out = []
        for name in names:
            src = ExperimentFolder(run.run_dir).plots / name
            if src.exists():
                shutil.copyfile(src, dest / name)
                out.append(dest / name)
        return out

    return figures


def seed_results(run: StudyRun, method: str,
                 point: tuple[str, Any] | None = None) -> list[dict]:
    """The ``result.json`` of each finished seed of ``method``, at the sweep value ``point``
    (``(key, value)``) if given."""
    folder = ExperimentFolder(run.run_dir).method_dir(method, point)
    return [TrainingRun(seed_dir).read_result() or {} for seed_dir in seed_dirs(folder)]


def sharing_summaries(run: StudyRun, method: str,
                      point: tuple[str, Any] | None = None) -> list[dict]:
    """What each finished seed of ``method`` learned about sharing (``result.json``'s
    ``sharing``: for an allocation core its probabilities, embeddings and layer sizes; for
    soft ordering its scales), at the sweep value ``point`` (``(key, value)``) if given."""
    return [r["sharing"] for r in seed_results(run, method, point)
            if isinstance(r.get("sharing"), dict)]


def task_accuracies(run: StudyRun, method: str,
                    point: tuple[str, Any] | None = None) -> list[dict[str, float]]:
    """Each finished seed's test accuracy per task of ``method`` (``result.json``), at the
    sweep value ``point`` if given; seeds that record none are left out."""
    out = []
    for result in seed_results(run, method, point):
        test = result.get("test")
        tasks = test.get("tasks") if isinstance(test, dict) else None
        acc = {name: float(v["accuracy"]) for name, v in (tasks or {}).items()
               if isinstance(v, dict) and isinstance(v.get("accuracy"), (int, float))}
        if acc:
            out.append(acc)
    return out


def eval_losses(seed_dir: Path) -> dict[int, float]:
    """``{step: combined validation loss}`` of a run's ``eval_log.csv`` (empty if none)."""
    try:
        with open(TrainingRun(seed_dir).eval_log, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    out = {}
    for row in rows:
        try:
            out[int(row["step"])] = float(row["loss"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def validation_curves(run: StudyRun, method: str,
                      point: tuple[str, Any] | None = None) -> dict[int, dict[int, float]]:
    """``{seed: {step: combined validation loss}}`` of the finished seeds of ``method`` (at
    the sweep value ``point`` if given) that have an evaluation log."""
    folder = ExperimentFolder(run.run_dir).method_dir(method, point)
    out = {}
    for seed_dir in seed_dirs(folder):
        seed, log = TrainingRun(seed_dir).seed, eval_losses(seed_dir)
        if seed is not None and log:
            out[seed] = log
    return out


def seed_dirs(folder: Path) -> list[Path]:
    """The finished runs (``seed-S`` folders) of a method folder, by seed."""
    return [run.path for run in ExperimentFolder.seed_runs(folder) if run.is_finished()]
