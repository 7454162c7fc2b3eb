"""Run the reproduction studies (resumable) and write ``REPRODUCTION.md`` with its figures.

Run folders: ``OUT/full/KEY`` (the paper's protocol) and ``OUT/quick/KEY`` (``--quick``), one
per study that runs an experiment; the runner skips every (method, seed, sweep value) that has
finished, so an interrupted reproduction picks up where it stopped. The report is written from
whatever has finished: for each study the full run when it is complete, else the quick one.
A study with no finished run under ``OUT`` (run elsewhere, or its runs deleted) keeps what the
previous report (``reproduction.json``) said of it, so a partial run loses nothing.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexmtl.data import data_status
from flexmtl.errors import CorruptFileError, FlexMTLError, UnknownNameError
from flexmtl.experiments import EXPERIMENTS
from flexmtl.reproduction.studies import (
    NOT_RUN,
    RULE,
    STUDIES,
    Study,
    StudyRun,
    all_studies,
    data_notes,
    not_run,
)
from flexmtl.run_folder import ReproductionReport, read_json

MODES = ("full", "quick")


def select(only: Sequence[str] | None) -> list[Study]:
    """Studies named by key or by experiment (``None``: all), in catalogue order."""
    studies = all_studies()
    if not only:
        return studies
    chosen = []
    for name in only:
        hits = [s for s in studies if name in (s.key, s.experiment)]
        if not hits:
            names = [s.key for s in studies] + sorted({s.experiment for s in studies})
            raise UnknownNameError("reproduction study or experiment", name, names)
        chosen += hits
    keys = {s.key for s in chosen}
    return [s for s in studies if s.key in keys]


def missing_data(study: Study, root=None) -> list[str]:
    """The data sources a study needs that are not present."""
    status = {row["name"]: row for row in data_status(root)}
    return [n for n in study.needs if not (n in status and status[n]["present"])]


def unavailable(study: Study) -> str | None:
    """Why a study cannot run here (missing data, unregistered experiment), or None."""
    if study.experiment not in EXPERIMENTS.names():
        return f"experiment {study.experiment!r} is not available in this installation"
    missing = missing_data(study)
    if missing:
        return f"needs {', '.join(missing)} (see `flexmtl data`)"
    return None


def reproduce(
    only: Sequence[str] | None = None,
    quick: bool = False,
    out: str | Path = "runs/reproduce",
    doc: str | Path = ReproductionReport.DOC,
    progress: bool = True,
    log: Callable[[str], None] = print,
    runtime: Mapping[str, Any] | None = None,
    restart: bool = False,
) -> dict:
    """Run the selected studies in ``full`` or ``quick`` mode, then write the report.

    ``restart``: delete the runs of each selected study (of this mode) first and redo them
    (:func:`~flexmtl.runner.run_experiment`'s ``restart``); otherwise they resume.

    ``runtime``: config keys that say how to run, not what (``device``, ``compile``), added to
    every study's overrides; a run folder resumes across them.

    Returns the report's data (also written next to the figures as ``reproduction.json``).
    A study that fails is recorded and the others still run; the error is raised at the end.
    """
    from flexmtl.runner import run_experiment

    mode = "quick" if quick else "full"
    out = Path(out)
    studies = select(only)
    runners = {s.runs_with or s.key for s in studies}
    failed: dict[str, str] = {}
    for study in [s for s in all_studies() if s.key in runners]:
        protocol = study.quick if quick else study.full
        if protocol is None:
            protocol = study.full
        why = unavailable(study)
        if why or protocol is None:
            log(f"{study.key} ({study.figure}): not run here: {why or 'no protocol'}")
            continue
        log(f"\n== {study.key}: {study.paper}, {study.figure} ({mode}) ==")
        try:
            run_experiment(study.experiment, methods=protocol.methods, seeds=protocol.seeds,
                           out_dir=ReproductionReport.study_folder(out, mode, study.key).path,
                           overrides={**protocol.overrides, **(runtime or {})},
                           sweep=protocol.sweep or None, progress=progress, plots=True,
                           log=log, restart=restart)
        except FlexMTLError as exc:
            failed[study.key] = str(exc)
            log(f"{study.key}: failed: {exc}")
    report = write_report(out, doc, log=log)
    if failed:
        raise FlexMTLError("some studies failed: " + "; ".join(f"{k}: {v}"
                                                                for k, v in failed.items()))
    return report


def finished_run(out: Path, study: Study) -> StudyRun | None:
    """The study's finished run: the full one when complete, else the quick one."""
    key = study.runs_with or study.key
    for mode in MODES:
        folder = ReproductionReport.study_folder(out, mode, key)
        results = folder.read_results()
        if results is not None:
            return StudyRun(folder.path, results, mode)
    return None


def write_report(out: str | Path = "runs/reproduce", doc: str | Path = ReproductionReport.DOC,
                 log: Callable[[str], None] = print) -> dict:
    """Write ``doc`` and its figures (``<doc folder>/docs/reproduction/``) from the finished
    runs under ``out``; return the report's data.

    A study whose results the previous report holds keeps them (entry and figures) when
    ``out`` has no finished run of it, or only a quick one where they came from a full run.
    """
    out, doc = Path(out), Path(doc)
    files = ReproductionReport(doc)
    previous = _previous_results(files)
    entries = []
    for study in all_studies():
        entry: dict[str, Any] = {"key": study.key, "paper": study.paper, "figure": study.figure,
                 "claim": study.claim, "published": study.published,
                 "experiment": study.experiment, "remark": study.remark,
                 "ablation_of": study.ablation_of}
        protocol = study.full or (STUDIES.get(study.runs_with).full if study.runs_with else None)
        entry["command"] = (f"flexmtl reproduce --only {study.key}  # = "
                            + protocol.command(study.experiment)) if protocol else ""
        run = finished_run(out, study)
        kept = _kept(previous, study.key, run, doc)
        if kept is not None:  # its results, with the catalogue's current description
            log(f"{study.key}: kept from the report of {kept['kept']['generated']} (no "
                f"{'full ' if run is not None else ''}finished run under {out})")
            entries.append({**kept, **entry})
            continue
        why = unavailable(study)
        if run is None:
            entry["status"] = "not run here" if why else "not run yet"
            entry["why"] = why or f"no finished run under {out}"
            if study.needs:
                entry["how"] = ("With the data in place (`flexmtl data` says where" +
                                ("; a GPU in practice: add `--device cuda`" if study.gpu else "")
                                + "):")
            if study.fixture_test:
                entry["fixture_test"] = study.fixture_test
            entry["claims"] = [not_run(c).as_dict() for c in study.claims]
            entries.append(entry)
            continue
        source = STUDIES.get(study.runs_with) if study.runs_with else study
        used = source.full if run.mode == "full" else (source.quick or source.full)
        assessment = study.assess(run)
        judged = [r.claim.text for r in assessment.claims]
        if study.claims and judged != [c.text for c in study.claims]:
            raise FlexMTLError(f"{study.key}: assess judged {judged}, not the study's claims")
        figures = []
        if study.figures is not None:
            dest = files.study_figures(study.key)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True, exist_ok=True)
            figures = [os.path.relpath(p, doc.parent) for p in study.figures(run, dest)]
        entry.update(
            status="run", mode=run.mode, seeds=len(run.results.get("seeds") or []),
            protocol_note=used.note if used else "",
            run_command=used.command(study.experiment) if used else "",
            data=(study.data or data_notes)(run), ours=assessment.ours,
            verdict=assessment.verdict, reason=assessment.reason,
            claims=[r.as_dict() for r in assessment.claims],
            numbers=assessment.numbers, figures=figures,
            wall_seconds=run.results.get("wall_seconds"), run_dir=str(run.run_dir))
        entries.append(entry)
    report = {"generated": datetime.date.today().isoformat(), "machine": _machine(),
              "studies": entries}
    files.write(render(report), report)
    log(f"wrote {doc} and {files.figures}")
    return report


