"""Tiny data files in the original formats, written by tests (never real data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def omniglot_png(path: Path, char: int, drawer: int) -> None:
    """A 105x105 1-bit PNG, white with black marks: (row 0, column drawer) and
    (row 1, column char) identify the drawing, and a block of strokes in the middle."""
    pixels = np.full((105, 105), 255, dtype=np.uint8)
    pixels[0, drawer] = 0
    pixels[1, char] = 0
    pixels[40:60, 50:55] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(pixels).convert("1").save(path)


def write_omniglot(root: Path, alphabets: dict[str, tuple[str, int]], drawings: int = 20) -> Path:
    """``alphabets``: name -> (images_background | images_evaluation, number of characters).
    Files are named like the archive's: character<NN>/<global id>_<drawer>.png."""
    folder = root / "omniglot"
    char_id = 1
    for name, (part, n_chars) in alphabets.items():
        for c in range(n_chars):
            for d in range(drawings):
                png = (
                    folder
                    / part
                    / name
                    / f"character{c + 1:02d}"
                    / f"{char_id:04d}_{d + 1:02d}.png"
                )
                omniglot_png(png, c, d)
            char_id += 1
    return folder


FINE_NAMES = [f"fine_{i:02d}".encode() for i in range(100)]
COARSE_NAMES = [f"coarse_{j:02d}".encode() for j in range(20)]


def cifar_split(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 100, n)
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"fixture batch",
        b"fine_labels": fine.tolist(),
        b"coarse_labels": (fine // 5).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def write_cifar(folder: Path, n_train: int = 12, n_test: int = 6) -> dict[str, dict]:
    folder.mkdir(parents=True)
    content = {
        "train": cifar_split(n_train, 0),
        "test": cifar_split(n_test, 1),
        "meta": {b"fine_label_names": FINE_NAMES, b"coarse_label_names": COARSE_NAMES},
    }
    for name, obj in content.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return content


