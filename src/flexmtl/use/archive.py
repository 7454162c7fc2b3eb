"""Move the runs of an experiment folder between machines: :func:`pack_runs` writes them to
one ``.tar.gz``, :func:`unpack_runs` merges such an archive into a folder, where the command
that made it (``flexmtl run`` or ``flexmtl reproduce``) then resumes as if it had trained them
there.

What it is for: a study longer than one machine's session, run in sittings on machines that
do not share a disk (pack at the end of a sitting, unpack at the start of the next); the seeds
of one experiment trained on several machines and summarised on one.

An archive holds the folder's manifest (``config.json``), a listing (``archive.json``) and,
of every run (``[KEY=VALUE/]METHOD/seed-S``), the files a finished run is read from
(``result.json``, the logs, ``best.pt``, ``sharing.pt``, ``fingerprint.json``); of an unfinished
run also ``last.pt``, the checkpoint it resumes from (``finished_only`` leaves unfinished runs
out: ``last.pt`` holds the optimiser's state and the data order, and is often far larger than
the rest). Left out: the fallback copies ``*.prev.pt``, locks, TensorBoard logs, and what the
command rewrites once its runs are done (``results.json``, ``floors.json``, ``plots/``). The
archive's bytes depend only on those files (sorted, with no dates or owners), so packing the
same runs twice gives the same file.

Merging never loses a run: a run finished in the folder is kept; one finished in the archive
replaces an unfinished one in the folder; of two unfinished ones the folder's is kept. The
folder's configuration must be the archive's (the experiment, the sweep and every config key
but the ones that say how to run, as a rerun into the folder requires).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flexmtl.errors import CorruptFileError, FlexMTLError, FolderMismatchError
from flexmtl.run_folder import ExperimentFolder, FolderLock, TrainingRun, atomic_write

__all__ = ["pack_runs", "unpack_runs", "ArchiveSummary"]

#: the listing's name and what it says it is
LISTING = "archive.json"
FORMAT = "flexmtl-runs"
VERSION = 1

#: the files of a run an archive may hold
FINISHED_FILES = (TrainingRun.RESULT, TrainingRun.TRAIN_LOG, TrainingRun.EVAL_LOG,
                  TrainingRun.BEST, TrainingRun.SHARING, TrainingRun.FINGERPRINT)
UNFINISHED_FILES = (TrainingRun.LAST, TrainingRun.TRAIN_LOG, TrainingRun.EVAL_LOG,
                    TrainingRun.BEST, TrainingRun.SHARING, TrainingRun.FINGERPRINT)
_RUN = re.compile(r"^(?:(?P<point>[^/=]+=[^/]+)/)?(?P<method>[^/=.][^/=]*)/"
                  + re.escape(ExperimentFolder.SEED_PREFIX) + r"(?P<seed>\d+)$")


@dataclass
class ArchiveSummary:
    """What :func:`pack_runs` wrote or :func:`unpack_runs` did, run by run (folder-relative
    paths ``[KEY=VALUE/]METHOD/seed-S``)."""

    finished: list[str] = field(default_factory=list)  # packed, or merged in, finished
    unfinished: list[str] = field(default_factory=list)  # packed, or merged in, to resume
    kept: list[str] = field(default_factory=list)  # unpack: the folder's own run kept
    left_out: list[str] = field(default_factory=list)  # pack: unfinished, finished_only

    def lines(self) -> list[str]:
        parts = [(self.finished, "finished"), (self.unfinished, "unfinished (to resume)"),
                 (self.kept, "kept as they were in the folder (finished there, or both "
                             "unfinished)"),
                 (self.left_out, "unfinished, left out (finished_only)")]
        return [f"{len(runs)} run(s) {what}: {', '.join(runs)}" for runs, what in parts if runs]


def pack_runs(folder: str | Path, archive: str | Path, finished_only: bool = False,
              log: Callable[[str], None] | None = None) -> ArchiveSummary:
    """Write the runs of the experiment folder ``folder`` to ``archive`` (a ``.tar.gz``).

    The folder is locked while it is read (a command training into it is refused with
    :class:`~flexmtl.errors.FolderLockedError`: stop it first; rerunning it resumes). A
    finished run's ``result.json`` is checked first; a damaged one raises
    :class:`~flexmtl.errors.CorruptFileError`. Returns what was packed.
    """
    exp = ExperimentFolder(folder)
    if not exp.manifest.is_file():
        raise FlexMTLError(f"{exp.path} is not a run folder of flexmtl (it has no "
                           f"{exp.MANIFEST}); pass the folder a `flexmtl run --out` or a "
                           "reproduction study wrote, e.g. runs/reproduce/full/STUDY")
    summary = ArchiveSummary()
    files: dict[str, bytes] = {}
    with FolderLock(exp.path):
        exp.read_manifest()  # a damaged manifest is named here, not in the next machine
        files[exp.MANIFEST] = exp.manifest.read_bytes()
        for point in exp.points():
            for method_dir in exp.method_dirs(point).values():
                for run in exp.seed_runs(method_dir):
                    if run.seed is None:
                        continue
                    rel = run.path.relative_to(exp.path).as_posix()
                    if run.read_finished() is not None:
                        names, listed = FINISHED_FILES, summary.finished
                    elif run.last.is_file():
                        if finished_only:
                            summary.left_out.append(rel)
                            continue
                        names, listed = UNFINISHED_FILES, summary.unfinished
                    else:  # an attempt that stopped before its first checkpoint
                        continue
                    listed.append(rel)
                    for name in names:
                        if (run.path / name).is_file():
                            files[f"{rel}/{name}"] = (run.path / name).read_bytes()
    files[LISTING] = json.dumps({"format": FORMAT, "version": VERSION,
                                 "finished": summary.finished,
                                 "unfinished": summary.unfinished}, indent=1).encode()
    atomic_write(archive, lambda f: f.write(_tar_gz(files)))
    for line in [f"wrote {archive}"] + summary.lines():
        (log or print)(line)
    return summary


def _tar_gz(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``files`` (name -> bytes) whose bytes depend on them alone."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _read_archive(archive: Path) -> tuple[dict, dict, dict[str, dict[str, bytes]]]:
    """The listing, the manifest (parsed) and each run's files of an archive, checked."""
    def corrupt(why: str) -> CorruptFileError:
        return CorruptFileError(archive, f"{archive} is not an archive of flexmtl runs "
                                         f"(`flexmtl pack` writes them): {why}")

    if not archive.is_file():
        raise FlexMTLError(f"archive {archive} does not exist")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            top: dict[str, bytes] = {}
            runs: dict[str, dict[str, bytes]] = {}
            for m in members:
                if m.isdir():
                    continue
                if not m.isfile():
                    raise corrupt(f"{m.name!r} is not a plain file")
                handle = tar.extractfile(m)
                data = handle.read() if handle is not None else b""
                if m.name in (LISTING, ExperimentFolder.MANIFEST):
                    top[m.name] = data
                    continue
                rel, _, name = m.name.rpartition("/")
                match = _RUN.match(rel)
                if match is None or name not in UNFINISHED_FILES + FINISHED_FILES \
                        or ".." in rel.split("/"):
                    raise corrupt(f"unexpected member {m.name!r}")
                runs.setdefault(rel, {})[name] = data
    except tarfile.ReadError as exc:
        raise corrupt("not a tar file, gzipped or not, or a truncated one") from exc
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise corrupt(" ".join(str(exc).split()) or type(exc).__name__) from exc
    # an OSError of the disk itself passes, naming the file
    try:
        listing = json.loads(top[LISTING])
        manifest = json.loads(top[ExperimentFolder.MANIFEST])
    except KeyError as exc:
        raise corrupt(f"it has no {exc.args[0]}") from exc
    except ValueError as exc:
        raise corrupt(f"a listing or manifest that is not JSON ({exc})") from exc
    if not isinstance(listing, dict) or listing.get("format") != FORMAT:
        raise corrupt(f"its {LISTING} does not say format {FORMAT!r}")
    if listing.get("version") != VERSION:
        raise corrupt(f"format version {listing.get('version')!r}; this flexmtl reads "
                      f"version {VERSION}")
    if not isinstance(manifest, dict) or "experiment" not in manifest:
        raise corrupt(f"its {ExperimentFolder.MANIFEST} names no experiment")
    for rel in listing.get("finished", []):
        if TrainingRun.RESULT not in runs.get(rel, {}):
            raise corrupt(f"run {rel} is listed as finished but has no {TrainingRun.RESULT}")
    for rel in listing.get("unfinished", []):
        if TrainingRun.LAST not in runs.get(rel, {}):
            raise corrupt(f"run {rel} is listed as unfinished but has no {TrainingRun.LAST}")
    listed = set(listing.get("finished", [])) | set(listing.get("unfinished", []))
    if set(runs) - listed:
        raise corrupt(f"runs not in its listing: {', '.join(sorted(set(runs) - listed))}")
    return listing, manifest, runs