def _previous_results(files: ReproductionReport) -> dict[str, dict]:
    """The studies with results in the report already written (``reproduction.json``), by
    key; each knows when and where it was generated (``kept``)."""
    if not files.data.exists():
        return {}
    old = read_json(files.data)
    studies = old.get("studies") if isinstance(old, dict) else None
    if not isinstance(studies, list):
        raise CorruptFileError(files.data, f"{files.data} is not a report's data (no list of "
                               "studies); delete it to write the report afresh")
    origin = {"generated": old.get("generated"), "machine": old.get("machine")}
    return {e["key"]: {**e, "kept": e.get("kept") or origin} for e in studies
            if isinstance(e, dict) and e.get("status") == "run" and "key" in e}


def _kept(previous: dict[str, dict], key: str, run: StudyRun | None, doc: Path) -> dict | None:
    """The previous entry of study ``key`` when this report would lose it: ``run`` is None,
    or quick where the previous one was full; None otherwise. Figures that are gone are
    left out."""
    old = previous.get(key)
    if old is None or (run is not None and (run.mode == "full" or old.get("mode") != "full")):
        return None
    figures = [f for f in old.get("figures") or [] if (doc.parent / f).is_file()]
    return {**old, "figures": figures}


def _machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPU core(s), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


STATUS_MARK = {"holds": "holds", "fails": "**fails**", "trend": "trend (does not hold)",
               NOT_RUN: "not run"}


