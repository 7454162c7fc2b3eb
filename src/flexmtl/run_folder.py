"""The run folder: every file name of a run, written atomically and read with clear errors.

Layout (``flexmtl run``; :mod:`flexmtl.runner`)::

    OUT/config.json                  the manifest: resolved config, methods, seeds, sweep
    OUT/results.json                 mean and 95% CI per method (and per sweep value)
    OUT/plots/*.png                  the figures of :func:`flexmtl.analysis.plots.plot_run`
    OUT/[KEY=VALUE/]METHOD/seed-S/   one training run:
        train_log.csv                per-step training losses (appended row by row)
        eval_log.csv                 validation metrics at every evaluation
        last.pt                      model, optimiser, sampler and RNG state (resume)
        best.pt                      the model selected on validation
        sharing.pt                   the sharing parameters over training
        result.json                  the finished run's metrics (its presence: "done")

:class:`ExperimentFolder` owns the top level, :class:`TrainingRun` one run's folder,
:class:`PlotNames` the figure names and :class:`ReproductionReport` the files of
``flexmtl reproduce``. Other modules ask them for paths and never spell a file name.

Every JSON, CSV rewrite and checkpoint goes through :func:`atomic_write` (a temporary file
beside the target, flushed and fsynced, then ``os.replace``), so a killed process leaves the
previous file intact. A file that is truncated or corrupt anyway raises
:class:`~flexmtl.errors.CorruptFileError`, naming the file and what to do about it.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from flexmtl.errors import CorruptFileError

__all__ = [
    "ExperimentFolder", "TrainingRun", "PlotNames", "ReproductionReport", "CsvLog",
    "atomic_write", "write_text", "write_json", "read_json", "atomic_save", "load_checkpoint",
    "truncate_csv", "remove_torn_writes",
]


# ---------------------------------------------------------------------- atomic files


def atomic_write(path: str | Path, write: Callable[[IO], object], text: bool = False) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path`` (binary, or UTF-8 text with
    ``newline=""`` when ``text``), flush and fsync it, then atomically replace ``path``.

    A failure or a kill mid-write leaves the previous ``path`` intact (and no temporary
    file after an exception). The file gets the permissions a plain ``open`` would give. An
    ``OSError`` (a full disk, a read-only folder) names ``path``, not the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        named = _naming(exc, tmp, path)
        if named is None:
            raise
        raise named from exc
    try:
        opened = (os.fdopen(fd, "w", encoding="utf-8", newline="") if text
                  else os.fdopen(fd, "wb"))
        with opened as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        named = _naming(exc, tmp, path) if isinstance(exc, OSError) else None
        if named is None:
            raise
        raise named from exc


def _naming(exc: OSError, tmp: Path, path: Path) -> OSError | None:
    """``exc`` as an error about ``path`` where it named the temporary file or no file (a
    failed write or ``os.fsync``), of the same class (``PermissionError``, ...); None where
    it already names another file."""
    if exc.errno is None or (exc.filename is not None
                             and os.fsdecode(exc.filename) != os.fsdecode(tmp)):
        return None
    return OSError(exc.errno, exc.strerror, str(path))


#: the temporary files of :func:`atomic_write`: ``.NAME.HEX8.tmp``
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_torn_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in ``folder``
    (a SIGKILL leaves no chance to clean up); returns them. Call it only while no other
    process writes into ``folder``."""
    folder = Path(folder)
    torn = [p for p in folder.glob(".*.tmp") if _TEMPORARY.fullmatch(p.name)] \
        if folder.is_dir() else []
    for path in torn:
        path.unlink(missing_ok=True)
    return torn


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text), text=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (NaN allowed) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, allow_nan=True))


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a truncated or corrupt file raises
    :class:`~flexmtl.errors.CorruptFileError` saying what to do (a missing one raises
    ``FileNotFoundError``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _corrupt(path, exc) from exc


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`: a run killed mid-write leaves the
    previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save` (it holds more than tensors). A
    truncated or foreign file raises :class:`~flexmtl.errors.CorruptFileError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (EOFError, pickle.UnpicklingError) as exc:
        raise _corrupt(path, exc) from exc
    except RuntimeError as exc:  # torch writes zip archives: anything else is torn
        if zipfile.is_zipfile(path):
            raise  # e.g. a cuda map_location on a machine without one: the file is fine
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: Exception) -> CorruptFileError:
    folder = path.parent
    remedies = {
        ExperimentFolder.MANIFEST: "pass another --out folder, or delete it if the runs in "
                                   f"{folder} used the configuration you are running now",
        ExperimentFolder.RESULTS: "delete it and rerun the experiment to write it again "
                                  "(finished runs are not redone)",
        TrainingRun.RESULT: "delete it and rerun to redo that run (it resumes from its "
                            f"{TrainingRun.LAST} when there is one)",
        TrainingRun.LAST: "delete it and rerun to restart that run from its first step",
        TrainingRun.BEST: f"delete the folder {folder} and rerun to redo that run",
    }
    remedy = remedies.get(path.name, "delete it and rerun to write it again")
    reason = str(exc).split(". ")[0]
    return CorruptFileError(path, f"{path} is truncated or corrupt ({reason}); {remedy}")


# ---------------------------------------------------------------------- CSV logs


class CsvLog:
    """Appends dict rows to a CSV file (line-buffered, so a killed run loses at most the
    row being written); the header is fixed by the first row written. ``path`` None:
    nothing is written."""

    def __init__(self, path: Path | None):
        self.path = path
        self.file: IO[str] | None = None
        self.writer: csv.DictWriter | None = None

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        try:
            if self.writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                exists = self.path.exists() and self.path.stat().st_size > 0
                self.file = open(self.path, "a", newline="", buffering=1)  # line-buffered
                self.writer = csv.DictWriter(self.file, fieldnames=list(row))
                if not exists:
                    self.writer.writeheader()
            self.writer.writerow(row)
        except OSError as exc:
            if exc.filename is not None:
                raise
            # a full disk: name the log (a write error names no file)
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = self.writer = None


def truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows of steps ``<= last_step`` (dropping torn rows), rewriting
    the file atomically."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:]
                        if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= last_step]
    atomic_write(path, lambda f: csv.writer(f).writerows(kept), text=True)


# ---------------------------------------------------------------------- one training run


class TrainingRun:
    """The folder of one training run (one method, seed and sweep value), as written by
    :class:`flexmtl.training.Trainer` and :func:`flexmtl.runner.run_experiment`."""

    TRAIN_LOG = "train_log.csv"
    EVAL_LOG = "eval_log.csv"
    LAST = "last.pt"
    BEST = "best.pt"
    SHARING = "sharing.pt"
    RESULT = "result.json"
    #: what a fresh start deletes: files of an earlier attempt that a new one would not
    #: overwrite before reading them
    STALE = (TRAIN_LOG, EVAL_LOG, BEST, SHARING)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TrainingRun({str(self.path)!r})"

    @property
    def train_log(self) -> Path:
        return self.path / self.TRAIN_LOG

    @property
    def eval_log(self) -> Path:
        return self.path / self.EVAL_LOG

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def sharing(self) -> Path:
        return self.path / self.SHARING

    @property
    def result(self) -> Path:
        return self.path / self.RESULT

    @property
    def seed(self) -> int | None:
        """``S`` of a ``seed-S`` folder (None for a folder named otherwise)."""
        name = self.path.name
        prefix = ExperimentFolder.SEED_PREFIX
        digits = name[len(prefix):]
        return int(digits) if name.startswith(prefix) and digits.isdigit() else None

    # finished runs
    def is_finished(self) -> bool:
        return self.result.exists()

    def read_result(self) -> dict | None:
        """``result.json``, or None when the run has not finished."""
        return _read_object(self.result) if self.result.exists() else None

    def write_result(self, result: dict) -> None:
        write_json(self.result, result)

    # checkpoints
    def start_fresh(self) -> None:
        """Delete the logs and checkpoints of an earlier attempt (a run starting at step 0)."""
        for name in self.STALE:
            (self.path / name).unlink(missing_ok=True)

    def save_last(self, state: dict) -> None:
        atomic_save(state, self.last)

    def read_last(self) -> dict | None:
        """``last.pt`` on the cpu, or None when there is none."""
        return load_checkpoint(self.last, "cpu") if self.last.exists() else None

    def save_best(self, step: int, model_state: dict) -> None:
        atomic_save({"step": step, "model": model_state}, self.best)

    def load_best_model(self) -> dict:
        """The selected model's state dict, on the cpu."""
        return load_checkpoint(self.best, "cpu")["model"]

    def save_sharing(self, snapshots: list[tuple[int, torch.Tensor]]) -> None:
        atomic_save({"sharing": snapshots}, self.sharing)

    def sharing_snapshots(self) -> list[tuple[int, torch.Tensor]]:
        """What the core learned about sharing over training, ``[(step, tensor)]`` (its
        :meth:`~flexmtl.sharing.SharingCore.sharing_snapshot`): from ``sharing.pt`` (written
        when the run finishes), else ``last.pt`` of an unfinished run; empty when neither is
        readable."""
        for path in (self.sharing, self.last):
            if not path.exists():
                continue
            try:
                state = load_checkpoint(path, "cpu")
            except Exception:  # a torn or foreign file: no snapshots from it
                continue
            snaps = state.get("sharing") if isinstance(state, dict) else None
            if snaps:
                return [(int(step), torch.as_tensor(s)) for step, s in snaps]
        return []

    # logs
    def truncate_logs(self, last_step: int) -> None:
        """Drop the log rows a killed run wrote after its last checkpoint (they are redone)."""
        for path in (self.train_log, self.eval_log):
            truncate_csv(path, last_step)


# ---------------------------------------------------------------------- an experiment


class ExperimentFolder:
    """The folder of one ``flexmtl run``: the manifest, the summary, the plots and one
    :class:`TrainingRun` per (sweep value, method, seed)."""

    MANIFEST = "config.json"
    RESULTS = "results.json"
    PLOTS = "plots"
    SEED_PREFIX = "seed-"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExperimentFolder({str(self.path)!r})"

    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def plots(self) -> Path:
        return self.path / self.PLOTS

    def point(self, key: str, value: Any) -> Path:
        """The folder of one sweep value, ``KEY=VALUE``."""
        return self.path / f"{key}={value}"

    def method_dir(self, method: str, point: tuple[str, Any] | None = None) -> Path:
        """``[KEY=VALUE/]METHOD``: the runs of one method (``point``: the sweep value)."""
        return (self.path if point is None else self.point(*point)) / method

    def run(self, method: str, seed: int, point: tuple[str, Any] | None = None) -> TrainingRun:
        """``[KEY=VALUE/]METHOD/seed-S``: one training run (``point``: the sweep value)."""
        return TrainingRun(self.method_dir(method, point) / f"{self.SEED_PREFIX}{seed}")

    def has_runs(self) -> bool:
        """Whether the folder holds a run worth protecting: a checkpoint or a finished
        result (an attempt that failed before its first checkpoint holds neither)."""
        return any(next(self.path.rglob(name), None) is not None
                   for name in (TrainingRun.LAST, TrainingRun.RESULT))

    def read_manifest(self) -> dict | None:
        """``config.json``, or None when there is none."""
        return _read_object(self.manifest) if self.manifest.exists() else None

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest, manifest)

    def read_results(self) -> dict | None:
        """``results.json``, or None when the experiment has not finished."""
        return _read_object(self.results) if self.results.exists() else None

    def write_results(self, results: dict) -> None:
        write_json(self.results, results)

    @classmethod
    def method_dirs(cls, point: Path) -> dict[str, Path]:
        """The method folders of a sweep point (or experiment) folder: those holding
        ``seed-*`` folders, by name."""
        if not point.is_dir():
            return {}
        return {p.name: p for p in sorted(point.iterdir())
                if p.is_dir() and any(s.is_dir() for s in p.glob(f"{cls.SEED_PREFIX}*"))}

    @classmethod
    def seed_runs(cls, method_dir: Path) -> list[TrainingRun]:
        """The runs of a method folder, by seed (folders with a malformed seed last)."""
        runs = [TrainingRun(p) for p in method_dir.glob(f"{cls.SEED_PREFIX}*") if p.is_dir()]
        return sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, r.path.name))


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise _corrupt(path, ValueError(f"a JSON {type(data).__name__}, not an object"))
    return data


# ---------------------------------------------------------------------- plots


class PlotNames:
    """File names of the figures in ``plots/`` (:func:`flexmtl.analysis.plots.plot_run`)."""

    LEARNING_CURVES = "learning_curves.png"
    SWEEP = "sweep.png"

    @staticmethod
    def soft_order(method: str) -> str:
        return "soft_order.png" if method == "soft" else f"soft_order_{method}.png"

    @staticmethod
    def scale_trajectories(method: str) -> str:
        return ("scale_trajectories.png" if method == "soft"
                else f"scale_trajectories_{method}.png")

    @staticmethod
    def allocation(method: str) -> str:
        return f"allocation_{method}.png"

    @staticmethod
    def similarity(method: str) -> str:
        return f"similarity_{method}.png"

    @staticmethod
    def allocation_trajectories(method: str) -> str:
        return f"allocation_trajectories_{method}.png"

    @staticmethod
    def layer_sweep(layer: int) -> str:
        """Soft ordering Table 1 for layer ``layer`` (0-based; the name counts from 1)."""
        return f"layer_sweep_layer{layer + 1}.png"


# ---------------------------------------------------------------------- reproduction


class ReproductionReport:
    """The files of ``flexmtl reproduce``: the report ``doc`` (``REPRODUCTION.md``), its
    figures and data beside it in ``docs/reproduction/``, and the study run folders
    ``OUT/{full,quick}/STUDY`` (each an :class:`ExperimentFolder`)."""

    DOC = "REPRODUCTION.md"
    DATA = "reproduction.json"

    def __init__(self, doc: str | Path = DOC):
        self.doc = Path(doc)

    @property
    def figures(self) -> Path:
        return self.doc.parent / "docs" / "reproduction"

    @property
    def data(self) -> Path:
        return self.figures / self.DATA

    def study_figures(self, key: str) -> Path:
        return self.figures / key

    @staticmethod
    def study_folder(out: str | Path, mode: str, key: str) -> ExperimentFolder:
        return ExperimentFolder(Path(out) / mode / key)

    def write(self, text: str, report: dict) -> None:
        """Write the report's text and its data (``reproduction.json``)."""
        write_text(self.doc, text)
        write_json(self.data, report)
