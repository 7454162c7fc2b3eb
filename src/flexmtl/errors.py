"""Exceptions with messages that tell the user what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
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