def unpack_runs(archive: str | Path, folder: str | Path,
                log: Callable[[str], None] | None = None) -> ArchiveSummary:
    """Merge the runs of ``archive`` (:func:`pack_runs`) into the experiment folder
    ``folder`` (created if need be); returns what was merged and what was kept.

    Refused, with nothing written: a folder of another configuration
    (:class:`~flexmtl.errors.FolderMismatchError`, listing ``key: folder -> archive``), a
    folder locked by a command training into it, a damaged archive
    (:class:`~flexmtl.errors.CorruptFileError`). The folder's ``results.json`` (and
    ``floors.json``) are deleted when a run is merged in, since they no longer summarise
    every run: rerun the command that made the folder to write them again (it trains only the
    runs still missing).
    """
    from flexmtl.runner import _comparable  # the rule a rerun into the folder applies
    from flexmtl.training.fingerprint import fingerprint_diff

    archive = Path(archive)
    listing, manifest, runs = _read_archive(archive)
    exp = ExperimentFolder(folder)
    summary = ArchiveSummary()
    with FolderLock(exp.path):
        old = exp.read_manifest()
        name = manifest["experiment"]
        if old is None and exp.has_runs():
            raise FolderMismatchError(
                f"run folder {exp.path} holds runs but no {exp.MANIFEST}, so their "
                "configuration is unknown; unpack into another folder")
        if old is not None:
            diff = fingerprint_diff(_comparable(old, name), _comparable(manifest, name))
            if diff:
                raise FolderMismatchError(
                    f"run folder {exp.path} holds runs of another configuration than "
                    f"{archive} ({'; '.join(diff)}); unpack into another folder")
        finished = set(listing.get("finished", []))
        for rel in sorted(runs):
            run = TrainingRun(exp.path / rel)
            if run.is_finished() or (rel not in finished and run.last.is_file()):
                summary.kept.append(rel)
                continue
            run.delete_files()  # an unfinished attempt the archive's finished run replaces
            for fname, data in sorted(runs[rel].items()):
                _write_bytes(run.path / fname, data)
            (summary.finished if rel in finished else summary.unfinished).append(rel)
        if old is None:
            merged = manifest
        else:
            merged = {**old,
                      "methods": list(dict.fromkeys(old["methods"] + manifest["methods"])),
                      "seeds": sorted(set(old["seeds"]) | set(manifest["seeds"]))}
        exp.write_manifest(merged)
        if summary.finished or summary.unfinished:
            for stale in (exp.results, exp.floors):
                stale.unlink(missing_ok=True)
    for line in [f"unpacked {archive} into {exp.path}"] + summary.lines():
        (log or print)(line)
    return summary
