"""The reproduction catalogue: one :class:`Study` per paper figure or table.

A study names the experiment that reproduces it, two protocols (``full``: the paper's, scaled
down only where its ``note`` says; ``quick``: a stated smaller version for a laptop), the
published result in words and numbers, and an ``assess`` function that reads our finished
runs and returns what we measured and a verdict:

* ``reproduced`` -- every claim of the figure holds in our runs (and on the paper's data);
* ``partly`` -- some claims hold, or all hold but only on stand-in data;
* ``not reproduced`` -- the paper's main claim does not hold in our runs.

Significance: "A beats B" means the 95% t-interval of the per-seed difference A - B (seeds
paired: the same seed builds the same data) excludes zero; a same-sign mean difference whose
interval contains zero is reported as a trend.
"""

from __future__ import annotations

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


@dataclass
class Assessment:
    """What our runs show: a markdown table (or lines), the verdict and why, and numbers."""

    ours: list[str]
    verdict: str
    reason: str
    numbers: dict = field(default_factory=dict)


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
    ``investigation``: what we found when looking into a disagreement (written by us, from
    measurements; it is shown with the verdict).
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
    investigation: str = ""
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


def compare(name_a: str, a: dict, name_b: str, b: dict, lower_is_better: bool,
            digits: int = 3, scale: float = 1.0) -> tuple[int, str]:
    """+1 if a is significantly better than b, -1 if significantly worse, 0 otherwise; and
    a sentence that says so with the paired difference."""
    diff = paired_difference(a, b)
    better = diff["mean"] < 0 if lower_is_better else diff["mean"] > 0
    sig = significant(diff)
    word = ("better than" if better else "worse than") if sig else (
        "a trend better than" if better else "a trend worse than")
    if diff["mean"] == 0:
        word = "equal to"
    text = f"{name_a} {word} {name_b} (difference {fmt(diff, digits, scale)})"
    return (1 if better else -1) if sig else 0, text


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


def seed_dirs(folder: Path) -> list[Path]:
    """The finished runs (``seed-S`` folders) of a method folder, by seed."""
    return [run.path for run in ExperimentFolder.seed_runs(folder) if run.is_finished()]


def verdict_of(claims: Sequence[bool]) -> str:
    if all(claims):
        return REPRODUCED
    return PARTLY if any(claims) else NOT_REPRODUCED


def capped(verdict: str, exact_data: bool) -> str:
    """A full reproduction needs the paper's data: on stand-ins it is at most ``partly``."""
    return PARTLY if verdict == REPRODUCED and not exact_data else verdict
