"""Move the runs of an experiment folder between machines: :func:`pack_runs` writes them to
one ``.tar.gz``, :func:`unpack_runs` merges such an archive into a folder, where the command
that made it (``flexmtl run`` or ``flexmtl reproduce``) then resumes as if it had trained them
there.

What it is for: a study longer than one machine's session, run in sittings on machines that
do not share a disk (pack at the end of a sitting, unpack at the start of the next); the seeds
of one experiment trained on several machines and summarised on one.

An archive holds the folder's manifest (``config.json``), a listing (``archive.json``: the
finished runs, and the unfinished ones with the step of their checkpoint) and, of every run
(``[KEY=VALUE/]METHOD/seed-S``), the files a finished run is read from (``result.json``, the
logs, ``best.pt``, ``sharing.pt``, ``fingerprint.json``); of an unfinished run the files it
resumes from instead (``last.pt`` and the rest, checked and settled first as a resume would:
a damaged ``last.pt`` replaced by its fallback, the model its checkpoint selected in
``best.pt``). ``finished_only`` leaves unfinished runs out (``last.pt`` holds the optimiser's
state and the data order, and is often far larger than the rest); ``without_train_logs``
leaves out finished runs' ``train_log.csv`` (the per-step training losses: nothing flexmtl
reads once a run has finished -- the summary, the report and the plots read ``result.json``,
``eval_log.csv`` and ``sharing.pt`` -- and often most of a finished run's bytes; an unfinished
run keeps it, since its training goes on appending to it). Left out always: locks,
TensorBoard logs, and what the command rewrites once its runs are done (``results.json``,
``floors.json``, ``plots/``). The archive's bytes depend only on the files it holds (sorted,
with no dates or owners), so packing the same runs twice gives the same file.

Merging never loses a run: a run finished in the folder is kept; one finished in the archive
replaces an unfinished one; of two unfinished ones the one with the later checkpoint is kept
(the folder's on a tie). The folder's configuration must be the archive's when the folder
holds runs (the experiment, the sweep and every config key but the ones that say how to run:
the rule a rerun into the folder applies). Each run is written beside its place and then
renamed into it, and the manifest is written before any run, so an unpack that is killed
leaves every run whole (the old or the new one) and can simply be run again.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flexmtl.errors import CorruptFileError, FlexMTLError, FolderMismatchError
from flexmtl.run_folder import ExperimentFolder, FolderLock, TrainingRun, atomic_write

__all__ = ["pack_runs", "unpack_runs", "ArchiveSummary"]

#: the listing's name and what it says it is
LISTING = "archive.json"
FORMAT = "flexmtl-runs"
VERSION = 1

#: the files of a run an archive may hold: of a finished run, of an unfinished one
_EITHER = (TrainingRun.TRAIN_LOG, TrainingRun.EVAL_LOG, TrainingRun.BEST, TrainingRun.SHARING,
           TrainingRun.FINGERPRINT)
FINISHED_FILES = (TrainingRun.RESULT, *_EITHER)
UNFINISHED_FILES = (TrainingRun.LAST, *_EITHER)
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f]')
_SEED = re.compile(re.escape(ExperimentFolder.SEED_PREFIX) + r"(0|[1-9][0-9]*)", re.ASCII)


def _is_run_path(rel: str) -> bool:
    """Whether ``rel`` names a run as flexmtl lays them out, ``[KEY=VALUE/]METHOD/seed-S``,
    with no segment a file system could read as something else: no separator, drive,
    wildcard or control character, not ``.`` or ``..``, no trailing dot or space."""
    parts = rel.split("/")
    if len(parts) not in (2, 3) or _SEED.fullmatch(parts[-1]) is None:
        return False
    *point, method = parts[:-1]
    if "=" in method or (point and "=" not in point[0]):
        return False
    return all(seg and _UNSAFE.search(seg) is None and seg not in (".", "..")
               and not seg.endswith((".", " ")) for seg in parts[:-1])


#: the prefix of the folders an unpack writes a run into before renaming it into place
_PENDING = ".unpack-"


@dataclass
class ArchiveSummary:
    """What :func:`pack_runs` wrote or :func:`unpack_runs` did, run by run (folder-relative
    paths ``[KEY=VALUE/]METHOD/seed-S``)."""

    finished: list[str] = field(default_factory=list)  # packed, or merged in, finished
    unfinished: list[str] = field(default_factory=list)  # packed, or merged in, to resume
    kept: list[str] = field(default_factory=list)  # unpack: the folder's own run kept
    left_out: list[str] = field(default_factory=list)  # pack: unfinished, finished_only
    logs_left_out: list[str] = field(default_factory=list)  # pack: without_train_logs

    def lines(self) -> list[str]:
        parts = [(self.finished, "finished"), (self.unfinished, "unfinished (to resume)"),
                 (self.kept, "kept as they were in the folder (finished there, or unfinished "
                             "with a checkpoint as late as the archive's)"),
                 (self.left_out, "unfinished, left out (finished_only)"),
                 (self.logs_left_out, f"finished, packed without their {TrainingRun.TRAIN_LOG} "
                                      "(without_train_logs)")]
        return [f"{len(runs)} run(s) {what}: {', '.join(runs)}" for runs, what in parts if runs]


# ---------------------------------------------------------------------- pack


def pack_runs(folder: str | Path, archive: str | Path, finished_only: bool = False,
              without_train_logs: bool = False,
              log: Callable[[str], None] | None = None) -> ArchiveSummary:
    """Write the runs of the experiment folder ``folder`` to ``archive`` (a ``.tar.gz``).

    The folder is locked while it is read (a command training into it is refused with
    :class:`~flexmtl.errors.FolderLockedError`: stop it first; rerunning it resumes). A
    finished run's ``result.json`` and an unfinished run's checkpoints are checked first (as
    a resume checks them); a damaged one raises :class:`~flexmtl.errors.CorruptFileError`
    naming it. Returns what was packed.
    """
    exp = ExperimentFolder(folder)
    if not exp.manifest.is_file():
        raise FlexMTLError(f"{exp.path} is not a run folder of flexmtl (it has no "
                           f"{exp.MANIFEST}); pass the folder a `flexmtl run --out` or a "
                           "reproduction study wrote, e.g. runs/reproduce/full/STUDY")
    summary = ArchiveSummary()
    finished_files = tuple(n for n in FINISHED_FILES
                           if not (without_train_logs and n == TrainingRun.TRAIN_LOG))
    files: dict[str, Path] = {}
    steps: dict[str, int] = {}
    with FolderLock(exp.path):
        exp.read_manifest()  # a damaged manifest is named here, not on the next machine
        files[exp.MANIFEST] = exp.manifest
        for point in exp.points():
            for method_dir in exp.method_dirs(point).values():
                for run in exp.seed_runs(method_dir):
                    if run.seed is None:
                        continue
                    rel = run.path.relative_to(exp.path).as_posix()
                    if not _is_run_path(rel):
                        raise FlexMTLError(f"run {rel} of {exp.path} has a name that another "
                                           "file system may read otherwise (a separator, "
                                           "drive, wildcard or trailing dot or space); "
                                           "rename its sweep value or method to pack it")
                    if run.read_finished() is not None:
                        names, listed = finished_files, summary.finished
                        if without_train_logs and run.train_log.is_file():
                            summary.logs_left_out.append(rel)
                    elif run.last.is_file() or run.last_prev.is_file():
                        if finished_only:
                            summary.left_out.append(rel)
                            continue
                        with FolderLock(run.path):  # not a Trainer's of its own
                            state = run.read_resumable(log)  # settles last.pt and best.pt
                        if state is None:
                            continue
                        steps[rel] = int(state["step"])
                        names, listed = UNFINISHED_FILES, summary.unfinished
                    else:  # an attempt that stopped before its first checkpoint
                        continue
                    listed.append(rel)
                    for name in names:
                        if (run.path / name).is_file():
                            files[f"{rel}/{name}"] = run.path / name
        listing = json.dumps({"format": FORMAT, "version": VERSION,
                              "finished": summary.finished,
                              "unfinished": {rel: {"step": steps[rel]}
                                             for rel in summary.unfinished}},
                             indent=1).encode()
        atomic_write(archive, lambda f: _write_tar_gz(f, files, listing))
    for line in [f"wrote {archive}"] + summary.lines():
        (log or print)(line)
    return summary


def _write_tar_gz(out: IO, files: dict[str, Path], listing: bytes) -> None:
    """A gzipped tar of the listing and ``files`` (name in the archive -> file) into ``out``,
    streamed, whose bytes depend on the files' contents alone."""
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def member(name: str, size: int) -> tarfile.TarInfo:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, 0, 0o644
            return info

        tar.addfile(member(LISTING, len(listing)), io.BytesIO(listing))
        for name in sorted(files):
            with open(files[name], "rb") as f:
                tar.addfile(member(name, files[name].stat().st_size), f)


