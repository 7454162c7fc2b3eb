"""Where a run's numbers come from: the code, the libraries, the device and the data.

Every finished run records :func:`run_provenance` in its ``result.json`` (key
``"provenance"``)::

    flexmtl       the package version
    commit        the git commit of the checkout flexmtl is imported from (None outside git)
    dirty         whether that checkout has uncommitted changes to tracked files (None
                  outside git; untracked files do not count -- the source hash covers them)
    source_hash   :func:`source_hash`: the code that can change a run's numbers
    python, torch, numpy   versions
    device        the device the run trained on (with the GPU's name on cuda)
    data          per task, the digests of its splits' inputs and targets: those of the run's
                  ``fingerprint.json`` (:func:`~flexmtl.training.fingerprint.data_digest`)

**The source-hash rule.** :func:`source_hash` is the SHA-256 of every ``.py`` file of the
``flexmtl`` package (relative path and bytes, in sorted order) except those that cannot change
a run's numbers: the command line (``cli.py``, ``__main__.py``), the report of ``flexmtl
reproduce`` (the ``reproduction/`` package: study catalogue, verdicts, rendering -- the
protocols it passes to a run are in the run's config, which is checked on its own), plotting
(``analysis/plots.py``, ``analysis/layer_vis_plots.py``), the use of finished runs (the
``use/`` package: loading, evaluating and exporting a trained model; no module the hash
covers imports it, a test checks) and this module. Everything else
(models, sharing, training, data loaders, experiments, the runner and its run folders) counts,
so any edit there makes earlier runs *stale* (:func:`stale_reasons`): ``flexmtl reproduce``
then reruns them (or, with ``--allow-stale``, reuses them and says so in the report), and
``flexmtl run`` warns when it averages them with new ones.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["source_hash", "source_files", "git_state", "code_provenance", "run_provenance",
           "data_digests", "stale_reasons", "describe", "distinct", "MATCH_KEYS", "SOURCE_EXCLUDED"]

#: package-relative paths (files, or folders ending in ``/``) left out of :func:`source_hash`
SOURCE_EXCLUDED = ("cli.py", "__main__.py", "provenance.py", "reproduction/",
                   "analysis/plots.py", "analysis/layer_vis_plots.py", "use/")
#: what must equal the current code's for a finished run to be reused without warning
MATCH_KEYS = ("source_hash", "torch", "numpy")

PACKAGE = Path(__file__).resolve().parent


def source_files(package: Path = PACKAGE) -> list[Path]:
    """The ``.py`` files :func:`source_hash` covers, sorted by package-relative path."""
    files = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if any(rel == ex or (ex.endswith("/") and rel.startswith(ex)) for ex in SOURCE_EXCLUDED):
            continue
        files.append(path)
    return files


@functools.cache
def _hash_of(package: Path) -> str:
    h = hashlib.sha256()
    for path in source_files(package):
        rel = path.relative_to(package).as_posix().encode()
        data = path.read_bytes()
        h.update(b"%d:%s%d:" % (len(rel), rel, len(data)))
        h.update(data)
    return h.hexdigest()


def source_hash() -> str:
    """The SHA-256 of the code that can change a run's numbers (the rule: module docstring);
    computed once per process."""
    return _hash_of(PACKAGE)


@functools.cache
def git_state(where: Path = PACKAGE) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``where``; both None when it is
    not in one (an installed wheel) or git is absent."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                  text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def code_provenance() -> dict[str, Any]:
    """What this process runs: flexmtl version, git commit and dirtiness, source hash and the
    versions of Python, torch and numpy."""
    import numpy
    import torch

    from flexmtl import __version__

    return {"flexmtl": __version__, **git_state(), "source_hash": source_hash(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def data_digests(fingerprint: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task, the data digests of a run fingerprint
    (:func:`~flexmtl.training.fingerprint.run_fingerprint`): ``{task: {"train.x": ...,
    "train.y": ..., "train.size": ..., ...}}`` (a split the task lacks: None)."""
    out: dict[str, dict[str, Any]] = {}
    for task in fingerprint.get("tasks") or []:
        prefix = f"task {task}."
        digests: dict[str, Any] = {}
        for split in ("train", "val", "test"):
            if f"{prefix}{split}" in fingerprint:  # the split is absent
                digests[split] = None
            for part in ("size", "x", "y"):
                key = f"{prefix}{split}.{part}"
                if key in fingerprint:
                    digests[f"{split}.{part}"] = fingerprint[key]
        out[task] = digests
    return out


def run_provenance(device: Any, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of a run that trained on ``device`` what ``fingerprint`` says."""
    return {**code_provenance(), "device": _device(device), "data": data_digests(fingerprint)}


def _device(device: Any) -> str:
    text = str(device)
    if text.startswith("cuda"):
        try:
            import torch

            return f"{text} ({torch.cuda.get_device_name(torch.device(text))})"
        except Exception:  # no such device here: the name alone
            return text
    return text


def stale_reasons(recorded: Mapping[str, Any] | None,
                  current: Mapping[str, Any] | None = None) -> list[str]:
    """Why a run with provenance ``recorded`` was not run by the current code: ``key: old ->
    new`` per differing :data:`MATCH_KEYS`, or ``["no provenance recorded"]`` (a run of an
    older flexmtl); empty when it matches."""
    if not isinstance(recorded, Mapping):
        return ["no provenance recorded"]
    current = code_provenance() if current is None else current
    return [f"{key}: {_short(recorded.get(key))} -> {_short(current.get(key))}"
            for key in MATCH_KEYS if recorded.get(key) != current.get(key)]


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if isinstance(value, str) and len(text) == 64 else text


def describe(recorded: Mapping[str, Any] | None) -> str:
    """Where a run's code came from, briefly: ``commit abc1234 (dirty), source 0123456789ab``
    or ``an older flexmtl (no provenance)``."""
    if not isinstance(recorded, Mapping):
        return "an older flexmtl (no provenance)"
    parts = []
    commit = recorded.get("commit")
    if commit:
        parts.append(f"commit {str(commit)[:10]}" + (" (dirty)" if recorded.get("dirty") else ""))
    parts.append(f"source {_short(recorded.get('source_hash'))}")
    return ", ".join(parts)


def distinct(records: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """The distinct :func:`describe` of some runs' provenance, in first-seen order."""
    return list(dict.fromkeys(describe(r) for r in records))
