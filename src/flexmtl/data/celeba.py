"""CelebA: 40 binary facial attributes, one task each (soft-ordering paper, Sec. 4.4, App. A.4).

Reads the original files of the CelebA release (Liu et al., MMLAB, the Chinese University of
Hong Kong) from ``<data root>/celeba/``:

- ``img_align_celeba/*.jpg``: the aligned and cropped 178x218 images (``img_align_celeba.zip``
  unzipped; a doubly nested ``img_align_celeba/img_align_celeba/`` is accepted too);
- ``list_attr_celeba.txt``: line 1 the image count, line 2 the 40 attribute names, then one
  line per image: file name and 40 values in {-1, 1};
- ``list_eval_partition.txt``: one line per image: file name and 0 (train), 1 (validation)
  or 2 (test), the official split the paper uses.

The two text files may also sit in the release's ``Anno/`` and ``Eval/`` subfolders.
:func:`load_celeba_index` reads only the text files; images are read one at a time with
:func:`read_celeba_image`, or a batch at a time by :class:`CelebAImages` (the inputs of a
task, decoded when the trainer indexes them: 200,000 images do not fit in memory).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flexmtl.data.paths import (
    ENV_VAR,
    DataFormatError,
    SourceStatus,
    complete_or_missing,
    data_root,
)
from flexmtl.errors import ConfigError, DataNotFoundError
from flexmtl.tasks import LazyInputs

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
MD5 = {
    "img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
    ATTR_FILE: "75e246fa4810816ffd6ee81facbd244c",
    PARTITION_FILE: "d32c9cbf5e040fd4025c592c306e6668",
}
NUM_ATTRIBUTES = 40
SPLITS = ("train", "val", "test")  # partition codes 0, 1, 2
_SUBDIR = {ATTR_FILE: "Anno", PARTITION_FILE: "Eval"}


@dataclass(frozen=True)
class CelebAIndex:
    """The CelebA file lists and labels, without images.

    ``*_paths``: absolute image paths (str) of the official split; ``*_attrs``: int8
    (N, 40) in {0, 1} (1 = the attribute is present), column j is ``attribute_names[j]``.
    Arrays are cached and shared between calls: copy them before changing them in place.
    """

    attribute_names: tuple[str, ...]
    image_dir: Path
    train_paths: tuple[str, ...]
    train_attrs: np.ndarray
    val_paths: tuple[str, ...]
    val_attrs: np.ndarray
    test_paths: tuple[str, ...]
    test_attrs: np.ndarray
    source: str

    def split(self, name: str) -> tuple[tuple[str, ...], np.ndarray]:
        """``(paths, attrs)`` of split ``name``: 'train', 'val' or 'test'."""
        if name not in SPLITS:
            raise ConfigError(f"unknown CelebA split {name!r}; use one of {', '.join(SPLITS)}.")
        return getattr(self, f"{name}_paths"), getattr(self, f"{name}_attrs")


def load_celeba_index(
    root: str | os.PathLike[str] | None = None, check_images: bool = False
) -> CelebAIndex:
    """The attribute names, per-split image paths and 0/1 attributes of CelebA.

    Checks that the image folder holds the first and the last listed image; with
    ``check_images=True``, that it holds every listed image (one stat per image).
    """
    folder = _folder(root)
    attr, partition, images = _locate(folder)
    missing = [
        name
        for name, found in (
            ("img_align_celeba.zip", images),
            (ATTR_FILE, attr),
            (PARTITION_FILE, partition),
        )
        if found is None
    ]
    if missing:
        what = "not found" if len(missing) == 3 else f"incomplete: missing {', '.join(missing)}"
        raise DataNotFoundError(f"CelebA {what}. {_download_hint(folder)}")
    assert attr is not None and partition is not None and images is not None
    index = _read_index(attr, partition, images)
    every = [p for s in SPLITS for p in index.split(s)[0]]
    to_check = every if check_images else every[:1] + every[-1:]
    absent = [p for p in to_check if not os.path.isfile(p)]
    if absent:
        raise DataNotFoundError(
            f"CelebA: {len(absent)} listed image(s) are not in {images}, e.g. {absent[0]}. "
            f"Unzip all of img_align_celeba.zip there. {_download_hint(folder)}"
        )
    return index


def celeba_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """One row: whether the image folder and both text files are where flexmtl looks."""
    folder = _folder(root)
    present = all(found is not None for found in _locate(folder))
    using = f"CelebA files in {folder}" if present else None
    return [complete_or_missing("celeba", str(folder), using, _download_hint(folder))]


def read_celeba_image(path: str | os.PathLike[str], size: int | None = None) -> np.ndarray:
    """One image as float32 (3, size, size) in [0, 1] (RGB), resized with Pillow (bilinear,
    antialiased; the aspect ratio is not kept, as Keras' resize to 224x224 in the paper).
    ``size=None`` keeps the original 218x178: shape (3, 218, 178)."""
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"size must be a positive integer (pixels) or None, got {size!r}.")
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Reading CelebA images needs Pillow: pip install pillow "
            "(it also comes with matplotlib: pip install 'flexmtl[plots]')."
        ) from exc
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None:
                bilinear = getattr(Image, "Resampling", Image).BILINEAR
                rgb = rgb.resize((size, size), bilinear)
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"CelebA image {path} not found: unzip img_align_celeba.zip into the celeba/ "
            "folder of the data root."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable images
        raise DataFormatError(f"CelebA image {path} cannot be read as an image: {exc}") from exc
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(x)


class CelebAImages(LazyInputs):
    """The images of ``paths`` as task inputs, decoded when indexed: float32
    ``[n, 3, size, size]`` in [0, 1] (:func:`read_celeba_image`; ``size=None``: 218x178).

    ``threads`` decode a batch in parallel (Pillow releases the GIL while decoding and
    resizing). The 40 attribute tasks share these inputs and each step's examples, and
    decode each batch
    once (:class:`~flexmtl.tasks.LazyInputs` keeps the last batch read).
    """

    def __init__(self, paths: Sequence[str], size: int | None = 224, threads: int = 8):
        super().__init__()
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                 or size < 1):
            raise ConfigError(f"size must be a positive integer (pixels) or None, got {size!r}.")
        self.paths = tuple(paths)
        self.size = size
        self.threads = max(int(threads), 1)

    @property
    def shape(self) -> tuple[int, ...]:
        h, w = (218, 178) if self.size is None else (self.size, self.size)
        return (len(self.paths), 3, h, w)

    def read(self, index: np.ndarray) -> torch.Tensor:
        paths = [self.paths[i] for i in index]
        sizes = [self.size] * len(paths)
        if self.threads > 1 and len(paths) > 1:
            pool = self.shared.get("pool")
            if pool is None:
                pool = self.shared["pool"] = ThreadPoolExecutor(self.threads,
                                                                thread_name_prefix="celeba")
            images = list(pool.map(read_celeba_image, paths, sizes))
        else:
            images = list(map(read_celeba_image, paths, sizes))
        if not images:
            return torch.empty(0, *self.shape[1:])
        return torch.from_numpy(np.stack(images))


def _folder(root: str | os.PathLike[str] | None) -> Path:
    return data_root(root) / "celeba"


def _locate(folder: Path) -> tuple[Path | None, Path | None, Path | None]:
    """(attribute file, partition file, image folder), each None when absent."""

    def text(name: str) -> Path | None:
        for candidate in (folder / name, folder / _SUBDIR[name] / name):
            if candidate.is_file():
                return candidate
        return None

    images = folder / IMAGE_DIR
    if (images / IMAGE_DIR).is_dir():  # zip unpacked into a folder of its own name
        images = images / IMAGE_DIR
    return text(ATTR_FILE), text(PARTITION_FILE), images if images.is_dir() else None


def _download_hint(folder: Path) -> str:
    files = ", ".join(f"{name} (MD5 {md5})" for name, md5 in MD5.items())
    return (
        f"Download {files} from the CelebA page of MMLAB, the Chinese University of Hong Kong "
        f"(Large-scale CelebFaces Attributes dataset; the files sit in its Img/, Anno/ and "
        f"Eval/ folders), unzip img_align_celeba.zip into {folder} (giving "
        f"{folder / IMAGE_DIR}/000001.jpg, ...) and put {ATTR_FILE} and {PARTITION_FILE} "
        f"in {folder}; or set {ENV_VAR} to a data root whose celeba/ folder holds them."
    )


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"CelebA file {path} is not a text file: {exc}") from exc
    return [line for line in text.splitlines() if line.strip()]


def _read_attributes(path: Path) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    lines = _lines(path)
    if len(lines) < 2:
        raise DataFormatError(
            f"CelebA file {path}: expected an image count, a line of attribute names, "
            f"then one line per image; found {len(lines)} line(s)."
        )
    try:
        count = int(lines[0].strip())
    except ValueError as exc:
        raise DataFormatError(
            f"CelebA file {path}: line 1 must be the image count, found {lines[0][:60]!r}."
        ) from exc
    names = tuple(lines[1].split())
    if len(names) != NUM_ATTRIBUTES or len(set(names)) != len(names):
        raise DataFormatError(
            f"CelebA file {path}: line 2 must name {NUM_ATTRIBUTES} distinct attributes, "
            f"found {len(names)}: {' '.join(names)[:200]}"
        )
    rows = [line.split() for line in lines[2:]]
    if len(rows) != count:
        raise DataFormatError(
            f"CelebA file {path}: line 1 announces {count} images, the file lists {len(rows)}."
        )
    for number, row in enumerate(rows, start=3):
        if len(row) != NUM_ATTRIBUTES + 1:
            raise DataFormatError(
                f"CelebA file {path}, line {number}: expected a file name and "
                f"{NUM_ATTRIBUTES} values, found {len(row)} fields."
            )
    files = [row[0] for row in rows]
    try:
        values = np.array([row[1:] for row in rows], dtype=np.int8).reshape(
            len(rows), NUM_ATTRIBUTES
        )
    except (ValueError, OverflowError) as exc:
        raise DataFormatError(f"CelebA file {path}: attribute values must be -1 or 1.") from exc
    bad = np.flatnonzero(~np.isin(values, (-1, 1)).all(axis=1))
    if bad.size:
        raise DataFormatError(
            f"CelebA file {path}, line {int(bad[0]) + 3} ({files[bad[0]]}): attribute values "
            "must be -1 or 1."
        )
    if len(set(files)) != len(files):
        raise DataFormatError(f"CelebA file {path} lists an image twice.")
    return names, files, (values == 1).astype(np.int8)


def _read_partition(path: Path) -> dict[str, int]:
    partition: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        row = line.split()
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DataFormatError(
                f"CelebA file {path}, line {number}: expected '<file name> 0|1|2', "
                f"found {line[:80]!r}."
            )
        partition[row[0]] = int(row[1])
    return partition


@functools.lru_cache(maxsize=2)
def _read_index(attr: Path, partition_path: Path, images: Path) -> CelebAIndex:
    names, files, attrs = _read_attributes(attr)
    partition = _read_partition(partition_path)
    unlisted = [f for f in files if f not in partition]
    if unlisted or len(partition) != len(files):
        detail = (
            f"{len(unlisted)} image(s) of {attr.name} have no split, e.g. {unlisted[0]}"
            if unlisted
            else f"it lists {len(partition)} images, {attr.name} lists {len(files)}"
        )
        raise DataFormatError(
            f"CelebA file {partition_path} does not match {attr}: {detail}. "
            "Use the two files of the same CelebA release."
        )
    codes = np.array([partition[f] for f in files], dtype=np.int8)
    fields: dict[str, object] = {}
    for code, split in enumerate(SPLITS):
        members = np.flatnonzero(codes == code)
        fields[f"{split}_paths"] = tuple(str(images / files[i]) for i in members)
        fields[f"{split}_attrs"] = attrs[members]
    counts = " / ".join(f"{len(fields[f'{s}_paths'])} {s}" for s in SPLITS)  # type: ignore[arg-type]
    return CelebAIndex(
        attribute_names=names,
        image_dir=images,
        source=f"CelebA: {attr}, {partition_path}, images in {images} "
        f"({counts}, official partition)",
        **fields,  # type: ignore[arg-type]
    )