# ---------------------------------------------------------------------- unpack


@dataclass
class _Contents:
    """What an archive holds, checked: its listing, its manifest and each run's members."""

    finished: list[str]
    unfinished: dict[str, int]  # run -> step of its checkpoint
    manifest: dict
    runs: dict[str, dict[str, tarfile.TarInfo]]  # run -> file name -> member


def _read_contents(archive: Path, tar: tarfile.TarFile) -> _Contents:
    def corrupt(why: str) -> CorruptFileError:
        return CorruptFileError(archive, f"{archive} is not an archive of flexmtl runs "
                                         f"(`flexmtl pack` writes them): {why}")

    top: dict[str, Any] = {}
    runs: dict[str, dict[str, tarfile.TarInfo]] = {}
    for m in tar.getmembers():
        if m.isdir():
            continue
        if not m.isfile():
            raise corrupt(f"{m.name!r} is not a plain file")
        if m.name in (LISTING, ExperimentFolder.MANIFEST):
            handle = tar.extractfile(m)
            try:
                top[m.name] = json.loads(handle.read() if handle is not None else b"")
            except ValueError as exc:
                raise corrupt(f"its {m.name} is not JSON ({exc})") from exc
            continue
        rel, _, name = m.name.rpartition("/")
        if not _is_run_path(rel) or name not in UNFINISHED_FILES + FINISHED_FILES:
            raise corrupt(f"unexpected member {m.name!r}")
        runs.setdefault(rel, {})[name] = m
    for name in (LISTING, ExperimentFolder.MANIFEST):
        if name not in top:
            raise corrupt(f"it has no {name}")
    listing, manifest = top[LISTING], top[ExperimentFolder.MANIFEST]
    if not isinstance(listing, dict) or listing.get("format") != FORMAT:
        raise corrupt(f"its {LISTING} does not say format {FORMAT!r}")
    if listing.get("version") != VERSION:
        raise corrupt(f"format version {listing.get('version')!r}; this flexmtl reads "
                      f"version {VERSION}")
    finished, unfinished = listing.get("finished"), listing.get("unfinished")
    if not (isinstance(finished, list) and all(isinstance(r, str) for r in finished)
            and isinstance(unfinished, dict)
            and all(isinstance(v, dict) and type(v.get("step")) is int
                    for v in unfinished.values())):
        raise corrupt(f"its {LISTING} does not list finished runs (a list of names) and "
                      "unfinished ones (each with the step of its checkpoint)")
    if not (isinstance(manifest, dict) and isinstance(manifest.get("experiment"), str)
            and isinstance(manifest.get("methods"), list)
            and all(isinstance(m, str) for m in manifest["methods"])
            and isinstance(manifest.get("seeds"), list)
            and all(type(s) is int for s in manifest["seeds"])):
        raise corrupt(f"its {ExperimentFolder.MANIFEST} does not name the experiment, its "
                      "methods and its seeds")
    for rel in finished:
        if TrainingRun.RESULT not in runs.get(rel, {}):
            raise corrupt(f"run {rel} is listed as finished but has no {TrainingRun.RESULT}")
    for rel in unfinished:
        if TrainingRun.LAST not in runs.get(rel, {}):
            raise corrupt(f"run {rel} is listed as unfinished but has no {TrainingRun.LAST}")
    unlisted = set(runs) - set(finished) - set(unfinished)
    if unlisted or set(finished) & set(unfinished):
        raise corrupt(f"runs not listed once: {', '.join(sorted(unlisted or set(finished)))}")
    return _Contents(finished, {r: v["step"] for r, v in unfinished.items()}, manifest, runs)


