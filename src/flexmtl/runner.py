"""Run an experiment: every method x seed (x sweep value), resumable, summarised over seeds.

Run folder layout (owned by :class:`flexmtl.run_folder.ExperimentFolder`)::

    OUT/config.json                 resolved config, methods, seeds, sweep
    OUT/[KEY=VALUE/]METHOD/seed-S/  one training run (logs, checkpoints, result.json)
    OUT/results.json                mean and 95% CI per method (and per sweep value)
    OUT/plots/*.png                 learning curves, learned orders, scale trajectories

A finished (sweep value, method, seed) has a ``result.json`` and is not redone; an
unfinished one resumes from its ``last.pt`` (when its ``fingerprint.json`` matches; see
:class:`~flexmtl.training.Trainer`). A folder holding runs of another configuration, runs
without a ``config.json`` or another experiment's ``results.json`` is refused
(:class:`~flexmtl.errors.FolderMismatchError`, listing what differs) unless ``restart``
deletes them first; every file a run resumes from is checked before anything trains.
The command holds ``OUT/run.lock`` (:class:`~flexmtl.run_folder.FolderLock`) from start to
end, so that a second command on the same folder is refused.

The unfinished runs train in this process, one after the other, or on an executor
(:mod:`flexmtl.executors`: ``jobs`` worker processes, or a Ray cluster), each by
:func:`train_run`; finished runs are reused here either way, and the results are gathered
and summarised in the same order, so they do not depend on where the runs trained.

Under ``torchrun`` every process runs the same loop and trains each run data-parallel;
rank 0 alone reads and writes the run folder and prints, and every rank returns the
same results.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from flexmtl import provenance
from flexmtl.analysis.stats import format_mean_ci, summarize
from flexmtl.errors import ConfigError, FolderMismatchError, UnknownNameError
from flexmtl.executors import Call, Executor, check_executor, run_calls, worker_count
from flexmtl.experiments import EXPERIMENTS, get_experiment
from flexmtl.experiments.base import Experiment, check_config, coerce, parse_overrides
from flexmtl.run_folder import ExperimentFolder, FolderLock, TrainingRun, remove_torn_writes
from flexmtl.sharing import find_cores
from flexmtl.training import Trainer, distributed, seed_everything
from flexmtl.training.fingerprint import fingerprint_diff, run_fingerprint

RESULTS_VERSION = 1
#: config keys that say how to run, not what to compute: a run folder's manifest may differ
#: in them (unlike :data:`~flexmtl.training.trainer.CHANGEABLE_ON_RESUME`, which also lets a
#: resumed run train longer)
HOW_TO_RUN_KEYS = ("device", "compile", "find_unused_parameters", "tensorboard")


def run_experiment(
    name: str,
    methods: Sequence[str] | None = None,
    seeds: int = 3,
    steps: int | None = None,
    out_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    sweep: tuple[str, Sequence[Any]] | None | bool = True,
    progress: bool = True,
    plots: bool = True,
    log: Callable[[str], None] = print,
    restart: bool = False,
    jobs: int | None = None,
    executor: Executor = "local",
    address: str | None = None,
    batch_runs: bool = True,
    floors: bool = False,
) -> dict:
    """Run ``methods`` of experiment ``name`` for ``seeds`` seeds; return the results dict.

    ``sweep``: True uses the experiment's default sweep (if any), False/None runs the
    single configured point, or ``(key, values)`` sweeps ``key``. ``restart``: first delete
    what flexmtl wrote in the run folder (manifest, results, plots, every run); otherwise
    finished runs are kept and unfinished ones resume.

    Where the unfinished runs train (:mod:`flexmtl.executors`): ``executor="local"`` with
    ``jobs=1`` in this process, one after the other (as under ``torchrun``, where every
    process runs them together); with ``jobs=N`` in N worker processes, one run each at a
    time, single-threaded unless the config sets ``threads``. ``jobs`` None:
    ``$FLEXMTL_JOBS`` where set, else the usable CPU cores. ``executor="ray"``: as Ray
    tasks, ``jobs`` at a time (default: the cluster's CPUs), on the cluster at ``address``
    (``HOST:PORT``; None: as ``ray.init()`` finds one, else a local instance); its nodes
    must share the run folder's file system. Never more runs at once than are left; the
    results are the same wherever runs train. A run that fails in a worker raises
    :class:`~flexmtl.errors.RunFailedError` naming it, once the runs still training have
    finished.

    ``batch_runs``: the unfinished seeds of one method and sweep point train as one
    batched model (:class:`~flexmtl.training.batched.RunBatch`: parameters stacked along a
    run dimension, each run its own sampler, random stream, selection, checkpoints and
    result) where the model allows it (:func:`~flexmtl.training.batched.batch_reason`),
    else one by one; each run's result equals the run alone up to float rounding. False
    (``--no-batch-runs``) trains every run by itself.

    ``floors`` (the CLI's default; ``--no-floors``): also score trivial models on the same
    splits (:mod:`flexmtl.analysis.floors`: the majority class and a logistic regression,
    with scikit-learn), written to the folder's ``floors.json``, the primary point's mean
    over tasks in the results' ``floors`` and under the table.
    """
    exp = get_experiment(name)
    methods = exp.check_methods(_method_names(methods) or exp.default_methods
                                or exp.method_names())
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral):
        raise ConfigError(f"seeds must be a whole number (how many seeds to run), got "
                          f"{seeds!r}")
    seeds = int(seeds)
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    check_executor(executor, jobs, address, torchrun=distributed.launched_world_size() > 1)
    if isinstance(out_dir, (str, bytes)) and not out_dir.strip():
        raise ConfigError(f"out_dir (--out) {out_dir!r} is empty (it would write into the "
                          f"current folder); name a folder, or leave it out for runs/{name}")
    cfg = exp.resolve_config(config_file, overrides)
    if steps is not None:
        updates = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        if "steps" in updates:
            raise ConfigError(f"steps given twice (overrides steps={updates['steps']} and "
                              f"steps={steps}); give it once")
        cfg = exp.resolve_config(config_file, {**updates, "steps": steps})
    points = _sweep_points(exp, cfg, sweep)
    exp.train_config(cfg, 0, False).validate()  # bad training settings: before any folder
    distributed.setup(distributed.resolve_device(cfg["device"]))
    if not distributed.is_main():
        log, progress, plots = _quiet, False, False
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    folder = ExperimentFolder(out)
    manifest = {
        "experiment": name, "config": cfg, "methods": methods, "seeds": list(range(seeds)),
        "sweep": None if points is None else {"key": points[0], "values": list(points[1])},
    }
    key, values = (None, [None]) if points is None else (points[0], list(points[1]))
    planned = [folder.run(method, seed, None if key is None else (key, value))
               for value in values for method in methods for seed in range(seeds)]
    lock = FolderLock(out)  # rank 0 takes it: a second command on this folder is refused
    distributed.on_main(lock.acquire)
    try:
        if restart:
            distributed.on_main(_restart, folder, log)
        distributed.on_main(remove_torn_writes, folder.path)  # of a command killed mid-write
        distributed.on_main(_write_or_check_manifest, folder, manifest)
        distributed.on_main(_check_runs, planned)
        return _run_points(exp, name, methods, seeds, cfg, folder, manifest, key, values,
                           progress, plots, log, (executor, jobs, address), batch_runs,
                           floors)
    finally:
        lock.release()


def _method_names(methods: object) -> list[str] | None:
    """``run_experiment``'s ``methods``: None (the experiment's default), a sequence of
    names or one comma-separated string (``"soft,parallel"``)."""
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    if not isinstance(methods, Sequence) or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"methods must be method names (a list, or one comma-separated "
                          f"string such as 'soft,parallel'), got {methods!r}")
    if not methods or not all(methods):
        raise ConfigError(f"methods {list(methods)!r} holds no name or an empty one; give "
                          "method names (see `flexmtl list`), or None for the experiment's "
                          "default methods")
    return list(methods)


def _log_data(exp: Experiment, cfg: dict, log: Callable[[str], None]) -> None:
    """Say which data the runs read, before any trains: the tasks of the first sweep value
    and seed, built as a run builds them, grouped by their data note (exact, stand-in,
    subset: each loader says which). Missing data stops here, with what to get."""
    from flexmtl.training.rng import rng_state, set_rng_state

    caller = rng_state()  # the caller's random state is left as it was
    try:
        seed_everything(0)
        tasks = exp.build_tasks(cfg, 0)
    finally:
        set_rng_state(caller)
    by_note: dict[str, list[str]] = {}
    for task in tasks:
        by_note.setdefault(_data_line(task), []).append(task.name)
    for note, names in by_note.items():
        who = names[0] if len(names) == 1 else f"{len(names)} tasks ({', '.join(names)})"
        log(f"  data: {who}: {note}")


def _data_line(task) -> str:
    """What a task reads, as a run says it: its note, after ``exact``, ``STAND-IN for X`` or
    ``not the paper's form`` where its loader says (``info["exact"]``, ``info["stand_in_for"]``);
    other loaders say it in the note itself (e.g. a subset)."""
    note = task.note or "(the task gives no note)"
    info = task.info or {}
    if info.get("stand_in_for"):
        return f"STAND-IN for {info['stand_in_for']}: {note.removeprefix('stand-in: ')}"
    if "exact" in info:
        return ("exact: " if info["exact"] else "not the paper's form: ") + note
    return note


def _run_points(exp, name, methods, seeds, cfg, folder, manifest, key, values, progress,
                plots, log, where: tuple[Executor, int | None, str | None],
                batch_runs: bool = True, floors: bool = False) -> dict:
    log(f"{name}: {exp.paper}; methods {', '.join(methods)}; {seeds} seed(s); run folder "
        f"{folder.path}")
    for note in exp.notes:
        log(f"  note: {note}")
    _log_data(exp, cfg if key is None else {**cfg, key: values[0]}, log)

    start = time.perf_counter()
    # every run of the study, in the order of the results: (sweep point index, method, seed)
    plan = [(i, method, seed) for i in range(len(values)) for method in methods
            for seed in range(seeds)]
    points = [(None, dict(cfg)) if key is None else ((key, value), {**cfg, key: value})
              for value in values]
    # whether a method's runs batch and how long they take: probed once per (point,
    # method), when first asked
    probe = _Probe(exp, points)
    if _in_process(where, folder, points, plan, batch_runs, probe.batchable):
        by_run = _run_here(exp, folder, points, plan, progress, log, batch_runs,
                           probe.batchable)
    else:
        by_run = _run_elsewhere(exp, folder, points, plan, where, progress, log, batch_runs,
                                probe)

    point_results = []
    stale: list[tuple[TrainingRun, dict]] = []  # finished runs reused that ran other code
    for i, value in enumerate(values):
        point = points[i][0]
        runs = {method: [by_run[i, method, seed] for seed in range(seeds)]
                for method in methods}
        data_sources: dict[str, str] = {}  # per point: e.g. a swept n changes the data
        for result in (r for rs in runs.values() for r in rs):
            for t in result.get("tasks") or []:
                data_sources.setdefault(t["name"], t.get("note", ""))
        point_results.append({"value": value, "methods": _aggregate(runs), "data": data_sources})
        stale += [(folder.run(r["method"], r["seed"], point), r) for rs in runs.values()
                  for r in rs if provenance.stale_reasons(r.get("provenance"))]
    if stale:
        log(_stale_warning(folder, stale))
    results = _results(exp, manifest, point_results, time.perf_counter() - start)
    results["stale_runs"] = [_relative(run.path, folder.path) for run, _ in stale]
    if floors:
        results["floors"] = distributed.on_main(_floors, folder, results, log)
    distributed.on_main(_write_results, folder, results, log, plots)
    return results


def _floors(folder: ExperimentFolder, results: dict, log) -> dict | None:
    """The reference floors of the study's first seed (``floors.json``, computed where
    missing; ``flexmtl reproduce`` adds the other seeds') at its primary point: per floor,
    the mean over tasks' accuracy (mean ± CI over the seeds scored)."""
    from flexmtl.reproduction.report import floors_entry, write_floors

    rows = floors_entry(write_floors(folder, log, seeds=results["seeds"][:1]))
    sweep = results.get("sweep")
    primary = None if sweep is None else sweep["primary"]
    row = next((r for r in rows if r["value"] == primary), None)
    return None if row is None else {k: row[k] for k in ("majority", "logistic", "split")
                                     if k in row}


def _in_process(where, folder: ExperimentFolder, points, plan, batch_runs: bool = False,
                batchable: Callable[[int, str], bool] | None = None) -> bool:
    """Whether the unfinished runs train in this process, one after the other (or one
    batch after the other): the ``local`` executor with one job (also when one run, or one
    batch, is left, and always under ``torchrun``)."""
    executor, jobs, _ = where
    if executor != "local":
        return False
    if distributed.world_size() > 1:
        return True
    left = [(i, method, seed) for i, method, seed in plan
            if not folder.run(method, seed, points[i][0]).is_finished()]
    if worker_count(jobs, len(left)) == 1:
        return True
    if not batch_runs or batchable is None:
        return False
    groups = run_groups(left, jobs, batch_runs, batchable)
    return worker_count(jobs, len(groups)) == 1


def run_groups(runs: Sequence[tuple[int, str, int]], jobs: int | None, batch_runs: bool,
               batchable: Callable[[int, str], bool] = lambda i, method: True
               ) -> list[list[tuple[int, str, int]]]:
    """The runs ``(point index, method, seed)`` to train, in groups that train as one
    batch: the seeds of one method and point whose model ``batchable(point index,
    method)``, split into as many groups as keep ``jobs`` workers busy when there are fewer
    groups than workers; one run each without ``batch_runs`` or where the model does not
    batch (so that its seeds still spread over the workers)."""
    if not batch_runs:
        return [[run] for run in runs]
    by_key: dict[tuple[int, str], list[tuple[int, str, int]]] = {}
    singles = []
    for run in runs:
        by_key.setdefault(run[:2], []).append(run)
    for key in list(by_key):
        if len(by_key[key]) > 1 and not batchable(*key):
            singles += [[run] for run in by_key.pop(key)]
    workers = worker_count(jobs, len(runs))
    split = max(1, math.ceil(max(workers - len(singles), 0) / max(len(by_key), 1)))
    groups = []
    for members in by_key.values():
        parts = min(split, len(members))
        size = math.ceil(len(members) / parts)
        groups += [members[k:k + size] for k in range(0, len(members), size)]
    return groups + singles


class _Probe:
    """What the runner learns of the runs of ``method`` at point ``i`` from their model, built
    here once for seed 0 when first asked: whether they can train as one batch, and how long
    one training step of a run takes."""

    #: a step's time is the fastest of this many steps after one that warms up, or of as
    #: many as fit in :attr:`TIMING_SECONDS`
    TIMED_STEPS = 3
    TIMING_SECONDS = 0.5

    def __init__(self, exp: Experiment, points) -> None:
        self.exp, self.points = exp, points
        self._batchable: dict[tuple[int, str], bool] = {}
        self._seconds: dict[tuple[int, str], float] = {}

    def _trainer(self, i: int, method: str) -> Trainer:
        cfg = self.points[i][1]
        tasks, model = build_run(self.exp, method, 0, cfg)  # a probe: no folder to log into
        return Trainer(model, tasks, replace(self.exp.train_config(cfg, 0, False),
                                             tensorboard=False))

    def batchable(self, i: int, method: str) -> bool:
        """A method of the orderings whose model and training settings
        :func:`~flexmtl.training.batched.batch_reason` accepts."""
        from flexmtl.sharing.methods import METHODS
        from flexmtl.training.batched import batch_reason

        if (i, method) not in self._batchable:
            ok = METHODS.get(method).family == "ordering"
            if ok:
                ok = batch_reason([self._trainer(i, method)]) is None
            self._batchable[i, method] = ok
        return self._batchable[i, method]

    def run_seconds(self, i: int, method: str) -> float:
        """The expected training time of one run alone: its steps times the fastest of a
        few timed steps in this process (its torch threads restored after)."""
        if (i, method) not in self._seconds:
            threads = torch.get_num_threads()
            trainer = self._trainer(i, method)
            try:
                trainer.train_step()  # warms up
                times: list[float] = []
                while len(times) < self.TIMED_STEPS and sum(times) < self.TIMING_SECONDS:
                    start = time.perf_counter()
                    trainer.train_step()
                    times.append(time.perf_counter() - start)
            finally:
                trainer.close()
                torch.set_num_threads(threads)
            self._seconds[i, method] = trainer.config.steps * min(times)
        return self._seconds[i, method]

    def longest_first(self, groups: list[list[tuple[int, str, int]]]
                      ) -> list[list[tuple[int, str, int]]]:
        """``groups`` ordered by their expected training time (runs x
        :meth:`run_seconds`), longest first, so that the last to start are short ones and
        the workers finish close together (the longest-processing-time rule); ties keep
        their order."""
        return sorted(groups, key=lambda group: -len(group) * self.run_seconds(*group[0][:2]))


def _run_here(exp, folder, points, plan, progress, log, batch_runs: bool,
              batchable: Callable[[int, str], bool]) -> dict:
    """The runs in this process: each finished one reused, the others of one method and
    point trained as one batch (:func:`train_runs`) or one by one."""
    results = {}
    left = []
    for i, method, seed in plan:
        run = folder.run(method, seed, points[i][0])
        result = _reuse(exp, method, seed, points[i][1], run, log)
        if result is not None:
            results[i, method, seed] = result
        else:
            left.append((i, method, seed))
    if distributed.world_size() > 1:
        batch_runs = False
    for group in run_groups(left, 1, batch_runs, batchable):
        i, method = group[0][:2]
        point, cfg = points[i]
        seeds = [seed for _, _, seed in group]
        trained = train_runs(exp.name, method, seeds, cfg,
                             [str(folder.run(method, seed, point).path) for seed in seeds],
                             progress, batch=batch_runs)
        for seed, result in zip(seeds, trained):
            results[i, method, seed] = result
            log(_finished_line(method, seed, result))
    return {run: results[run] for run in plan}


def _run_elsewhere(exp, folder, points, plan, where, progress, log, batch_runs: bool,
                   probe: _Probe) -> dict:
    """Reuse the finished runs here and hand the others to the executor (``where``), with a
    bar of the study's finished runs; their results by ``(point index, method, seed)``.
    Where there are more groups of runs than the local workers, the longest start first
    (:meth:`_Probe.longest_first`)."""
    from tqdm.auto import tqdm

    results = {}
    left = []
    for i, method, seed in plan:
        point, cfg = points[i]
        run = folder.run(method, seed, point)
        result = _reuse(exp, method, seed, cfg, run, log)
        if result is not None:
            results[i, method, seed] = result
        else:
            left.append((i, method, seed))
    executor, jobs, address = where
    # the label of each group of runs to train (one batch, or one run)
    groups = run_groups(left, jobs, batch_runs, probe.batchable)
    if executor == "local" and len(groups) > worker_count(jobs, len(groups)):
        groups = probe.longest_first(groups)
    calls = {_group_label(group, points): group for group in groups}
    bar = tqdm(total=len(plan), initial=len(results), unit="run",
               disable=None if progress else True,  # None: no bar where not a terminal
               desc=f"{exp.name} runs", dynamic_ncols=True)

    def say(message: str) -> None:  # above the bar
        with tqdm.external_write_mode():
            log(message)

    def done(call: Call, trained: list[dict]) -> None:
        for (i, method, seed), result in zip(calls[call.label], trained):
            results[i, method, seed] = result
            say(_finished_line(method, seed, result, points[i][0]))
            bar.update(1)

    if executor == "local":
        batches = sum(len(group) > 1 for group in calls.values())
        say(f"  {len(left)} run(s) to train"
            + (f" ({batches} batch(es) of seeds trained as one)" if batches else "")
            + f", {worker_count(jobs, len(calls))} at a time in worker processes")
    todo = [_train_call(exp, group, points, folder, label, batch_runs)
            for label, group in calls.items()]
    try:
        run_calls(todo, done, executor, jobs, address, say)
    finally:
        bar.close()
    return results


def _label(method: str, seed: int, point: tuple[str, Any] | None) -> str:
    """A run as messages name it: ``soft seed 1`` or ``soft seed 1 (n=50)``."""
    return f"{method} seed {seed}" + ("" if point is None else f" ({point[0]}={point[1]})")


def _group_label(group: Sequence[tuple[int, str, int]], points) -> str:
    """A group of runs as messages name it: ``soft seed 1`` or ``soft seeds 0, 1, 2
    (n=50)``."""
    i, method, seed = group[0]
    if len(group) == 1:
        return _label(method, seed, points[i][0])
    point = points[i][0]
    return (f"{method} seeds {', '.join(str(s) for _, _, s in group)}"
            + ("" if point is None else f" ({point[0]}={point[1]})"))


def _train_call(exp, group, points, folder, label, batch_runs: bool) -> Call:
    """The :class:`~flexmtl.executors.Call` of :func:`train_runs` for a group of runs (one
    method and point): the experiment by name, the run folders as absolute paths (a worker
    may start elsewhere)."""
    i, method = group[0][:2]
    point, cfg = points[i]
    seeds = [seed for _, _, seed in group]
    return Call(label, train_runs,
                dict(experiment=exp.name, method=method, seeds=seeds, config=cfg,
                     run_dirs=[str(folder.run(method, seed, point).path.resolve())
                               for seed in seeds],
                     progress=False, module=getattr(exp.build_tasks, "__module__", None),
                     batch=batch_runs, labels=[_label(method, seed, point) for seed in seeds]),
                gpu=str(cfg["device"]).startswith("cuda"))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _stale_warning(folder: ExperimentFolder, stale: list[tuple[TrainingRun, dict]]) -> str:
    """One line naming the finished runs reused although they ran other code than now."""
    names = [_relative(run.path, folder.path) for run, _ in stale]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    why = "; ".join(dict.fromkeys(
        reason for _, r in stale for reason in provenance.stale_reasons(r.get("provenance"))))
    return (f"warning: {len(names)} reused finished run(s) ran other code than now ({why}): "
            f"{shown}; their results are averaged with this code's (--restart to redo them)")


def _write_results(out: ExperimentFolder, results: dict, log, plots: bool) -> None:
    out.write_results(results)
    log(format_table(results))
    if results.get("floors"):
        split = results["floors"].get("split", "test")
        log(f"reference floors on the same splits ({split} accuracy, mean over tasks): "
            + ", ".join(f"{name} {format_mean_ci(results['floors'][key])}"
                        for key, name in (("majority", "majority class"),
                                          ("logistic", "logistic regression"))
                        if key in results["floors"]))
    if plots:
        _plot(out.path, log)


def _quiet(_message: str) -> None:
    pass


def _sweep_points(exp: Experiment, cfg: dict, sweep) -> tuple[str, tuple] | None:
    if sweep is True:
        sweep = exp.sweep
    if not sweep:
        return None
    key, values = sweep
    if key not in exp.defaults:
        raise UnknownNameError(f"sweep key of experiment {exp.name!r}", key, exp.defaults)
    values = tuple(coerce(v, exp.defaults[key], key) for v in values)
    for value in values:  # each point as resolve_config checks a single one
        check_config({key: value}, exp.defaults, exp.name)
    return key, values


#: the two ways out of a run folder that holds something else
WAYS_OUT = ("pass another --out folder to keep them, or --restart to delete them and start "
            "over")


def _restart(out: ExperimentFolder, log) -> None:
    if out.clear():
        log(f"--restart: deleted the earlier runs, results and plots in {out.path}")


def _comparable(entry: dict, experiment: str) -> dict:
    """What must match between a folder's runs and a new command, flat: the experiment, the
    sweep and every config key (``HOW_TO_RUN_KEYS`` left out; a key added to the experiment
    after the folder was written counts as its default, the behaviour that run had)."""
    entry = json.loads(json.dumps(entry))
    config = entry.get("config")
    config = dict(config) if isinstance(config, dict) else {"config": config}
    if entry.get("experiment") == experiment:
        defaults = json.loads(json.dumps(dict(get_experiment(experiment).defaults)))
        config = {**defaults, **config}
    for key in HOW_TO_RUN_KEYS:
        config.pop(key, None)
    return {"experiment": entry.get("experiment"), "sweep": entry.get("sweep"), **config}


def _write_or_check_manifest(out: ExperimentFolder, manifest: dict) -> None:
    """Write the manifest of a new folder, or check that the folder's runs and results are
    of this configuration (:class:`FolderMismatchError` listing ``key: old -> new``)."""
    old = out.read_manifest()
    results = out.read_results()
    runs = out.has_runs()
    name = manifest["experiment"]
    new = _comparable(manifest, name)
    if old is None and (runs or results is not None):
        held = " and ".join(w for w, there in (("runs", runs), (out.RESULTS, results is not None))
                            if there)
        raise FolderMismatchError(
            f"run folder {out.path} holds {held} but no {out.MANIFEST}, so their configuration "
            f"is unknown (their results must not be mixed with this one's); {WAYS_OUT}")
    if old is not None and runs:
        diff = fingerprint_diff(_comparable(old, name), new)
        if diff:
            raise FolderMismatchError(
                f"run folder {out.path} holds runs of a different configuration "
                f"({'; '.join(diff)}); {WAYS_OUT}")
    if results is not None:
        sweep = results.get("sweep")
        if isinstance(sweep, dict) and "points" in sweep:  # as the manifest writes it
            sweep = {"key": sweep.get("key"),
                     "values": [p.get("value") for p in sweep["points"]]}
        written = {"experiment": results.get("experiment"), "config": results.get("config"),
                   "sweep": sweep}
        diff = fingerprint_diff(_comparable(written, name), new)
        if diff:
            raise FolderMismatchError(
                f"run folder {out.path} holds the {out.RESULTS} of another experiment or "
                f"configuration ({'; '.join(diff)}); {WAYS_OUT}")
    if old is not None and runs:
        # more methods or seeds may be added to an existing run folder
        manifest = {**manifest,
                    "methods": list(dict.fromkeys(old["methods"] + manifest["methods"])),
                    "seeds": sorted(set(old["seeds"]) | set(manifest["seeds"]))}
    out.write_manifest(manifest)


def _check_runs(runs: Sequence[TrainingRun]) -> None:
    """Check the files of every run of the command before anything trains: a finished run's
    ``result.json``; an unfinished one's checkpoints and fingerprint (a corrupt ``last.pt``
    with a good ``last.prev.pt`` falls back to it, said on stderr). A damaged file raises
    :class:`~flexmtl.errors.CorruptFileError` naming it."""
    for run in runs:
        if run.is_finished():
            run.read_finished()
        else:
            run.read_resumable()
            if run.last.exists():
                run.read_fingerprint()


def _run_one(exp, method, seed, cfg, run: TrainingRun, progress, log) -> dict:
    """One run in this process: reused when finished, else trained (:func:`train_run`)."""
    result = _reuse(exp, method, seed, cfg, run, log)
    if result is None:
        result = train_run(exp.name, method, seed, cfg, run.path, progress)
        log(_finished_line(method, seed, result))
    return result


def _reuse(exp, method, seed, cfg, run: TrainingRun, log) -> dict | None:
    """A finished run's ``result.json`` (checked against this command: :func:`_check_finished`)
    with its line printed; None when the run has still to train."""
    result = distributed.on_main(run.read_finished)
    if result is None:
        return None
    checked = distributed.on_main(_check_finished, exp, method, seed, cfg, run)
    log(f"  {method:>9} seed {seed}: done before (test loss {result['test']['loss']:.4f})"
        + ("" if checked else f"; no {run.FINGERPRINT}, so its data were not checked"))
    return result


def build_run(exp: Experiment, method: str, seed: int,
              cfg: Mapping[str, Any]) -> tuple[list, torch.nn.Module]:
    """The tasks and the untrained model of one run -- ``method`` of ``exp`` with ``seed`` and
    config ``cfg`` -- each drawn right after seeding with ``seed``: how every run is built
    (trained here, checked against a finished run, or rebuilt by :func:`flexmtl.load_run`)."""
    cfg = dict(cfg)
    seed_everything(seed)
    tasks = exp.build_tasks(cfg, seed)
    seed_everything(seed)
    return tasks, exp.build_model(method, tasks, cfg, seed)


def train_run(experiment: str, method: str, seed: int, config: Mapping[str, Any],
              run_dir: str | Path, progress: bool = False, module: str | None = None) -> dict:
    """Train one run of a study -- ``method`` of ``experiment`` with ``seed`` and the config of
    its sweep point -- in ``run_dir`` (resuming from its ``last.pt``), write its
    ``result.json`` (rank 0) and return it.

    What every executor runs, here or in a worker process: top-level, with picklable
    arguments. The experiment is looked up by name in the registry; a name that is not
    registered (in a new worker process) is looked for again after importing ``module``,
    the module that defines the experiment's functions (one that registers it at import).
    """
    exp = _registered(experiment, module)
    cfg = dict(config)
    run = TrainingRun(Path(run_dir))
    tasks, model = build_run(exp, method, seed, cfg)
    trainer = Trainer(model, tasks, exp.train_config(cfg, seed, progress), out_dir=run.path)
    res = trainer.fit()
    return distributed.on_main(_write_result, exp, method, seed, cfg, tasks, model, res,
                               trainer.resumed_from, run, trainer.device)


def train_runs(experiment: str, method: str, seeds: Sequence[int], config: Mapping[str, Any],
               run_dirs: Sequence[str | Path], progress: bool = False,
               module: str | None = None, batch: bool = True,
               labels: Sequence[str] | None = None) -> list[dict]:
    """Train the runs of ``method`` of ``experiment`` at one config point, one per seed in
    ``seeds`` (in ``run_dirs``), and return their results (as :func:`train_run` does).

    With ``batch`` they train as one batch (:class:`~flexmtl.training.batched.RunBatch`;
    one run: a batch of one) when :func:`~flexmtl.training.batched.batch_reason` allows
    it, else one after the other. A batched run's result does not depend on the other runs
    of its batch (bit for bit); it equals the run trained alone up to float rounding. A
    run that fails does not stop the others:
    their results are written, then the first failure is raised, its ``run_label`` set to
    the run's entry of ``labels`` (how messages name it).
    """
    if not batch:
        return [train_run(experiment, method, seed, config, run_dir, progress, module)
                for seed, run_dir in zip(seeds, run_dirs)]
    from flexmtl.training.batched import RunBatch, batch_reason

    exp = _registered(experiment, module)
    cfg = dict(config)
    batch_of = RunBatch([])
    threads = torch.get_num_threads()  # given back at the end, however the runs ended
    built: list[tuple[int, list, torch.nn.Module, Trainer, TrainingRun]] = []
    failures: list[tuple[int, BaseException]] = []
    try:
        for k, (seed, run_dir) in enumerate(zip(seeds, run_dirs)):
            run = TrainingRun(Path(run_dir))
            try:
                tasks, model = build_run(exp, method, seed, cfg)
                trainer = Trainer(model, tasks,
                                  exp.train_config(cfg, seed, progress and not built),
                                  out_dir=run.path)
                batch_of.setup(trainer)  # as a run alone starts: right after its model
            except Exception as exc:  # this run fails; the others train
                failures.append((k, exc))
                continue
            batch_of.trainers.append(trainer)
            built.append((k, tasks, model, trainer, run))
        reason = batch_reason(batch_of.trainers)
        outcomes = (batch_of.fit() if reason is None
                    else [RunBatch._alone(t) for t in batch_of.trainers])
    finally:  # last set up, first closed (a run trained alone closed itself already)
        for trainer in reversed(batch_of.trainers):
            trainer.close()
        torch.set_num_threads(threads)
    results = []
    for (k, tasks, model, trainer, run), outcome in zip(built, outcomes):
        if isinstance(outcome, BaseException):
            failures.append((k, outcome))
            continue
        results.append(_write_result(exp, method, seeds[k], cfg, tasks, model, outcome,
                                     trainer.resumed_from, run, trainer.device))
    if failures:
        k, error = min(failures, key=lambda f: f[0])
        if labels is not None:
            error.run_label = labels[k]  # type: ignore[attr-defined]
        raise error
    return results


def _registered(name: str, module: str | None) -> Experiment:
    """The experiment registered as ``name``, importing ``module`` first when it is not."""
    if name not in EXPERIMENTS and module is not None:
        importlib.import_module(module)
    if name not in EXPERIMENTS:
        raise ConfigError(
            f"experiment {name!r} is not registered in this worker process; register it when "
            f"the module that defines it ({module}) is imported, or train in the calling "
            "process (jobs=1)")
    return get_experiment(name)


def _check_finished(exp, method, seed, cfg, run: TrainingRun) -> bool:
    """Refuse to reuse a finished run that trained other tasks, data or a model of another
    shape than this command would (:class:`FolderMismatchError` with what changed): e.g. the
    data behind a data source changed between two commands. False when the run has no
    ``fingerprint.json`` to compare with (finished by an older flexmtl)."""
    old = run.read_fingerprint()
    if old is None:
        return False
    tasks, model = build_run(exp, method, seed, cfg)
    new = run_fingerprint(exp.train_config(cfg, seed, False), tasks, model)
    diff = fingerprint_diff(old, new)
    if diff:
        raise FolderMismatchError(
            f"the finished run {run.path} trained something else than this command would "
            f"({'; '.join(diff)}), so its results must not be averaged with new ones; "
            f"{WAYS_OUT}")
    return True


def _write_result(exp, method, seed, cfg, tasks, model, res, resumed, run: TrainingRun,
                  device=None) -> dict:
    """Write a finished run's ``result.json`` (rank 0) and return it. Its ``provenance``
    (:func:`flexmtl.provenance.run_provenance`) takes the data digests from the run's
    ``fingerprint.json`` (computed once, by the trainer)."""
    fingerprint = run.read_fingerprint()
    if fingerprint is None:  # not written (no checkpoint was saved): computed here
        fingerprint = run_fingerprint(exp.train_config(cfg, seed, False), tasks, model)
    device = device if device is not None else next(model.parameters(), torch.empty(0)).device
    result = {
        "method": method, "seed": seed, "best_step": res.best_step, "steps": res.steps,
        "finetune_step": res.finetune_step,  # when the finetune optimiser took over, or None
        "seconds": res.seconds, "resumed_from": resumed, "val": res.val, "test": res.test,
        "tasks": [{"name": t.name, "note": t.note, **t.info} for t in tasks],
        # measured on the selected checkpoint, which fit() has loaded into the model
        "analysis": exp.analyze(model, tasks, cfg) if exp.analyze else {},
        "sharing": sharing_summary(model),
        "provenance": provenance.run_provenance(device, fingerprint),
    }
    run.write_result(result)
    return result


def _finished_line(method: str, seed: int, result: dict,
                   point: tuple[str, Any] | None = None) -> str:
    """The line printed when a run has trained: its test loss and accuracy (validation
    ones where it has no test split), best step and training time."""
    split = _reported_split(result)
    metrics = result[split]
    accuracy = "" if math.isnan(metrics["accuracy"]) else f" accuracy {metrics['accuracy']:.4f}"
    at = "" if point is None else f" ({point[0]}={point[1]})"
    return (f"  {method:>9} seed {seed}{at}: {split} loss {metrics['loss']:.4f}{accuracy} "
            f"(best step {result['best_step']}, {result['seconds']:.1f}s)")


@torch.no_grad()
def sharing_summary(model: torch.nn.Module) -> dict | None:
    """What the model learned about sharing, as plain data for ``result.json``: its sharing
    core's :meth:`~flexmtl.sharing.SharingCore.summary` (``{"kind": ..., ...}``); None for
    a model with no core or several."""
    cores = find_cores(model)
    return cores[0].summary() if len(cores) == 1 else None


def _aggregate(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for method, results in runs.items():
        metrics = {}
        seeds = [r["seed"] for r in results]
        for split in ("test", "val"):
            for key in ("loss", "accuracy"):
                summary = _summary([r[split][key] for r in results], seeds)
                if summary is not None:
                    metrics[f"{split}_{key}"] = summary
        metrics["train_seconds"] = summarize([r["seconds"] for r in results])
        for key in results[0].get("analysis", {}):
            metrics[key] = summarize([r["analysis"][key] for r in results])
        per_task: dict[str, dict] = {}
        split = _reported_split(results[0])
        for name in results[0][split]["tasks"]:
            per_task[name] = {}
            for key in ("loss", "accuracy"):
                summary = _summary([r[split]["tasks"][name][key] for r in results], seeds)
                if summary is not None:
                    per_task[name][f"{split}_{key}"] = summary
        out[method] = {"metrics": metrics, "per_task": per_task,
                       "seeds": [r["seed"] for r in results],
                       "best_steps": [r["best_step"] for r in results]}
    return out


def _reported_split(result: dict) -> str:
    """The split a run's results are reported on: ``test``, or ``val`` for tasks without a
    test split (e.g. the UCI protocol: one fixed train/validation split)."""
    return "test" if result["test"]["tasks"] else "val"


def _summary(values: list, seeds: list[int]) -> dict | None:
    """Mean and 95% CI of one metric over seeds; None where no seed has it (e.g. the
    accuracy of regression tasks, NaN by definition). A metric NaN in only some seeds (a
    damaged or diverged model) is never dropped: its summary is NaN and ``nan_seeds`` names
    them."""
    bad = [s for s, v in zip(seeds, values)
           if not isinstance(v, (int, float)) or math.isnan(v)]
    if len(bad) == len(values):
        return None
    if bad:
        return {**summarize([v if isinstance(v, (int, float)) else math.nan
                             for v in values]), "nan_seeds": bad}
    return summarize(values)


def _results(exp, manifest, points, seconds) -> dict:
    sweep = manifest["sweep"]
    main = points[-1]
    if sweep is not None:
        primary = manifest["config"][sweep["key"]]
        main = next((p for p in points if p["value"] == primary), points[-1])
    return {
        "version": RESULTS_VERSION,
        "experiment": exp.name,
        "paper": exp.paper,
        "config": manifest["config"],
        "seeds": manifest["seeds"],
        "data": main["data"],
        "notes": list(exp.notes),
        "test_loss_is": "sum over tasks of the mean per-example loss",
        "test_accuracy_is": "mean over tasks of the per-task accuracy",
        "methods": main["methods"],
        "sweep": None if sweep is None else {
            "key": sweep["key"], "primary": main["value"], "points": points},
        "wall_seconds": seconds,
    }


def format_table(results: dict) -> str:
    """A text table of mean ± 95% CI per method (and sweep value).

    Columns: test loss, test accuracy, and any analysis metric of the experiment; where no
    run has a test split, the validation loss and accuracy instead (of the checkpoint they
    selected, which the table says).
    """
    lines = []
    sweep = results.get("sweep")
    blocks = [(None, results["methods"])] if sweep is None else [
        (f"{sweep['key']}={p['value']}", p["methods"]) for p in sweep["points"]]
    standard = {"test_loss", "test_accuracy", "val_loss", "val_accuracy", "train_seconds"}
    extra = list(dict.fromkeys(k for _, methods in blocks for e in methods.values()
                               for k in e["metrics"] if k not in standard))
    tested = any(k.startswith("test_") for _, methods in blocks for e in methods.values()
                 for k in e["metrics"])
    split = "test" if tested else "val"
    columns = [(f"{split}_loss", f"{split} loss (sum)"),
               (f"{split}_accuracy", f"{split} accuracy (mean)")]
    columns += [(k, k.replace("_", " ")) for k in extra]
    header = f"{'method':>14}" + "".join(f"  {title:>22}" for _, title in columns)
    for label, methods in blocks:
        lines.append(f"\n{results['experiment']}" + (f" [{label}]" if label else ""))
        lines.append(header)
        for method, entry in methods.items():
            m = entry["metrics"]
            cells = [("-" if k not in m else
                      f"NaN in seed(s) {','.join(map(str, m[k]['nan_seeds']))}"
                      if m[k].get("nan_seeds") else format_mean_ci(m[k])) for k, _ in columns]
            lines.append(f"{method:>14}" + "".join(f"  {c:>22}" for c in cells))
    n = len(results["seeds"])
    lines.append(f"(mean ± 95% CI over {n} seed(s))" if n > 1 else "(one seed: no interval)")
    if not tested:
        lines.append("(no test split: the validation split's loss and accuracy at the "
                     "checkpoint selected on that split)")
    return "\n".join(lines)


def _plot(out: Path, log) -> None:
    try:
        from flexmtl.analysis.plots import plot_run
    except ImportError:
        log("plots skipped: install matplotlib (pip install 'flexmtl[plots]') and run "
            f"`flexmtl plot {out}`")
        return
    from flexmtl.experiments.layer_visualization import plot_layer_vis  # needs its model

    for path in plot_run(out) + plot_layer_vis(out):
        log(f"  plot: {path}")
