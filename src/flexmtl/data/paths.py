"""Where flexmtl looks for data, shared helpers, and the error for malformed data files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TypedDict

from flexmtl.errors import FlexMTLError

ENV_VAR = "FLEXMTL_DATA"
DEFAULT_ROOT = Path("~/.flexmtl/data")


class DataFormatError(FlexMTLError, ValueError):
    """A data file that exists but cannot be read; the message names the file and the problem."""


class SourceStatus(TypedDict):
    """One row of :func:`flexmtl.data.data_status`."""

    name: str
    present: bool  # the full / original data is on disk where flexmtl looks
    looks_in: str  # where flexmtl looks for it
    using: str | None  # what a load would read now (None: nothing, the load would fail)
    exact: bool  # whether that is the paper's data in the paper's form
    to_get: str  # what to download to get the exact data ("" when already exact)


def complete_or_missing(name: str, looks_in: str, using: str | None,
                        to_get: str) -> SourceStatus:
    """The status row of a source that is either all there (``using`` says what is read;
    the paper's data, nothing to get) or missing (``using`` is None; ``to_get`` says what)."""
    present = using is not None
    return SourceStatus(name=name, present=present, looks_in=looks_in, using=using,
                        exact=present, to_get="" if present else to_get)


def status_label(row: SourceStatus) -> str:
    """'present' (the original files are where flexmtl looks), 'built-in' (an identical copy
    that ships with an installed package), 'stand-in' (other data replaces it) or 'missing'."""
    if row["present"]:
        return "present"
    if row["using"]:
        return "built-in" if row["exact"] else "stand-in"
    return "missing"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FLEXMTL_DATA``, else ``~/.flexmtl/data``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or else ``folder/name.gz``; None when neither is a file."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