def unpack_runs(archive: str | Path, folder: str | Path,
                log: Callable[[str], None] | None = None) -> ArchiveSummary:
    """Merge the runs of ``archive`` (:func:`pack_runs`) into the experiment folder
    ``folder`` (created if need be); returns what was merged and what was kept.

    Refused, with nothing written: a folder holding runs of another configuration
    (:class:`~flexmtl.errors.FolderMismatchError`, listing ``key: folder's -> archive's``),
    a folder (or a run in it) locked by a command training into it, a damaged archive
    (:class:`~flexmtl.errors.CorruptFileError`). When a run is merged in, the folder's
    ``results.json`` and ``floors.json`` are deleted, since they no longer summarise every
    run (its ``plots/`` are redrawn then too): rerun the command that made the folder to
    write them again (it trains only the runs still missing).
    """
    from flexmtl.runner import _comparable  # the rule a rerun into the folder applies
    from flexmtl.training.fingerprint import fingerprint_diff

    archive = Path(archive)
    if not archive.is_file():
        raise FlexMTLError(f"archive {archive} does not exist")
    exp = ExperimentFolder(folder)
    summary = ArchiveSummary()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            contents = _read_contents(archive, tar)
            manifest = contents.manifest
            with FolderLock(exp.path):
                old = exp.read_manifest()
                has_runs = exp.has_runs()
                if old is None and has_runs:
                    raise FolderMismatchError(
                        f"run folder {exp.path} holds runs but no {exp.MANIFEST}, so their "
                        "configuration is unknown; unpack into another folder (or, if an "
                        "unpack or run that never finished left them, delete them)")
                if old is not None and has_runs:
                    name = manifest["experiment"]
                    diff = fingerprint_diff(_comparable(old, name), _comparable(manifest, name))
                    if diff:
                        raise FolderMismatchError(
                            f"run folder {exp.path} holds runs of another configuration than "
                            f"{archive} (folder's -> archive's: {'; '.join(diff)}); unpack "
                            "into another folder")
                    manifest = {**old,
                                "methods": list(dict.fromkeys(old["methods"]
                                                              + manifest["methods"])),
                                "seeds": sorted(set(old["seeds"]) | set(manifest["seeds"]))}
                todo = _plan(exp, contents, summary)
                # first what makes the folder consistent whatever happens next
                exp.write_manifest(manifest)
                if todo:
                    for stale in (exp.results, exp.floors):
                        stale.unlink(missing_ok=True)
                for rel in todo:
                    _swap_in(exp, rel, contents.runs[rel], tar, archive)
    except (tarfile.ReadError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptFileError(archive, f"{archive} is not an archive of flexmtl runs (`flexmtl "
                                        "pack` writes them): not a tar file, gzipped or not, "
                                        "or a truncated one") from exc
    for line in [f"unpacked {archive} into {exp.path}"] + summary.lines():
        (log or print)(line)
    return summary


def _plan(exp: ExperimentFolder, contents: _Contents, summary: ArchiveSummary) -> list[str]:
    """The archive's runs to write into the folder (each listed in ``summary``); the others
    are the folder's own, kept. A run a process trains now is refused (its lock)."""
    todo = []
    for rel in sorted(contents.runs):
        run = TrainingRun(exp.path / rel)
        for leftover in run.path.parent.glob(f"{_PENDING}{run.path.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)  # of an unpack that was killed
        if run.path.exists():
            lock = FolderLock(run.path)
            lock.acquire()  # refused while a Trainer of its own trains it
            lock.release()
        if run.is_finished():
            summary.kept.append(rel)
            continue
        if rel in contents.unfinished and _checkpoint_step(run) >= contents.unfinished[rel]:
            summary.kept.append(rel)
            continue
        todo.append(rel)
        (summary.finished if rel in contents.finished else summary.unfinished).append(rel)
    return todo


def _checkpoint_step(run: TrainingRun) -> int:
    """The step the folder's unfinished run would resume from (-1: none, or damaged)."""
    try:
        state = run.read_resumable(lambda _message: None)
    except CorruptFileError:
        return -1
    return -1 if state is None else int(state["step"])


def _swap_in(exp: ExperimentFolder, rel: str, members: dict[str, tarfile.TarInfo],
             tar: tarfile.TarFile, archive: Path) -> None:
    """Write the run ``rel`` beside its place, then rename it into place (the folder's own
    attempt, which it replaces, is deleted after)."""
    target = (exp.path / rel).resolve()
    if not target.is_relative_to(exp.path.resolve()):  # _is_run_path admits no such name; be sure
        raise FlexMTLError(f"run {rel} would be written outside {exp.path}")
    token = secrets.token_hex(4)
    pending = target.parent / f"{_PENDING}{target.name}.{token}"
    pending.mkdir(parents=True)
    try:
        for name, member in sorted(members.items()):
            source = tar.extractfile(member)
            if source is None:
                raise CorruptFileError(archive, f"{archive}: {member.name} cannot be read")
            with source, open(pending / name, "wb") as out:
                shutil.copyfileobj(source, out)
        replaced = None
        if target.exists():
            replaced = target.parent / f"{_PENDING}{target.name}.{token}.old"
            target.rename(replaced)
        pending.rename(target)
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
