"""Data sets of the soft-ordering paper: MNIST (Sec 4.1), ten UCI tasks (Sec 4.2), random tasks
(Sec 3.2). Each loader reads the original files under :func:`data_root` and says, in the
returned ``source``, which offline subset or stand-in it used when they are absent.
"""

from __future__ import annotations

import os

from flexmtl.data.idx import read_idx
from flexmtl.data.mnist import ImageData, image_status, load_fashion_mnist, load_mnist
from flexmtl.data.paths import DataFormatError, SourceStatus, data_root
from flexmtl.data.random_tasks import random_binary_tasks
from flexmtl.data.uci import UCI_TASKS, UCIData, load_uci, uci_status

__all__ = [
    "UCI_TASKS",
    "DataFormatError",
    "ImageData",
    "SourceStatus",
    "UCIData",
    "data_root",
    "data_status",
    "load_fashion_mnist",
    "load_mnist",
    "load_uci",
    "random_binary_tasks",
    "read_idx",
    "uci_status",
]


def data_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """One row per source (mnist, fashion-mnist, the ten UCI tasks): what is on disk, where
    flexmtl looks, what a load would use now, and what to download for the exact data."""
    return [*image_status(root), *uci_status(root)]
