"""Run the reproduction studies (resumable) and write ``REPRODUCTION.md`` with its figures.

Run folders: ``OUT/full/KEY`` (the paper's protocol) and ``OUT/quick/KEY`` (``--quick``), one
per study that runs an experiment; the runner skips every (method, seed, sweep value) that has
finished, so an interrupted reproduction picks up where it stopped. The report is written from
whatever has finished: for each study the full run when it is complete, else the quick one.
A study with no finished run under ``OUT`` (run elsewhere, or its runs deleted) keeps what the
previous report (``reproduction.json``) said of it, so a partial run loses nothing.

Provenance (:mod:`flexmtl.provenance`): a study whose finished runs ran other code (another
source hash, torch or numpy; or no provenance: an older flexmtl) is rerun from scratch, unless
``allow_stale``, which reuses them and marks the study ``stale`` in the report. The report data
says what it was generated from (``generated_from``); per study it writes
``docs/reproduction/KEY/runs.json`` (:func:`per_seed_runs`: every per-seed value and its
provenance), which :func:`check` compares with a rerun from scratch, and
``entry["floors"]``, the reference floors (:mod:`flexmtl.analysis.floors`) that
:func:`reproduce` computes once per sweep value and seed into the run folder's
``floors.json``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flexmtl import provenance
from flexmtl.analysis.stats import summarize
from flexmtl.data import data_status
from flexmtl.errors import CorruptFileError, FlexMTLError, UnknownNameError
from flexmtl.executors import Executor, check_executor
from flexmtl.experiments import EXPERIMENTS
from flexmtl.reproduction.studies import (
    NOT_RUN,
    RULE,
    STUDIES,
    Protocol,
    Study,
    StudyRun,
    all_studies,
    data_notes,
    fmt,
    not_run,
)
from flexmtl.run_folder import ExperimentFolder, ReproductionReport, read_json, write_json

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
    allow_stale: bool = False,
    floors: bool = True,
    jobs: int | None = None,
    executor: Executor = "local",
    address: str | None = None,
    batch_runs: bool = True,
) -> dict:
    """Run the selected studies in ``full`` or ``quick`` mode, then write the report.

    ``restart``: delete the runs of each selected study (of this mode) first and redo them
    (:func:`~flexmtl.runner.run_experiment`'s ``restart``); otherwise they resume, except a
    study with a finished run of other code (:func:`stale_runs`), which is restarted too
    unless ``allow_stale`` (then it is reused, and the report says it is stale).
    ``floors``: compute the reference floors of each study (:func:`write_floors`).

    ``runtime``: config keys that say how to run, not what (``device``, ``compile``), added to
    every study's overrides; a run folder resumes across them. ``jobs``, ``executor``,
    ``address`` and ``batch_runs``: where and how each study's runs train
    (:func:`~flexmtl.runner.run_experiment`).

    Returns the report's data (also written next to the figures as ``reproduction.json``).
    A study that fails is recorded and the others still run; the error is raised at the end.
    """
    from flexmtl.runner import run_experiment
    from flexmtl.training import distributed

    check_executor(executor, jobs, address,  # not a failure of every study, one by one
                   torchrun=distributed.launched_world_size() > 1)
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
        folder = ReproductionReport.study_folder(out, mode, study.key)
        fresh = restart
        stale = {} if restart else stale_runs(folder)
        if stale:
            what = (f"{len(stale)} finished run(s) in {folder.path} ran other code than now "
                    f"({'; '.join(dict.fromkeys(r for rs in stale.values() for r in rs))})")
            if allow_stale:
                log(f"{study.key}: --allow-stale: reusing them although {what}; the report "
                    "marks the study stale")
            else:
                log(f"{study.key}: {what}: rerunning the study from scratch (--allow-stale "
                    "reuses them)")
                fresh = True
        try:
            run_experiment(study.experiment, methods=protocol.methods, seeds=protocol.seeds,
                           out_dir=folder.path,
                           overrides={**protocol.overrides, **(runtime or {})},
                           sweep=protocol.sweep or None, progress=progress, plots=True,
                           log=log, restart=fresh, jobs=jobs, executor=executor,
                           address=address, batch_runs=batch_runs)
        except FlexMTLError as exc:
            failed[study.key] = str(exc)
            log(f"{study.key}: failed: {exc}")
            continue
        if floors and distributed.is_main():  # under torchrun: rank 0 alone
            write_floors(folder, log)
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


def in_progress(out: Path, study: Study) -> str:
    """Of a study whose runs have started but not all finished (no ``results.json`` yet):
    how many of its runs have, and where; '' when none has."""
    for mode in MODES:
        folder = ReproductionReport.study_folder(out, mode, study.runs_with or study.key)
        try:
            manifest = folder.read_manifest()
        except CorruptFileError:
            continue  # named by the command that reruns it
        if manifest is None:
            continue
        done = len(folder.finished_runs())
        if done:
            total = (len(_manifest_points(manifest)) * len(manifest["methods"])
                     * len(manifest["seeds"]))
            return (f"in progress: {done} of its {total} runs of the {mode} protocol have "
                    f"finished under {folder.path}; rerunning its command trains only the others")
    return ""


# ---------------------------------------------------------------------- provenance


def stale_runs(folder: ExperimentFolder,
               current: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """The finished runs of ``folder`` that ran other code than ``current`` (default: this
    process's, :func:`flexmtl.provenance.code_provenance`), by folder-relative path, with why
    (:func:`flexmtl.provenance.stale_reasons`). A run whose ``result.json`` cannot be read is
    left to the runner, which names it."""
    current = provenance.code_provenance() if current is None else current
    out = {}
    for _point, _method, run in folder.finished_runs():
        try:
            result = run.read_result()
        except CorruptFileError:
            continue
        reasons = provenance.stale_reasons((result or {}).get("provenance"), current)
        if reasons:
            out[run.path.relative_to(folder.path).as_posix()] = reasons
    return out


def _manifest_points(manifest: dict) -> list[tuple[Any, dict]]:
    """``[(sweep value or None, config)]`` of a run folder's manifest."""
    cfg = dict(manifest["config"])
    sweep = manifest.get("sweep")
    if not sweep:
        return [(None, cfg)]
    return [(value, {**cfg, sweep["key"]: value}) for value in sweep["values"]]


def write_floors(folder: ExperimentFolder, log: Callable[[str], None] = print,
                 seeds: Sequence[int] | None = None) -> dict | None:
    """Compute the reference floors (:func:`flexmtl.analysis.floors.reference_floors`) of
    every sweep value and seed (or those of ``seeds`` among them) of a finished study
    folder, on the tasks the runner built (``exp.build_tasks(cfg, seed)`` after
    ``seed_everything(seed)``), into its ``floors.json``; those already there are kept.
    None (said in ``log``) when they cannot be computed here (no manifest, scikit-learn
    missing)."""
    from flexmtl.analysis import floors as floors_mod
    from flexmtl.experiments import get_experiment
    from flexmtl.training import seed_everything

    manifest = folder.read_manifest()
    if manifest is None:
        return None
    try:
        import sklearn  # noqa: F401
    except ImportError:
        log("reference floors skipped: install scikit-learn (pip install 'flexmtl[data]')")
        return None
    exp = get_experiment(manifest["experiment"])
    scored: dict[tuple, dict] = {}  # a task's floors by its data: seeds and points share them
    old = folder.read_floors() or {}
    done = {(json.dumps(p.get("value")), str(seed)): tasks
            for p in old.get("points") or [] for seed, tasks in (p.get("seeds") or {}).items()}
    points = []
    for value, cfg in _manifest_points(manifest):
        by_seed = {}
        for seed in manifest["seeds"]:
            key = (json.dumps(value), str(seed))
            if key not in done and seeds is not None and seed not in seeds:
                continue
            if key not in done:
                seed_everything(seed)
                done[key] = _reference_floors(exp.build_tasks(cfg, seed), scored)
            by_seed[str(seed)] = done[key]
        points.append({"value": value, "seeds": by_seed})
    data = {"protocol": (f"majority class of the train split; sklearn LogisticRegression("
                         f"max_iter={floors_mod.MAX_ITER}, random_state={floors_mod.SEED}) on "
                         f"flattened inputs, train subsampled to at most "
                         f"{floors_mod.MAX_TRAIN} examples (seed {floors_mod.SEED}); test "
                         "accuracy (val where a task has no test split); classification "
                         "tasks only"),
            "sweep_key": (manifest.get("sweep") or {}).get("key"), "points": points}
    if data != old:
        folder.write_floors(data)
    return data


def _reference_floors(tasks: list, scored: dict[tuple, dict]) -> dict[str, dict]:
    """:func:`flexmtl.analysis.floors.reference_floors` of ``tasks``, each in-memory task's
    taken from ``scored`` when a task of the same data (kind and every split's bytes) was
    scored before, and added to it otherwise; tasks with inputs read from files are scored
    together, as they share their reads."""
    from flexmtl.analysis import floors as floors_mod
    from flexmtl.tasks import LazyInputs
    from flexmtl.training.fingerprint import data_digest

    if any(isinstance(s.x, LazyInputs) for t in tasks for s in (t.train, t.val, t.test)
           if s is not None):
        return floors_mod.reference_floors(tasks)
    out = {}
    for task in tasks:
        key = (task.kind, task.soft_targets, task.num_outputs,
               *((None,) if s is None else (data_digest(s.x), data_digest(s.y))
                 for s in (task.train, task.val, task.test)))
        if key not in scored:
            scored[key] = floors_mod.reference_floors([task]).get(task.name, {})
        if scored[key]:
            out[task.name] = scored[key]
    return out


def floors_entry(floors: dict | None) -> list[dict]:
    """The report's ``floors``: per sweep value, mean ± 95% CI over seeds of the mean over
    tasks of the majority-class and the logistic-regression accuracy (empty: none)."""
    from flexmtl.analysis.floors import mean_over_tasks

    out = []
    for point in (floors or {}).get("points") or []:
        seeds = point.get("seeds") or {}
        row: dict[str, Any] = {"key": (floors or {}).get("sweep_key"),
                               "value": point.get("value"), "seeds": len(seeds)}
        for key in ("majority", "logistic"):
            values = [mean_over_tasks(tasks, key) for tasks in seeds.values()]
            values = [v for v in values if not math.isnan(v)]
            if values:
                row[key] = summarize(values)
        notes = sorted({t["note"] for tasks in seeds.values() for t in tasks.values()
                        if "note" in t})
        if notes:
            row["notes"] = notes
        splits = {t.get("split", "test") for tasks in seeds.values() for t in tasks.values()
                  if "majority" in t}
        row["split"] = splits.pop() if len(splits) == 1 else "test or val"
        if "majority" in row:
            out.append(row)
    return out


#: the per-seed values of ``runs.json`` that :func:`check` compares
RUN_VALUES = ("test", "val", "tasks", "analysis", "best_step", "steps")


def _split_values(split: Any) -> Any:
    if not isinstance(split, dict):
        return split
    return {k: v for k, v in split.items() if k in ("loss", "accuracy")}


def _run_values(result: dict) -> dict[str, Any]:
    test = result.get("test") or {}
    return {"test": _split_values(test), "val": _split_values(result.get("val")),
            "tasks": test.get("tasks"), "analysis": result.get("analysis") or {},
            "best_step": result.get("best_step"), "steps": result.get("steps")}


def per_seed_runs(folder: ExperimentFolder) -> list[dict]:
    """Every finished run of a study folder: ``{"value", "method", "seed", "values":
    {test/val loss and accuracy, per-task test metrics, analysis values, best_step, steps},
    "provenance"}`` (no histories), by sweep value, method and seed."""
    manifest = folder.read_manifest() or {}
    sweep = manifest.get("sweep")
    values = {str(folder.point(sweep["key"], v)): v for v in sweep["values"]} if sweep else {}
    out = []
    for point, method, run in folder.finished_runs():
        if point != folder.path and str(point) not in values:
            continue  # a sweep value that is not this study's
        result = run.read_result() or {}
        out.append({"value": values.get(str(point)), "method": method, "seed": run.seed,
                    "values": _run_values(result), "provenance": result.get("provenance")})
    order = list(values.values())  # the sweep's order, not the folders' (n=16 < n=8)
    return sorted(out, key=lambda r: order.index(r["value"]) if r["value"] in order else -1)


def _runs_file(key: str, experiment: str, run: StudyRun) -> dict:
    return {"study": key, "experiment": experiment, "mode": run.mode,
            "runs": per_seed_runs(ExperimentFolder(run.run_dir))}


def _stale_entry(runs: list[dict], current: Mapping[str, Any]) -> dict | None:
    """``entry["stale"]`` of a study whose runs ran other code than ``current``, or None."""
    stale = [r for r in runs if provenance.stale_reasons(r.get("provenance"), current)]
    if not stale:
        return None
    ran_on = provenance.distinct(r.get("provenance") for r in stale)
    reasons = list(dict.fromkeys(x for r in stale
                                 for x in provenance.stale_reasons(r.get("provenance"), current)))
    return {"runs": len(stale), "of": len(runs), "ran_on": ran_on, "reasons": reasons,
            "text": f"stale: run on {' and '.join(ran_on)}, code has changed since"}


def generated_from() -> dict[str, Any]:
    """The report data's ``generated_from``: the commit, dirtiness and source hash of the code
    writing the report (:func:`flexmtl.provenance.code_provenance`)."""
    code = provenance.code_provenance()
    return {k: code[k] for k in ("flexmtl", "commit", "dirty", "source_hash")}


def _same(a: Any, b: Any) -> bool:
    """Exact equality of JSON values (NaN equal to NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _differences(path: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for k in dict.fromkeys([*a, *b])
                for line in _differences(f"{path}.{k}", a.get(k, "(none)"),
                                         b.get(k, "(none)"))]
    if _same(a, b):
        return []
    return [f"{path}: committed {json.dumps(a)}, rerun {json.dumps(b)}"]


def compare_runs(committed: Sequence[dict], rerun: Sequence[dict]) -> list[str]:
    """Every per-seed value that differs between two ``runs.json`` run lists, exactly (one
    line each), and the runs only one of them holds."""
    def key(r: dict) -> tuple[str, str, Any]:
        return (json.dumps(r.get("value")), str(r.get("method")), r.get("seed"))

    def name(k: tuple[str, str, Any]) -> str:
        value = json.loads(k[0])
        return (f"{'' if value is None else f'value {value}, '}{k[1]} seed {k[2]}")

    old = {key(r): r for r in committed}
    new = {key(r): r for r in rerun}
    lines = []
    for k in dict.fromkeys([*old, *new]):
        if k not in new:
            lines.append(f"{name(k)}: committed, but not rerun by this protocol")
        elif k not in old:
            lines.append(f"{name(k)}: rerun, but not in the committed runs")
        else:
            lines += [f"{name(k)}: {d}" for d in
                      _differences("", old[k].get("values"), new[k].get("values"))]
    return lines


def check(key: str, quick: bool = False, doc: str | Path = ReproductionReport.DOC,
          runtime: Mapping[str, Any] | None = None, progress: bool = True,
          log: Callable[[str], None] = print, keep: str | Path | None = None) -> list[str]:
    """Rerun study ``key`` (``quick``: its quick protocol) from scratch into a temporary
    folder (``keep``: into this one, kept) and compare every per-seed value with the
    committed ``docs/reproduction/KEY/runs.json`` beside ``doc``, exactly. Returns the
    mismatches (each said in ``log``); empty when bit-identical."""
    from flexmtl.runner import run_experiment

    study = STUDIES.get(key)
    files = ReproductionReport(doc)
    path = files.study_runs(study.runs_with or study.key)
    if not path.is_file():
        raise FlexMTLError(f"{path} does not exist: run `flexmtl reproduce --only {key}` "
                           "first, to write the per-seed values to check")
    committed = read_json(path)
    if not isinstance(committed, dict) or not isinstance(committed.get("runs"), list):
        raise CorruptFileError(path, f"{path} is not a study's per-seed runs (no list of runs)")
    mode = "quick" if quick else "full"
    if committed.get("mode") not in (None, mode):
        raise FlexMTLError(f"{path} holds the runs of the {committed['mode']} protocol; check "
                           "it " + ("with" if committed["mode"] == "quick" else "without")
                           + " --quick")
    source = STUDIES.get(study.runs_with) if study.runs_with else study
    protocol: Protocol | None = (source.quick or source.full) if quick else source.full
    if protocol is None:
        raise FlexMTLError(f"study {key!r} has no protocol to rerun")
    current = provenance.code_provenance()
    changed = {provenance.describe(r.get("provenance")) for r in committed["runs"]
               if provenance.stale_reasons(r.get("provenance"), current)}
    if changed:
        log(f"note: the committed runs ran other code ({', '.join(sorted(changed))}) than now "
            f"({provenance.describe(current)}): differences may come from that")
    tmp = None if keep is not None else tempfile.mkdtemp(prefix=f"flexmtl-check-{key}-")
    out = Path(keep) if keep is not None else Path(tmp or ".")
    try:
        run_experiment(source.experiment, methods=protocol.methods, seeds=protocol.seeds,
                       out_dir=out, overrides={**protocol.overrides, **(runtime or {})},
                       sweep=protocol.sweep or None, progress=progress, plots=False, log=log,
                       restart=True, jobs=1)  # one run after the other, in this process
        mismatches = compare_runs(committed["runs"], per_seed_runs(ExperimentFolder(out)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(committed["runs"])
    if mismatches:
        log(f"{key}: {len(mismatches)} mismatch(es) with {path}:")
        for line in mismatches:
            log(f"  {line}")
    else:
        log(f"{key}: all {n} committed run(s) reproduced exactly ({path})")
    return mismatches


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
    current = provenance.code_provenance()
    runs_files: dict[str, dict] = {}
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
            entry["why"] = why or in_progress(out, study) or f"no finished run under {out}"
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
        judged = [r.claim for r in assessment.claims]
        if study.claims and judged != list(study.claims):  # the text, and how to run each
            raise FlexMTLError(f"{study.key}: assess judged {[c.text for c in judged]} "
                               f"(needs: {[c.needs for c in judged]}), not the study's claims")
        figures = []
        if study.figures is not None:
            dest = files.study_figures(study.key)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True, exist_ok=True)
            figures = [os.path.relpath(p, doc.parent) for p in study.figures(run, dest)]
        owner = study.runs_with or study.key  # a study reading another's runs shares its file
        runs = _runs_file(owner, study.experiment, run)
        runs_files[owner] = runs  # written with the report, into the figures' folder
        if owner != study.key:  # a copy an older flexmtl wrote
            files.study_runs(study.key).unlink(missing_ok=True)
        stale = _stale_entry(runs["runs"], current)
        if stale is not None:
            entry["stale"] = stale
        entry.update(
            floors=floors_entry(ExperimentFolder(run.run_dir).read_floors()),
            runs_file=os.path.relpath(files.study_runs(owner), doc.parent))
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
              "generated_from": generated_from(), "studies": entries}
    files.write(render(report), report)
    for key, runs in runs_files.items():
        write_json(files.study_runs(key), runs)
    log(f"wrote {doc} and {files.figures}")
    return report


def _previous_results(files: ReproductionReport) -> dict[str, dict]:
    """The studies with results in the report already written (``reproduction.json``), by
    key; each knows when and where it was generated (``kept``)."""
    if not files.data.exists():
        if files.doc.exists() and re.search(r"\*\*Verdict: ", files.doc.read_text(
                encoding="utf-8", errors="replace")):
            # the report's results would be lost for every study not rerun now
            raise CorruptFileError(files.data, (
                f"{files.doc} reports results but its data {files.data} is missing, so the "
                "studies not rerun now would lose theirs; restore it (git checkout -- "
                f"{files.data}), or delete {files.doc} to write a new report"))
        return {}
    old = read_json(files.data)
    studies = old.get("studies") if isinstance(old, dict) else None
    if not isinstance(studies, list):
        raise CorruptFileError(files.data, f"{files.data} is not a report's data (no list of "
                               f"studies); restore it (git checkout -- {files.data}), or "
                               f"delete it and {files.doc} to write a new report")
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
        f"Generated by `flexmtl reproduce` on {report['generated']} ({report['machine']})"
        f"{_generated_from(report.get('generated_from'))}. Do not edit by hand: rerun "
        "`flexmtl reproduce` (paper protocols) or `flexmtl reproduce --quick` (stated smaller "
        "versions); finished runs of the same code are reused, others are rerun (or, with "
        "`--allow-stale`, reused and marked stale). Per-seed values of every run are in "
        "`docs/reproduction/STUDY/runs.json`. Numbers under "
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
    lines += _provenance_lines(e)  # reference floors and staleness (flexmtl.provenance)
    lines += [f"Run: `{e['run_command']}` (paper protocol: `{e['command']}`)."
              if e["mode"] != "full" else f"Run: `{e['run_command']}`.", ""]
    lines += [f"![{e['figure']}]({path})" for path in e["figures"]]
    return lines


# ------------------------------------------------- provenance rendering (separate helper)


def _generated_from(code: dict | None) -> str:
    """`` from commit C (with uncommitted changes), source S`` of ``generated_from``."""
    if not code:
        return ""
    commit = code.get("commit")
    where = (f" from commit {commit[:12]}" + (" with uncommitted changes" if code.get("dirty")
                                               else "")) if commit else " outside git"
    return f"{where}, source hash {str(code.get('source_hash', ''))[:12]}"


def _provenance_lines(e: dict) -> list[str]:
    """The lines a run study's section gets from its provenance data: the stale mark
    (``entry["stale"]``) and the reference floors (``entry["floors"]``), one line each."""
    lines = []
    if e.get("stale"):
        lines += [f"**{e['stale']['text'].capitalize()}** ({e['stale']['runs']} of "
                  f"{e['stale']['of']} runs: {'; '.join(e['stale']['reasons'])}).", ""]
    floors = e.get("floors") or []
    if floors:
        def one(row: dict) -> str:
            point = ("" if row.get("value") is None else
                     f"{row.get('key') or 'at'}={row['value']}: ")
            return (f"{point}majority class {fmt(row.get('majority'))}, logistic regression "
                    f"{fmt(row.get('logistic'))}")
        notes = sorted({n for row in floors for n in row.get("notes") or []})
        splits = sorted({row.get("split", "test") for row in floors})
        split = ("validation" if splits == ["val"] else splits[0] if len(splits) == 1
                 else "test or validation")
        lines += ["Reference floors on the same splits: " + "; ".join(one(r) for r in floors)
                  + f" ({split} accuracy, mean over tasks" + (f"; {'; '.join(notes)}" if notes
                                                              else "") + ").", ""]
    return lines
