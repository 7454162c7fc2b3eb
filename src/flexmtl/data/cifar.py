"""CIFAR-100 from the official python version (Krizhevsky, University of Toronto).

``cifar-100-python.tar.gz`` from the CIFAR page of the University of Toronto unpacks to a
folder ``cifar-100-python/`` with three pickles: ``train`` (50,000 images), ``test``
(10,000) and ``meta`` (label names). flexmtl reads them from, in order,
``<data root>/cifar-100/cifar-100-python/``, ``<data root>/cifar-100/`` (the three files
directly), and ``<data root>/cifar-100-python/``. Used by the Gumbel-Matrix clusters
experiment (Sec. V-C: one task per superclass, predicting the fine label).
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flexmtl.data.paths import (
    ENV_VAR,
    DataFormatError,
    SourceStatus,
    complete_or_missing,
    data_root,
)
from flexmtl.errors import DataNotFoundError

ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FILES = ("train", "test", "meta")
NUM_FINE = 100
NUM_COARSE = 20
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Cifar100Data:
    """CIFAR-100: ``*_x`` float32 (N, 3, 32, 32) in [0, 1] (channels R, G, B);
    ``*_fine`` int64 (N,) in 0..99, ``*_coarse`` int64 (N,) superclass in 0..19;
    ``fine_names[i]`` / ``coarse_names[j]`` name label i / superclass j;
    ``fine_to_coarse[i]`` is the superclass of fine label i (-1 if i has no training image).
    Arrays are cached and shared between calls: copy them before changing them in place.
    """

    train_x: np.ndarray
    train_fine: np.ndarray
    train_coarse: np.ndarray
    test_x: np.ndarray
    test_fine: np.ndarray
    test_coarse: np.ndarray
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]
    fine_to_coarse: np.ndarray
    source: str


def load_cifar100(root: str | os.PathLike[str] | None = None) -> Cifar100Data:
    """CIFAR-100 from the python pickles (see the module docstring for where it looks)."""
    base = data_root(root)
    folder = _find_folder(base)
    if folder is None:
        partial = next(
            (d for d in _candidates(base) if any((d / f).is_file() for f in FILES)), None
        )
        if partial is not None:
            missing = [f for f in FILES if not (partial / f).is_file()]
            raise DataNotFoundError(
                f"CIFAR-100: {partial} holds only some of the files train, test, meta; missing "
                f"{', '.join(missing)}. {_download_hint(base)}"
            )
        raise DataNotFoundError(f"CIFAR-100 not found. {_download_hint(base)}")
    return _read(folder)


def cifar100_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """One row: whether the CIFAR-100 pickles are where flexmtl looks."""
    base = data_root(root)
    folder = _find_folder(base)
    return [complete_or_missing(
        "cifar-100", ", then ".join(str(d) for d in _candidates(base)),
        f"CIFAR-100 python pickles in {folder}" if folder else None, _download_hint(base))]


def _candidates(base: Path) -> tuple[Path, ...]:
    return (base / "cifar-100" / "cifar-100-python", base / "cifar-100", base / "cifar-100-python")


def _find_folder(base: Path) -> Path | None:
    return next((d for d in _candidates(base) if all((d / f).is_file() for f in FILES)), None)


def _download_hint(base: Path) -> str:
    target = base / "cifar-100"
    return (
        f"Download {ARCHIVE} (the python version, MD5 {ARCHIVE_MD5}) from the CIFAR page of "
        f"the University of Toronto (Alex Krizhevsky's CIFAR-10 and CIFAR-100 datasets) and "
        f"extract it into {target}, so that {target / 'cifar-100-python'} holds the files "
        f"train, test and meta; or set {ENV_VAR} to a data root whose cifar-100/ folder holds them."
    )


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as exc:  # what a damaged pickle raises
        raise DataFormatError(
            f"CIFAR-100 file {path} is not a readable pickle ({type(exc).__name__}: {exc}); "
            f"extract it again from {ARCHIVE}."
        ) from exc
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"CIFAR-100 file {path}: expected a pickled dict, found {type(obj).__name__}."
        )
    return obj


def _field(obj: dict[Any, Any], key: str, path: Path) -> Any:
    """``obj[b'key']`` (the official encoding='bytes' keys), else ``obj['key']``."""
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise DataFormatError(f"CIFAR-100 file {path}: no key {key.encode()!r}.")


def _names(obj: dict[Any, Any], key: str, path: Path, count: int) -> tuple[str, ...]:
    raw = _field(obj, key, path)
    names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw)
    if len(names) != count:
        raise DataFormatError(
            f"CIFAR-100 file {path}: {key} has {len(names)} names, expected {count}."
        )
    return names


def _labels(obj: dict[Any, Any], key: str, path: Path, n: int, count: int) -> np.ndarray:
    try:
        y = np.asarray(_field(obj, key, path), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"CIFAR-100 file {path}: {key} are not integers.") from exc
    if y.shape != (n,):
        raise DataFormatError(f"CIFAR-100 file {path}: expected {n} {key}, found shape {y.shape}.")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= count):
        raise DataFormatError(
            f"CIFAR-100 file {path}: {key} must lie in 0..{count - 1}, "
            f"found {int(y.min())}..{int(y.max())}."
        )
    return y


def _split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    data = np.asarray(_field(obj, "data", path))
    if data.ndim != 2 or data.shape[1] != _PIXELS or data.dtype != np.uint8:
        raise DataFormatError(
            f"CIFAR-100 file {path}: expected data of uint8 and shape (N, {_PIXELS}), "
            f"found {data.dtype} {data.shape}."
        )
    n = len(data)
    fine = _labels(obj, "fine_labels", path, n, NUM_FINE)
    coarse = _labels(obj, "coarse_labels", path, n, NUM_COARSE)
    # Each row: 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    x = data.reshape(n, 3, 32, 32).astype(np.float32)
    x /= 255.0
    return x, fine, coarse


@functools.lru_cache(maxsize=1)
def _read(folder: Path) -> Cifar100Data:
    meta_path = folder / "meta"
    meta = _unpickle(meta_path)
    fine_names = _names(meta, "fine_label_names", meta_path, NUM_FINE)
    coarse_names = _names(meta, "coarse_label_names", meta_path, NUM_COARSE)
    train_x, train_fine, train_coarse = _split(folder / "train")
    test_x, test_fine, test_coarse = _split(folder / "test")
    return Cifar100Data(
        train_x=train_x,
        train_fine=train_fine,
        train_coarse=train_coarse,
        test_x=test_x,
        test_fine=test_fine,
        test_coarse=test_coarse,
        fine_names=fine_names,
        coarse_names=coarse_names,
        fine_to_coarse=_fine_to_coarse(train_fine, train_coarse, folder / "train"),
        source=f"CIFAR-100 python pickles in {folder} ({len(train_x)} train / {len(test_x)} test)",
    )


def _fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, path: Path) -> np.ndarray:
    """The superclass of each fine label; an error if a fine label has two."""
    mapping = np.full(NUM_FINE, -1, dtype=np.int64)
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0) if fine.size else np.zeros((0, 2))
    labels, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(labels[counts > 1][0])
        raise DataFormatError(
            f"CIFAR-100 file {path}: fine label {bad} appears under several coarse labels "
            f"({sorted(int(c) for c in pairs[pairs[:, 0] == bad, 1])})."
        )
    mapping[pairs[:, 0].astype(np.int64)] = pairs[:, 1]
    return mapping
