"""The run folder: every file name of a run, written atomically and read with clear errors.

Layout (``flexmtl run``; :mod:`flexmtl.runner`)::

    OUT/config.json                  the manifest: resolved config, methods, seeds, sweep
    OUT/results.json                 mean and 95% CI per method (and per sweep value)
    OUT/plots/*.png                  the figures of :func:`flexmtl.analysis.plots.plot_run`
    OUT/floors.json                  reference floors on the same splits (``flexmtl
                                     reproduce``; :mod:`flexmtl.analysis.floors`)
    OUT/[KEY=VALUE/]METHOD/seed-S/   one training run:
        train_log.csv                per-step training losses (appended row by row)
        eval_log.csv                 validation metrics at every evaluation
        last.pt                      model, optimiser, sampler and RNG state (resume)
        last.prev.pt                 the checkpoint before it (a fallback if last.pt is corrupt;
                                     deleted when training ends, as is best.prev.pt)
        best.pt                      the model selected on validation
        best.prev.pt                 the selected model of the last checkpoint, while best.pt
                                     holds a newer one
        fingerprint.json             what the run trains: settings, tasks, data digest, model
        run.lock                     held while a process writes the run (also OUT/run.lock)
        sharing.pt                   the sharing parameters over training
        result.json                  the finished run's metrics and provenance (its
                                     presence: "done"; :mod:`flexmtl.provenance`)

:class:`ExperimentFolder` owns the top level, :class:`TrainingRun` one run's folder,
:class:`PlotNames` the figure names and :class:`ReproductionReport` the files of
``flexmtl reproduce``. Other modules ask them for paths and never spell a file name.

Every JSON, CSV rewrite and checkpoint goes through :func:`atomic_write` (a temporary file
beside the target, flushed and fsynced, then ``os.replace``), so a killed process leaves the
previous file intact. A file that is truncated or corrupt anyway raises
:class:`~flexmtl.errors.CorruptFileError`, naming the file and what to do about it;
:meth:`TrainingRun.read_resumable` checks every file a run resumes from before it trains,
falling back to the previous checkpoint where one is good. A :class:`FolderLock`
(``run.lock``) keeps a second process out of a folder that one is writing.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import sys
import time
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from flexmtl.errors import CorruptFileError, FolderLockedError

__all__ = [
    "ExperimentFolder", "TrainingRun", "PlotNames", "ReproductionReport", "CsvLog",
    "atomic_write", "write_text", "write_json", "read_json", "atomic_save", "load_checkpoint",
    "truncate_csv", "remove_torn_writes", "FolderLock", "preserve",
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
#: the temporary files of :class:`FolderLock`: ``run.lock.PID-HEX8`` (taking the lock) and
#: ``run.lock.stale-HEX8`` (taking over a stale one)
_LOCK_TEMPORARY = re.compile(r"run\.lock\.(?:(?P<pid>[0-9]+)|stale)-[0-9a-f]{8}")


def remove_torn_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in ``folder``
    (a SIGKILL leaves no chance to clean up), and those of a :class:`FolderLock` whose
    process is gone; returns them. Call it only while holding the folder's lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    torn = [p for p in folder.glob(".*.tmp") if _TEMPORARY.fullmatch(p.name)]
    # a lock's own temporaries: of a process killed while taking the lock (its PID gone),
    # or while taking over a stale one (left for a minute: another process may be at it)
    for path in folder.glob(f"{FolderLock.NAME}.*"):
        match = _LOCK_TEMPORARY.fullmatch(path.name)
        if match is None:
            continue
        pid = match.group("pid")
        try:
            dead = (not _pid_alive(int(pid))) if pid else (
                time.time() - path.stat().st_mtime > 60)
        except OSError:  # gone meanwhile
            continue
        if dead:
            torn.append(path)
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
    except (RuntimeError, OSError) as exc:  # torch writes zip archives: anything else is torn
        # torch's reader of a torn archive raises EINVAL (a seek past its end)
        if (isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL)) \
                or zipfile.is_zipfile(path):
            raise  # a disk error, or e.g. a cuda map_location on a machine without one
        raise _corrupt(path, exc) from exc


def preserve(path: Path, keep: Path) -> None:
    """Make ``keep`` a copy of ``path`` (a hard link where the file system allows it), atomically:
    ``keep`` is the old or the new copy at any moment, never a torn one. Nothing happens when
    ``path`` does not exist. Call it before :func:`atomic_write` replaces ``path``: the
    replacement is a new file, so the link keeps the previous one."""
    if not path.exists() or (keep.exists() and os.path.samefile(path, keep)):
        return  # nothing to keep, or kept already (a run stopped before replacing ``path``)
    tmp = keep.parent / f".{keep.name}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (e.g. some network or FAT file systems)
            shutil.copyfile(path, tmp)
        os.replace(tmp, keep)
    finally:
        # also where tmp and keep were links of one file: rename then does nothing
        tmp.unlink(missing_ok=True)


def _corrupt(path: Path, exc: Exception) -> CorruptFileError:
    folder = path.parent
    restart = (f"delete the folder {folder} and rerun to redo that run alone (Python: "
               "Trainer(..., resume='restart'); flexmtl run --restart would redo every run of "
               "the experiment)")
    remedies = {
        TrainingRun.FINGERPRINT: restart,
        TrainingRun.LAST_PREV: restart,
        TrainingRun.BEST_PREV: restart,
        ExperimentFolder.MANIFEST: "pass another --out folder, or delete it if the runs in "
                                   f"{folder} used the configuration you are running now",
        ExperimentFolder.RESULTS: "delete it and rerun the experiment to write it again "
                                  "(finished runs are not redone)",
        TrainingRun.RESULT: "delete it and rerun to redo that run (it resumes from its "
                            f"{TrainingRun.LAST} when there is one)",
        TrainingRun.LAST: "delete it and rerun to restart that run from its first step",
        TrainingRun.TRAIN_LOG: "delete it and rerun: training resumes, the log restarts there",
        TrainingRun.EVAL_LOG: "delete it and rerun: training resumes, the log restarts there",
        ReproductionReport.DATA: f"restore it (git checkout -- {path}) and rerun: the "
                                 "report keeps the results of studies not rerun from it",
        TrainingRun.BEST: restart,
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
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _corrupt(path, exc) from exc
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:]
                        if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= last_step]
    atomic_write(path, lambda f: csv.writer(f).writerows(kept), text=True)



# ---------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class FolderLock:
    """``run.lock`` in a folder: held while one process writes it; a second process is
    refused with :class:`~flexmtl.errors.FolderLockedError`, naming the holder.

    The file holds JSON ``{pid, host, started, command}``. It is created complete and at once
    (written beside, then hard-linked into place, which fails when a lock exists: git's
    ``index.lock`` rule). A lock whose process is gone (same host, no such PID) is stale and
    taken over; a lock of another host is never guessed about: the message says to delete
    the file if that process is gone. :meth:`release` (also on exit from ``with``, on an
    exception or Ctrl-C, and when the object is garbage-collected) deletes it. In one
    process, a second lock object on a folder whose lock an object still holds is refused
    too (e.g. two trainers on one ``out_dir``)."""

    NAME = "run.lock"
    #: the locks this process holds, by file
    _held: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.held = False

    def __repr__(self) -> str:
        return f"FolderLock({str(self.folder)!r}, held={self.held})"

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass

    @staticmethod
    def holder_info() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv)}

    def acquire(self) -> None:
        """Take the lock, or raise :class:`~flexmtl.errors.FolderLockedError`."""
        if self.held:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.holder_info()
        for _ in range(5):  # a stale lock taken over, then a race lost: look again
            if self._create(info):
                self.held = True
                FolderLock._held[str(self.path.resolve())] = self
                return
            holder = self._read()
            if holder is None:  # released between our try and our look
                continue
            if not self._stale(holder):
                raise self._refusal(holder)
            self._take_over(holder)
        raise FolderLockedError(f"{self.folder} is locked by processes that keep replacing "
                                f"{self.path}; stop them or delete it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        FolderLock._held.pop(str(self.path.resolve()), None)
        holder = self._read()
        if holder is not None and holder.get("pid") == os.getpid() \
                and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _create(self, info: dict) -> bool:
        """Put a complete lock file in place; False when one exists."""
        tmp = self.folder / f"{self.NAME}.{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:  # not fsynced: after a crash of the machine a lock is stale anyway
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(info, f)
            except OSError as exc:  # a full disk: name the lock, not its temporary file
                named = _naming(exc, tmp, self.path)
                if named is None:
                    raise
                raise named from exc
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: create exclusively
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(info, f)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        """The holder's record; None when there is no lock. An unreadable lock is a holder
        we know nothing about (refused, never guessed stale)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {"unreadable": text[:80]}

    def _stale(self, holder: dict) -> bool:
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or host != socket.gethostname():
            return False
        if pid == os.getpid():  # this process: stale unless a live lock object holds it
            return str(self.path.resolve()) not in FolderLock._held
        return not _pid_alive(pid)

    def _take_over(self, holder: dict) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile."""
        moved = self.folder / f"{self.NAME}.stale-{secrets.token_hex(4)}"
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:
            return
        try:
            now = json.loads(moved.read_text(encoding="utf-8"))
        except ValueError:
            now = None
        if now != holder:  # a live lock, taken meanwhile: put it back
            try:
                os.link(moved, self.path)
            except OSError:
                pass
        moved.unlink(missing_ok=True)

    def _refusal(self, holder: dict) -> FolderLockedError:
        if "unreadable" in holder:
            return FolderLockedError(
                f"{self.folder} is locked: {self.path} exists but cannot be read; if no "
                f"process is running in this folder, delete {self.path}")
        pid, host = holder.get("pid"), holder.get("host")
        since = f" since {holder['started']}" if holder.get("started") else ""
        command = f" ({holder['command']})" if holder.get("command") else ""
        mine = " (this process)" if pid == os.getpid() and host == socket.gethostname() else ""
        return FolderLockedError(
            f"{self.folder} is in use by process {pid}{mine} on host {host}{since}{command}; "
            f"wait for it to finish or pass another output folder. If that process is gone, "
            f"delete {self.path}")

# ---------------------------------------------------------------------- one training run


class TrainingRun:
    """The folder of one training run (one method, seed and sweep value), as written by
    :class:`flexmtl.training.Trainer` and :func:`flexmtl.runner.run_experiment`."""

    TRAIN_LOG = "train_log.csv"
    EVAL_LOG = "eval_log.csv"
    LAST = "last.pt"
    LAST_PREV = "last.prev.pt"
    BEST = "best.pt"
    BEST_PREV = "best.prev.pt"
    SHARING = "sharing.pt"
    TENSORBOARD = "tensorboard"  # a folder: TrainConfig(tensorboard=True)
    RESULT = "result.json"
    FINGERPRINT = "fingerprint.json"
    #: what a fresh start deletes: files of an earlier attempt that a new one would not
    #: overwrite before reading them
    STALE = (TRAIN_LOG, EVAL_LOG, BEST, BEST_PREV, SHARING, LAST_PREV, FINGERPRINT)
    #: every file of a run (what a restart deletes; not the lock)
    FILES = (TRAIN_LOG, EVAL_LOG, LAST, LAST_PREV, BEST, BEST_PREV, SHARING, RESULT,
             FINGERPRINT)

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
    def last_prev(self) -> Path:
        return self.path / self.LAST_PREV

    @property
    def best_prev(self) -> Path:
        return self.path / self.BEST_PREV

    @property
    def fingerprint(self) -> Path:
        return self.path / self.FINGERPRINT

    @property
    def lock(self) -> Path:
        return self.path / FolderLock.NAME

    @property
    def sharing(self) -> Path:
        return self.path / self.SHARING

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

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

    #: what a finished run's ``result.json`` holds at least (the runner summarises these)
    RESULT_KEYS = ("method", "seed", "best_step", "steps", "seconds", "val", "test", "tasks")
    SPLIT_KEYS = ("loss", "accuracy", "tasks")

    def read_finished(self) -> dict | None:
        """``result.json`` checked to be a finished run's as the runner wrote it (None: not
        finished); one that lacks a key raises :class:`~flexmtl.errors.CorruptFileError`."""
        result = self.read_result()
        if result is None:
            return None
        missing = [k for k in self.RESULT_KEYS if k not in result]
        missing += [f"{split}.{k}" for split in ("val", "test")
                    if isinstance(result.get(split), dict)
                    for k in self.SPLIT_KEYS if k not in result[split]]
        missing += [split for split in ("val", "test")
                    if split in result and not isinstance(result[split], dict)]
        if missing:
            raise _corrupt(self.result, ValueError(f"it lacks {', '.join(missing)}"))
        return result

    def write_result(self, result: dict) -> None:
        write_json(self.result, result)

    # checkpoints
    def start_fresh(self) -> None:
        """Delete the logs and checkpoints of an earlier attempt (a run starting at step 0)."""
        for name in self.STALE:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / self.TENSORBOARD, ignore_errors=True)

    def delete_files(self) -> list[Path]:
        """Delete every file of the run (a restart); returns those that were there."""
        gone = [self.path / name for name in self.FILES if (self.path / name).exists()]
        for path in gone:
            path.unlink(missing_ok=True)
        if (self.path / self.TENSORBOARD).is_dir():
            shutil.rmtree(self.path / self.TENSORBOARD, ignore_errors=True)
            gone.append(self.path / self.TENSORBOARD)
        return gone

    def save_last(self, state: dict) -> None:
        """Write ``last.pt``, keeping the one it replaces as ``last.prev.pt``: whenever the
        process dies, ``last.pt`` is a complete checkpoint (the old or the new one), and a
        ``last.pt`` damaged later has a fallback."""
        preserve(self.last, self.last_prev)
        atomic_save(state, self.last)

    def drop_fallbacks(self) -> None:
        """Delete ``last.prev.pt`` and ``best.prev.pt`` once training has ended: ``last.pt``
        is then the final checkpoint, written and synced, and ``best.pt`` its selected model,
        so the copies would only double the folder's size."""
        for path in (self.last_prev, self.best_prev):
            path.unlink(missing_ok=True)

    def read_fingerprint(self) -> dict | None:
        """``fingerprint.json``, or None when there is none."""
        return _read_object(self.fingerprint) if self.fingerprint.exists() else None

    def write_fingerprint(self, fingerprint: dict) -> None:
        write_json(self.fingerprint, fingerprint)

    def read_resumable(self, log: Callable[[str], None] | None = None) -> dict | None:
        """Check every file the run would resume from, before it trains; return the state of
        ``last.pt`` (None: nothing to resume).

        ``result.json`` must be readable; a corrupt ``last.pt`` falls back to a good
        ``last.prev.pt`` (which replaces it; ``log`` is told); the selected model of the
        checkpoint must be in ``best.pt`` -- or in ``best.prev.pt``, which then replaces it
        (a run stopped between a new best model and its checkpoint). Anything else raises
        :class:`~flexmtl.errors.CorruptFileError` naming the file."""
        if self.result.exists():
            self.read_result()
        if not self.last.exists() and not self.last_prev.exists():
            return None
        try:
            if not self.last.exists():  # deleted by hand, or lost: the one before it is there
                raise _corrupt(self.last, FileNotFoundError("missing"))
            state = self._checked_last(self.read_last())
        except CorruptFileError as exc:
            fallback = self._loadable(self.last_prev)
            try:
                fallback = None if fallback is None else self._checked_last(fallback)
            except CorruptFileError:
                fallback = None
            if fallback is None:
                raise
            what = "is missing" if not self.last.exists() else "is truncated or corrupt"
            (log or _stderr)(f"{self.last} {what}; resuming from {self.last_prev} (step "
                             f"{fallback['step']}) instead")
            os.replace(self.last_prev, self.last)
            state = fallback
            del exc
        self._check_best(int(state["best_step"]))
        return state

    #: what ``last.pt`` holds at least, and the type of each
    LAST_KEYS = {"step": int, "best_step": int, "model": dict, "optimizer": dict,
                 "sampler": dict, "history": list, "config": dict}

    def _checked_last(self, state: Any) -> dict:
        """``state`` if it is a flexmtl checkpoint (:data:`LAST_KEYS`), else
        :class:`~flexmtl.errors.CorruptFileError` naming ``last.pt``."""
        if not isinstance(state, dict):
            raise _corrupt(self.last, ValueError("not a flexmtl checkpoint"))
        wrong = [k for k, kind in self.LAST_KEYS.items()
                 if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
        if wrong:
            raise _corrupt(self.last, ValueError(
                f"not a flexmtl checkpoint: {', '.join(wrong)} missing or of the wrong type"))
        return state

    def _check_best(self, best_step: int) -> None:
        if best_step < 0:  # nothing selected yet: a best model on disk is of a lost future
            for path in (self.best, self.best_prev):
                path.unlink(missing_ok=True)
            return
        problem: CorruptFileError | None = None
        try:
            best = load_checkpoint(self.best, "cpu") if self.best.exists() else None
        except CorruptFileError as exc:
            best, problem = None, exc
        if isinstance(best, dict) and best.get("step") == best_step:
            return
        prev = self._loadable(self.best_prev)
        if prev is not None and prev.get("step") == best_step:
            os.replace(self.best_prev, self.best)
            return
        if problem is not None:
            raise problem
        what = ("is missing" if best is None else
                f"holds the model of step {best.get('step') if isinstance(best, dict) else '?'}")
        raise _corrupt(self.best, ValueError(
            f"{what}, but {self.last} selected the model of step {best_step}"))

    @staticmethod
    def _loadable(path: Path) -> dict | None:
        """The checkpoint in ``path``, or None when it is missing or damaged."""
        try:
            state = load_checkpoint(path, "cpu") if path.exists() else None
        except CorruptFileError:
            return None
        return state if isinstance(state, dict) else None

    def read_last(self) -> dict | None:
        """``last.pt`` on the cpu, or None when there is none."""
        return load_checkpoint(self.last, "cpu") if self.last.exists() else None

    def save_best(self, step: int, model_state: dict, keep_previous: bool = False) -> None:
        """Write ``best.pt``; ``keep_previous``: first keep the one it replaces as
        ``best.prev.pt`` (the trainer does so for the first new best model after a
        checkpoint, so that the checkpoint's selected model survives until the next one)."""
        if keep_previous:
            if self.best.exists():
                preserve(self.best, self.best_prev)
            else:
                self.best_prev.unlink(missing_ok=True)
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
    FLOORS = "floors.json"
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

    @property
    def floors(self) -> Path:
        return self.path / self.FLOORS

    def point(self, key: str, value: Any) -> Path:
        """The folder of one sweep value, ``KEY=VALUE``."""
        return self.path / f"{key}={value}"

    def method_dir(self, method: str, point: tuple[str, Any] | None = None) -> Path:
        """``[KEY=VALUE/]METHOD``: the runs of one method (``point``: the sweep value)."""
        return (self.path if point is None else self.point(*point)) / method

    def run(self, method: str, seed: int, point: tuple[str, Any] | None = None) -> TrainingRun:
        """``[KEY=VALUE/]METHOD/seed-S``: one training run (``point``: the sweep value)."""
        return TrainingRun(self.method_dir(method, point) / f"{self.SEED_PREFIX}{seed}")

    @property
    def lock(self) -> Path:
        return self.path / FolderLock.NAME

    def points(self) -> list[Path]:
        """The folder itself and its sweep-value folders (``KEY=VALUE``)."""
        if not self.path.is_dir():
            return []
        return [self.path] + [p for p in sorted(self.path.iterdir())
                              if p.is_dir() and "=" in p.name]

    def clear(self) -> list[Path]:
        """Delete what flexmtl wrote here (``--restart``): the manifest, the results, the
        plots and every ``[KEY=VALUE/]METHOD/seed-S`` folder; other files stay. Returns
        what was deleted."""
        gone = [p for p in (self.manifest, self.results, self.floors) if p.exists()]
        if self.plots.is_dir():
            gone += [p for p in sorted(self.plots.iterdir())
                     if p.is_file() and PlotNames.is_ours(p.name)]
        for path in gone:
            path.unlink()
        _remove_if_empty(self.plots)
        for point in self.points():
            for method_dir in self.method_dirs(point).values():
                for run in self.seed_runs(method_dir):
                    if run.seed is None:  # not a folder flexmtl names
                        continue
                    gone += run.delete_files()
                    (run.path / FolderLock.NAME).unlink(missing_ok=True)  # we hold OUT's
                    _remove_if_empty(run.path)
                _remove_if_empty(method_dir)
            if point != self.path:
                _remove_if_empty(point)
        return gone

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

    def read_floors(self) -> dict | None:
        """``floors.json`` (:func:`flexmtl.analysis.floors.reference_floors` per sweep value
        and seed), or None when there is none."""
        return _read_object(self.floors) if self.floors.exists() else None

    def write_floors(self, floors: dict) -> None:
        write_json(self.floors, floors)

    def finished_runs(self) -> list[tuple[Path, str, TrainingRun]]:
        """``[(point folder, method, run)]`` of every finished run here, in folder order."""
        return [(point, method, run) for point in self.points()
                for method, method_dir in self.method_dirs(point).items()
                for run in self.seed_runs(method_dir) if run.is_finished()]

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


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (files of the user's): kept
        pass


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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

    #: every name above (``METHOD`` any method name)
    _OURS = re.compile(r"(learning_curves|sweep|soft_order(_.+)?|scale_trajectories(_.+)?|"
                       r"allocation_.+|similarity_.+|allocation_trajectories_.+|"
                       r"layer_sweep_layer[0-9]+)\.png")

    @classmethod
    def is_ours(cls, name: str) -> bool:
        """Whether ``name`` is one of the figures flexmtl writes (``--restart`` deletes those
        and leaves other files in ``plots/``)."""
        return cls._OURS.fullmatch(name) is not None


# ---------------------------------------------------------------------- reproduction


class ReproductionReport:
    """The files of ``flexmtl reproduce``: the report ``doc`` (``REPRODUCTION.md``), its
    figures and data beside it in ``docs/reproduction/`` (``reproduction.json``; per study
    ``KEY/`` with its figures and ``runs.json``), and the study run folders
    ``OUT/{full,quick}/STUDY`` (each an :class:`ExperimentFolder`)."""

    DOC = "REPRODUCTION.md"
    DATA = "reproduction.json"
    RUNS = "runs.json"

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

    def study_runs(self, key: str) -> Path:
        """``docs/reproduction/KEY/runs.json``: the study's per-seed values and provenance."""
        return self.study_figures(key) / self.RUNS

    @staticmethod
    def study_folder(out: str | Path, mode: str, key: str) -> ExperimentFolder:
        return ExperimentFolder(Path(out) / mode / key)

    def write(self, text: str, report: dict) -> None:
        """Write the report's text and its data (``reproduction.json``)."""
        write_text(self.doc, text)
        write_json(self.data, report)