def render(report: dict) -> str:
    """The markdown of ``REPRODUCTION.md``: the rule once, a summary with one line per claim,
    then each study. Every number outside the Published parts, the protocols, the commands
    and the rules is taken from the report's data, which the runs produced."""
    entries = report["studies"]
    lines = [
        "# Reproduction of the two papers",
        "",
        f"Generated by `flexmtl reproduce` on {report['generated']} ({report['machine']}). Do "
        "not edit by hand: rerun `flexmtl reproduce` (paper protocols) or `flexmtl reproduce "
        "--quick` (stated smaller versions); finished runs are reused. Numbers under "
        "**Published** are quoted from the papers; every other measured number was produced "
        "by those runs. Intervals are 95% Student-t intervals over seeds.",
        "",
        f"**The verdict rule.** {RULE}",
        "",
        "## Summary",
        "",
        "| paper | figure | claim | judged | evidence | verdict | run | data |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        paper = e["paper"].split(" (")[0]
        figure = f"[{e['figure']}](#{e['key']})"
        if e["status"] == "run":
            run = f"{e['mode']}, {e['seeds']} seed(s)"
            verdict = f"**{e['verdict']}**"
            data = _short(e["data"])
        else:
            run, verdict, data = e["status"], "-", e["why"]
        claims = e.get("claims")
        if not claims:  # an entry kept from a report written before claims were judged
            lines.append(f"| {paper} | {figure} | {e['claim']} | - | {_cell(e.get('reason', ''))}"
                         f" | {verdict} (old rule) | {run} | {data} |")
            continue
        for i, c in enumerate(claims):
            first = i == 0
            lines.append(
                f"| {paper if first else ''} | {figure if first else ''} | "
                f"{'**main:** ' if c['main'] else ''}{_cell(c['text'])} | "
                f"{STATUS_MARK.get(c['status'], c['status'])} | {_cell(_short(c['evidence'], 160))}"
                f" | {verdict if first else ''} | {run if first else ''} | "
                f"{data if first else ''} |")
    for paper in dict.fromkeys(e["paper"] for e in entries):
        lines += ["", f"## {paper}"]
        for e in (e for e in entries if e["paper"] == paper):
            lines += _entry(e)
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _claims(e: dict) -> list[str]:
    claims = e.get("claims") or []
    if not claims:
        return []
    rows = ["| claim | judged | evidence (our runs) | test |", "|---|---|---|---|"]
    rows += [f"| {'**main:** ' if c['main'] else ''}{_cell(c['text'])} | "
             f"{STATUS_MARK.get(c['status'], c['status'])} | {_cell(c['evidence']) or '-'} | "
             f"{_cell(c['test'])} |" for c in claims]
    return ["**Claims.**", "", *rows, ""]


def _entry(e: dict) -> list[str]:
    lines = ["", f'<a id="{e["key"]}"></a>', "", f"### {e['figure']}: {e['claim']}", "",
             f"**Published.** {e['published']}", ""]
    if e.get("ablation_of"):
        lines += [f"*An ablation of [{e['ablation_of']}](#{e['ablation_of']}): it investigates "
                  "a disagreement with its own runs; its verdict says whether its own claims "
                  "hold.*", ""]
    if e["status"] != "run":
        lines += _claims(e)
        lines += [f"**{e['status'].capitalize()}:** {e['why']}.", ""]
        if e.get("command"):
            lines += [e.get("how") or "Run it with:", "", "```bash", e["command"], "```"]
        if e.get("fixture_test"):
            lines += ["", f"The pipeline (loader in the original file format, model, training, "
                          f"evaluation) runs end to end on small fixture files in "
                          f"`{e['fixture_test']}`."]
        return lines
    if e.get("kept"):
        lines += [f"*Kept from the report of {e['kept']['generated']} "
                  f"({e['kept']['machine']}); not regenerated from this report's runs.*", ""]
    lines += [f"**Ours** ({e['mode']} protocol, {e['seeds']} seed(s); "
              f"{e['protocol_note'] or 'as the paper'}):", "", *e["ours"], "",
              *_claims(e)]
    if e.get("claims"):
        lines += [f"**Verdict: {e['verdict']}** (on: {e['data']}).", ""]
    else:  # an entry written before claims were judged one by one
        lines += [f"**Data.** {e['data']}", "", f"**Verdict: {e['verdict']}.** {e['reason']}.",
                  ""]
    if e.get("remark"):
        lines += [f"**Note.** {e['remark']}", ""]
    lines += [f"Run: `{e['run_command']}` (paper protocol: `{e['command']}`)."
              if e["mode"] != "full" else f"Run: `{e['run_command']}`.", ""]
    lines += [f"![{e['figure']}]({path})" for path in e["figures"]]
    return lines
