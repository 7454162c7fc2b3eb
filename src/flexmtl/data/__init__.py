"""Data sets of the soft-ordering paper: MNIST (Sec 4.1), ten UCI tasks (Sec 4.2), random tasks
(Sec 3.2), CelebA (Sec 4.4); and of the Gumbel-Matrix paper: Omniglot (Sec V-B), CIFAR-100
(Sec V-C). Each loader reads the original files under :func:`data_root` and says, in the
returned ``source``, which offline subset or stand-in it used when they are absent.
"""

from __future__ import annotations

import os

from flexmtl.data.celeba import CelebAIndex, celeba_status, load_celeba_index, read_celeba_image
from flexmtl.data.cifar import Cifar100Data, cifar100_status, load_cifar100
from flexmtl.data.idx import read_idx
from flexmtl.data.mnist import ImageData, image_status, load_fashion_mnist, load_mnist
from flexmtl.data.omniglot import (
    OMNIGLOT_ALPHABET_ORDER,
    OMNIGLOT_GUMBEL_ALPHABETS,
    OMNIGLOT_SORTED_ORDER,
    OmniglotTask,
    load_omniglot,
    omniglot_status,
)
from flexmtl.data.paths import DataFormatError, SourceStatus, data_root
from flexmtl.data.random_tasks import random_binary_tasks
from flexmtl.data.rdata import RDATA_TASKS, load_rdata, rdata_status
from flexmtl.data.uci import UCI_TASKS, UCIData, load_uci, uci_status

__all__ = [
    "OMNIGLOT_ALPHABET_ORDER",
    "OMNIGLOT_GUMBEL_ALPHABETS",
    "OMNIGLOT_SORTED_ORDER",
    "RDATA_TASKS",
    "UCI_TASKS",
    "CelebAIndex",
    "Cifar100Data",
    "DataFormatError",
    "ImageData",
    "OmniglotTask",
    "SourceStatus",
    "UCIData",
    "celeba_status",
    "cifar100_status",
    "data_root",
    "data_status",
    "load_celeba_index",
    "load_cifar100",
    "load_fashion_mnist",
    "load_mnist",
    "load_omniglot",
    "load_rdata",
    "load_uci",
    "omniglot_status",
    "random_binary_tasks",
    "rdata_status",
    "read_celeba_image",
    "read_idx",
    "uci_status",
]


def data_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """One row per source (mnist, fashion-mnist, the ten UCI tasks, the tabular suite,
    omniglot, cifar-100, celeba): what is on disk, where flexmtl looks, what a load would use
    now, and what to download for the exact data."""
    return [*image_status(root), *uci_status(root), *rdata_status(), *omniglot_status(root),
            *cifar100_status(root), *celeba_status(root)]
