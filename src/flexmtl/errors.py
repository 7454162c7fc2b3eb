"""Exceptions with messages that tell the user what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


class FlexMTLError(Exception):
    """Base class of every error flexmtl raises on purpose."""


class UnknownNameError(FlexMTLError, KeyError):
    """An experiment, method, config key or data set name that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        msg = f"unknown {kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}."
        super().__init__(msg)
        self.kind, self.name, self.known, self.suggestions = kind, name, known, close

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class ShapeError(FlexMTLError, ValueError):
    """Blocks, encoders or inputs whose shapes do not fit together."""


class DataError(FlexMTLError, ValueError):
    """Data values that cannot be trained on as given: labels of the wrong kind or range for
    the task, NaN or infinite values, an empty split; the message names the task and split
    and says what to do."""


class DataNotFoundError(FlexMTLError, FileNotFoundError):
    """A data set that is not on this machine; the message says what to get and where."""


class TrainingDiverged(FlexMTLError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ConfigError(FlexMTLError, ValueError):
    """A configuration value that is malformed or out of range."""


class CorruptFileError(FlexMTLError, ValueError):
    """A run-folder file (JSON or checkpoint) that is truncated or not what flexmtl wrote;
    the message names the file and says what to do (e.g. delete it to redo that run)."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(message)
        self.path = Path(path)


class FolderMismatchError(ConfigError):
    """A run folder that holds runs of something else: another configuration, other tasks or
    data, another model, or runs whose configuration is unknown (no ``config.json`` or
    ``fingerprint.json``). The message lists what differs, ``key: old -> new``, and the two
    ways out: another output folder, or ``--restart`` (``resume="restart"``)."""


class FolderLockedError(FlexMTLError, RuntimeError):
    """A run folder that another live process is writing (its ``run.lock`` names the
    process and host); a lock left by a process that died on this machine is taken over."""


class RunFailedError(FlexMTLError, RuntimeError):
    """A run of a study that raised in a worker process (``jobs`` > 1, or Ray). The message
    names the run (method, seed, sweep value) and its error; ``traceback`` holds the
    worker's traceback text, ``error`` the original exception where it could be sent back
    (also the ``__cause__``), and ``expected`` says whether that was a flexmtl or OS error
    (one line says it all) rather than a bug (the traceback shows where)."""

    def __init__(self, run: str, error_type: str, message: str, traceback: str,
                 expected: bool, error: BaseException | None = None,
                 others: Sequence[str] = (), not_started: int = 0):
        what = message if expected else f"{error_type}: {message}"
        msg = f"run {run} failed: {what}"
        if others:
            msg += f"; {len(others)} other run(s) failed too: {', '.join(others)}"
        if not_started:
            msg += f"; {not_started} run(s) were not started (rerun the command to resume)"
        super().__init__(msg)
        self.run, self.error_type, self.traceback = run, error_type, traceback
        self.expected, self.error, self.others = expected, error, list(others)
        # a Python traceback of this error shows the worker's, as concurrent.futures does
        remote = WorkerTraceback(traceback)
        if error is not None:
            error.__cause__ = remote
        self.__cause__ = error if error is not None else remote


class WorkerTraceback(Exception):
    """The traceback text of an exception raised in a worker process (the ``__cause__``
    of a :class:`RunFailedError`'s error), printed as it was there."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0])
