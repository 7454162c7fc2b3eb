"""Omniglot as one classification task per alphabet (Gumbel-Matrix paper, Sec. V-B).

Reads the PNG folders of the official archive (Lake et al., GitHub ``brendenlake/omniglot``,
folder ``python/``): ``images_background.zip`` (30 alphabets) and ``images_evaluation.zip``
(20 alphabets), both unzipped into ``<data root>/omniglot/``::

    omniglot/images_background/<Alphabet>/character<NN>/<id>_<drawer>.png
    omniglot/images_evaluation/<Alphabet>/character<NN>/<id>_<drawer>.png

Every image is a 105x105 PNG with black strokes on white. A task's inputs are scaled to
[0, 1] and inverted (strokes = 1, background = 0); its labels are the alphabet's characters
in folder order (``character01`` -> 0). Each character's drawings are split on their own
into train / validation / test (50% / 20% / 30%: 10 / 4 / 6 of its 20 drawings), so every
split holds every character. No offline copy exists on these machines: without the folders,
:func:`load_omniglot` raises :class:`~flexmtl.errors.DataNotFoundError` saying what to get.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexmtl.data.paths import (
    ENV_VAR,
    DataFormatError,
    SourceStatus,
    complete_or_missing,
    data_root,
)
from flexmtl.errors import ConfigError, DataNotFoundError, UnknownNameError

NATIVE_SIZE = 105
DRAWINGS_PER_CHARACTER = 20
ZIP_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
_PARTS = ("images_background", "images_evaluation")

# The alphabet folder names of the two archives, sorted.
BACKGROUND_ALPHABETS: tuple[str, ...] = (
    "Alphabet_of_the_Magi",
    "Anglo-Saxon_Futhorc",
    "Arcadian",
    "Armenian",
    "Asomtavruli_(Georgian)",
    "Balinese",
    "Bengali",
    "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Braille",
    "Burmese_(Myanmar)",
    "Cyrillic",
    "Early_Aramaic",
    "Futurama",
    "Grantha",
    "Greek",
    "Gujarati",
    "Hebrew",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Japanese_(hiragana)",
    "Japanese_(katakana)",
    "Korean",
    "Latin",
    "Malay_(Jawi_-_Arabic)",
    "Mkhedruli_(Georgian)",
    "N_Ko",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Sanskrit",
    "Syriac_(Estrangelo)",
    "Tagalog",
    "Tifinagh",
)
EVALUATION_ALPHABETS: tuple[str, ...] = (
    "Angelic",
    "Atemayar_Qelisayer",
    "Atlantean",
    "Aurek-Besh",
    "Avesta",
    "Ge_ez",
    "Glagolitic",
    "Gurmukhi",
    "Kannada",
    "Keble",
    "Malayalam",
    "Manipuri",
    "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)",
    "Oriya",
    "Sylheti",
    "Syriac_(Serto)",
    "Tengwar",
    "Tibetan",
    "ULOG",
)

#: The 50 alphabets in the fixed random order of the multi-task Omniglot literature: the
#: order the Gumbel-Matrix authors' public code (google-research, folder
#: ``learning_parameter_allocation``, ``data.py``) lists as the one "used in previous works",
#: such as Ramachandran & Le, "Diversity and Depth in Per-Example Routing Models" (ICLR 2019,
#: the paper's [13]). The paper's text only says "the first 20 in the order originally
#: reported by [16]" (Meyerson & Miikkulainen's soft ordering, which does not print the order
#: either), so the text alone does not determine it; the authors' code does.
OMNIGLOT_ALPHABET_ORDER: tuple[str, ...] = (
    "Gujarati",
    "Sylheti",
    "Arcadian",
    "Tibetan",
    "Old_Church_Slavonic_(Cyrillic)",
    "Angelic",
    "Malay_(Jawi_-_Arabic)",
    "Sanskrit",
    "Cyrillic",
    "Anglo-Saxon_Futhorc",
    "Syriac_(Estrangelo)",
    "Ge_ez",
    "Japanese_(katakana)",
    "Keble",
    "Manipuri",
    "Alphabet_of_the_Magi",
    "Gurmukhi",
    "Korean",
    "Early_Aramaic",
    "Atemayar_Qelisayer",
    "Tagalog",
    "Mkhedruli_(Georgian)",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Tengwar",
    "Hebrew",
    "N_Ko",
    "Grantha",
    "Latin",
    "Syriac_(Serto)",
    "Tifinagh",
    "Balinese",
    "Mongolian",
    "ULOG",
    "Futurama",
    "Malayalam",
    "Oriya",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Avesta",
    "Kannada",
    "Bengali",
    "Japanese_(hiragana)",
    "Armenian",
    "Aurek-Besh",
    "Glagolitic",
    "Asomtavruli_(Georgian)",
    "Greek",
    "Braille",
    "Burmese_(Myanmar)",
    "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Atlantean",
)

#: The 20 alphabets (= tasks, in task order) of the Gumbel-Matrix Omniglot experiment: the
#: first 20 of :data:`OMNIGLOT_ALPHABET_ORDER`. 11 come from images_background, 9 from
#: images_evaluation, so both archives are needed.
OMNIGLOT_GUMBEL_ALPHABETS: tuple[str, ...] = OMNIGLOT_ALPHABET_ORDER[:20]

#: The alternative when the literature's order is not wanted: all 50 folder names sorted,
#: background archive first, then evaluation. Pass ``alphabets=OMNIGLOT_SORTED_ORDER[:20]``.
OMNIGLOT_SORTED_ORDER: tuple[str, ...] = BACKGROUND_ALPHABETS + EVALUATION_ALPHABETS

_ARCHIVE_OF = {name: _PARTS[0] for name in BACKGROUND_ALPHABETS} | {
    name: _PARTS[1] for name in EVALUATION_ALPHABETS
}


@dataclass(frozen=True)
class OmniglotTask:
    """One alphabet as a ``num_classes``-way task.

    ``*_x``: float32 (N, 1, size, size) in [0, 1], strokes = 1, background = 0;
    ``*_y``: int64 (N,) character index, ``characters[y]`` is its folder name.
    Arrays are cached and shared between calls: copy them before changing them in place.
    """

    alphabet: str
    num_classes: int
    characters: tuple[str, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


def load_omniglot(
    root: str | os.PathLike[str] | None = None,
    alphabets: Sequence[str] | None = None,
    split: tuple[float, float, float] = (0.5, 0.2, 0.3),
    seed: int = 0,
    size: int = NATIVE_SIZE,
) -> list[OmniglotTask]:
    """One :class:`OmniglotTask` per alphabet, in the order of ``alphabets``.

    ``alphabets`` defaults to :data:`OMNIGLOT_GUMBEL_ALPHABETS` (the paper's 20, in the
    literature's order); any alphabet folder names of the two archives are accepted, e.g.
    ``OMNIGLOT_ALPHABET_ORDER[:k]`` or ``OMNIGLOT_SORTED_ORDER[:20]``.
    ``split`` gives the train / validation / test fractions of each character's drawings:
    train and validation get ``floor(fraction * n)`` drawings, test the rest (20 drawings:
    10 / 4 / 6). Which drawings go where depends only on ``seed`` and the alphabet's name,
    not on the other alphabets loaded. ``size`` other than 105 resizes every image to
    ``size`` x ``size`` (bilinear, antialiased, with Pillow).
    """
    if isinstance(alphabets, str):
        raise ConfigError("alphabets must be a sequence of alphabet names, not one string.")
    names = tuple(OMNIGLOT_GUMBEL_ALPHABETS if alphabets is None else alphabets)
    if not names:
        raise ConfigError("alphabets is empty: name at least one Omniglot alphabet.")
    if len(set(names)) != len(names):
        raise ConfigError(f"alphabets lists a name twice: {list(names)}.")
    fractions = _check_split(split)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"size must be a positive integer (pixels), got {size!r}.")
    folder = _folder(root)
    return [_load_task(_alphabet_dir(folder, name), fractions, int(seed), size) for name in names]


def omniglot_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """One row: whether the Gumbel-Matrix paper's 20 alphabets are where flexmtl looks."""
    folder = _folder(root)
    missing = [n for n in OMNIGLOT_GUMBEL_ALPHABETS if _find_alphabet(folder, n) is None]
    using = None if missing else f"Omniglot PNG folders in {folder}"
    return [complete_or_missing("omniglot", str(folder), using, _download_hint(folder))]


def _folder(root: str | os.PathLike[str] | None) -> Path:
    return data_root(root) / "omniglot"


def _download_hint(folder: Path, zips: Sequence[str] = tuple(ZIP_MD5)) -> str:
    files = " and ".join(f"{z} (MD5 {ZIP_MD5[z]})" for z in zips)
    return (
        "Online, `flexmtl data fetch omniglot` downloads, checks and unpacks them. Or "
        f"download {files} from the Omniglot GitHub repository (brendenlake/omniglot, "
        f"folder python/) and unzip {'them' if len(zips) > 1 else 'it'} into {folder}, so "
        f"that it holds {_PARTS[0]}/<Alphabet>/character<NN>/*.png and "
        f"{_PARTS[1]}/<Alphabet>/character<NN>/*.png; or set {ENV_VAR} to a data root "
        "whose omniglot/ folder holds them."
    )


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        raise ConfigError(
            f"split must be three fractions (train, val, test), got {split!r}."
        ) from None
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ConfigError(
            f"split must be three non-negative fractions (train, val, test), got {split!r}."
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {split!r} (sum {sum(fractions)}).")
    return fractions[0], fractions[1], fractions[2]


def _find_alphabet(folder: Path, name: str) -> Path | None:
    for part in _PARTS:
        candidate = folder / part / name
        if candidate.is_dir():
            return candidate
    return None


def _alphabet_dir(folder: Path, name: str) -> Path:
    found = _find_alphabet(folder, name)
    if found is not None:
        return found
    if name not in _ARCHIVE_OF:
        on_disk = {
            p.name
            for part in _PARTS
            if (folder / part).is_dir()
            for p in (folder / part).iterdir()
            if p.is_dir()
        }
        raise UnknownNameError("Omniglot alphabet", name, set(_ARCHIVE_OF) | on_disk)
    archive = _ARCHIVE_OF[name]
    if not any((folder / part).is_dir() for part in _PARTS):
        raise DataNotFoundError(f"Omniglot not found. {_download_hint(folder)}")
    raise DataNotFoundError(
        f"Omniglot alphabet {name!r} not found: expected the folder {folder / archive / name}, "
        f"which {archive}.zip holds. {_download_hint(folder, (archive + '.zip',))}"
    )


def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Drawings for train and for validation out of ``n`` (test gets the rest)."""
    n_train = math.floor(fractions[0] * n + 1e-9)
    n_val = min(math.floor(fractions[1] * n + 1e-9), n - n_train)
    return n_train, n_val


def _number(path: Path) -> tuple[int, str]:
    """Sort key: the trailing number of ``character07`` (7), then the name."""
    digits = path.name[len(path.name.rstrip("0123456789")) :]
    return (int(digits) if digits else -1, path.name)


@functools.lru_cache(maxsize=64)
def _load_task(
    alphabet_dir: Path, fractions: tuple[float, float, float], seed: int, size: int
) -> OmniglotTask:
    name = alphabet_dir.name
    characters = sorted((p for p in alphabet_dir.iterdir() if p.is_dir()), key=_number)
    if not characters:
        raise DataFormatError(
            f"Omniglot alphabet folder {alphabet_dir} holds no character<NN> folders."
        )
    # A seed per (seed, alphabet): an alphabet's split does not depend on the others loaded.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        s: ([], []) for s in ("train", "val", "test")
    }
    for label, char_dir in enumerate(characters):
        files = sorted(char_dir.glob("*.png"))
        if not files:
            raise DataFormatError(f"Omniglot character folder {char_dir} holds no PNG files.")
        images = np.stack([_read_png(f, size) for f in files])
        order = rng.permutation(len(files))
        n_train, n_val = _split_counts(len(files), fractions)
        bounds = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        for split_name, idx in bounds.items():
            xs, ys = parts[split_name]
            xs.append(images[np.sort(idx)])
            ys.append(np.full(len(idx), label, dtype=np.int64))
    arrays = {}
    for split_name, (xs, ys) in parts.items():
        arrays[f"{split_name}_x"] = np.concatenate(xs)[:, None]
        arrays[f"{split_name}_y"] = np.concatenate(ys)
    n = {s: len(arrays[f"{s}_y"]) for s in parts}
    return OmniglotTask(
        alphabet=name,
        num_classes=len(characters),
        characters=tuple(p.name for p in characters),
        source=f"Omniglot PNGs in {alphabet_dir} ({len(characters)} characters; "
        f"{n['train']} train / {n['val']} val / {n['test']} test, per-character split, "
        f"seed {seed}; {size}x{size}, inverted)",
        **arrays,
    )


def _pil_image():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Reading Omniglot PNGs needs Pillow: pip install pillow "
            "(it also comes with matplotlib: pip install 'flexmtl[plots]')."
        ) from exc
    return Image


def _read_png(path: Path, size: int) -> np.ndarray:
    """One drawing: float32 (size, size) in [0, 1], inverted so strokes are 1."""
    Image = _pil_image()
    try:
        with Image.open(path) as img:
            gray = img.convert("L")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable images
        raise DataFormatError(f"Omniglot image {path} cannot be read as a PNG: {exc}") from exc
    if gray.size != (NATIVE_SIZE, NATIVE_SIZE):
        raise DataFormatError(
            f"Omniglot image {path}: expected {NATIVE_SIZE}x{NATIVE_SIZE} pixels, "
            f"found {gray.size[0]}x{gray.size[1]}."
        )
    x = 1.0 - np.asarray(gray, dtype=np.float32) / 255.0
    if size != NATIVE_SIZE:
        bilinear = getattr(Image, "Resampling", Image).BILINEAR
        resized = Image.fromarray(x).resize((size, size), bilinear)  # float32 -> mode "F"
        x = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return x
