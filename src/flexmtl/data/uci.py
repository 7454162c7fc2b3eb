"""The ten UCI classification tasks of the soft-ordering paper (Sec 4.2, Fig 5a, App A.2).

A task is read from, in order: (a) the original UCI file in ``<data root>/uci/<name>/``;
(b) an offline copy of the same data (scikit-learn's bundled sets, Weka's examples);
(c) an offline stand-in from Weka's examples, for sets not on this machine, reported in
``UCIData.stand_in_for``. Features are min-max scaled to [0, 1] per column (App A.2);
the fixed 80/20 split is the experiment's job.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexmtl.data.paths import DataFormatError, SourceStatus, data_root, find_file, has_module
from flexmtl.errors import DataNotFoundError, UnknownNameError

WEKA_EXAMPLES = Path("/usr/share/doc/weka/examples")
_MISSING = "?"


@dataclass(frozen=True)
class UCIData:
    """One UCI task: x (N, F) float32 in [0, 1], y (N,) int64 in 0..num_classes-1.

    ``exact`` is True when this is the paper's data in the paper's form; ``stand_in_for``
    names the paper task an unrelated offline data set replaces (None otherwise).
    Arrays are cached and shared between calls: copy them before changing them in place.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    source: str
    exact: bool
    stand_in_for: str | None


@dataclass(frozen=True)
class _TextFormat:
    """Layout of an original UCI text file."""

    file: str
    sep: str | None  # None: runs of whitespace
    label_col: int
    skip_cols: tuple[int, ...] = ()  # e.g. an id or a name column
    header: bool = False


@dataclass(frozen=True)
class _Task:
    uci_name: str  # the data set's name in the UCI Machine Learning Repository
    formats: tuple[_TextFormat, ...]
    num_features: int
    sklearn: str | None = None  # scikit-learn loader with exactly this data
    weka_exact: str | None = None  # Weka example file with exactly this data
    weka_variant: tuple[str, str] | None = None  # (file, how it differs): same data, other form
    stand_in: tuple[str, str] | None = None  # (Weka file, its UCI name): a different data set


_TASKS: dict[str, _Task] = {
    "australian": _Task(
        "Statlog (Australian Credit Approval)",
        (_TextFormat("australian.dat", None, -1),),
        14,
        stand_in=("ionosphere.arff", "Ionosphere"),
    ),
    "breast-cancer": _Task(
        "Breast Cancer Wisconsin (Diagnostic)",
        (_TextFormat("wdbc.data", ",", 1, skip_cols=(0,)),),
        30,
        sklearn="load_breast_cancer",
    ),
    "ecoli": _Task(
        "Ecoli",
        (_TextFormat("ecoli.data", None, -1, skip_cols=(0,)),),
        7,
        stand_in=("glass.arff", "Glass Identification"),
    ),
    "german": _Task(
        "Statlog (German Credit Data)",
        (_TextFormat("german.data-numeric", None, -1),),
        24,
        weka_variant=(
            "credit-g.arff",
            "the 20-attribute symbolic version (nominal attributes one-hot encoded), "
            "not the paper's 24-feature numeric german.data-numeric",
        ),
    ),
    "heart": _Task(
        "Heart Disease (Cleveland)",
        (_TextFormat("processed.cleveland.data", ",", -1),),
        13,
        stand_in=("vote.arff", "Congressional Voting Records"),
    ),
    "hepatitis": _Task(
        "Hepatitis",
        (_TextFormat("hepatitis.data", ",", 0),),
        19,
        stand_in=("labor.arff", "Labor Relations"),
    ),
    "iris": _Task(
        "Iris",
        (_TextFormat("iris.data", ",", -1),),
        4,
        sklearn="load_iris",
        weka_exact="iris.arff",
    ),
    "pima": _Task(
        "Pima Indians Diabetes",
        (
            _TextFormat("pima-indians-diabetes.data", ",", -1),
            _TextFormat("diabetes.csv", ",", -1, header=True),
        ),
        8,
        weka_exact="diabetes.arff",
    ),
    "wine": _Task(
        "Wine",
        (_TextFormat("wine.data", ",", 0),),
        13,
        sklearn="load_wine",
    ),
    "yeast": _Task(
        "Yeast",
        (_TextFormat("yeast.data", None, -1, skip_cols=(0,)),),
        8,
        stand_in=("segment-challenge.arff", "Image Segmentation"),
    ),
}

UCI_TASKS: tuple[str, ...] = tuple(_TASKS)


@dataclass(frozen=True)
class _Plan:
    """The source load_uci reads: a text file (fmt set), an ARFF file, or a scikit-learn loader."""

    source: str
    exact: bool
    stand_in_for: str | None = None
    path: Path | None = None
    fmt: _TextFormat | None = None
    loader: str | None = None


def load_uci(
    name: str, root: str | os.PathLike[str] | None = None, allow_stand_in: bool = True
) -> UCIData:
    """Load one of :data:`UCI_TASKS`, scaled to [0, 1] per feature.

    With ``allow_stand_in=False`` only the paper's exact data is accepted (the original file
    or an identical built-in copy); otherwise DataNotFoundError says what to download.
    """
    if name not in _TASKS:
        raise UnknownNameError("UCI task", name, UCI_TASKS)
    folder = _folder(name, root)
    plan = _plan(name, folder, allow_stand_in)
    if plan is None:
        message = f"UCI task {name!r}: no data found. {_download_hint(name, folder)}"
        if not allow_stand_in and _plan(name, folder, True) is not None:
            message += " An offline substitute (not the paper's exact data) is available: "
            message += "pass allow_stand_in=True to use it."
        else:
            message += _offline_hint(_TASKS[name], allow_stand_in)
        raise DataNotFoundError(message)
    return _load(name, plan)


def uci_status(root: str | os.PathLike[str] | None = None) -> list[SourceStatus]:
    """For each task: whether the original file is present and which source a load would use."""
    rows = []
    for name, task in _TASKS.items():
        folder = _folder(name, root)
        plan = _plan(name, folder, True)
        exact = plan is not None and plan.exact
        rows.append(
            SourceStatus(
                name=name,
                present=any((folder / fmt.file).is_file() for fmt in task.formats),
                looks_in=str(folder),
                using=plan.source if plan else None,
                exact=exact,
                to_get="" if exact else _download_hint(name, folder),
            )
        )
    return rows


def _folder(name: str, root: str | os.PathLike[str] | None) -> Path:
    return data_root(root) / "uci" / name


def _download_hint(name: str, folder: Path) -> str:
    task = _TASKS[name]
    first, *others = (fmt.file for fmt in task.formats)
    also = f" ({', '.join(others)} is accepted too)" if others else ""
    return (
        f"Download {first} from the UCI Machine Learning Repository "
        f"(data set {task.uci_name!r}) into {folder}{also}."
    )


def _offline_hint(task: _Task, allow_stand_in: bool) -> str:
    """How to get an offline copy or substitute, for the message of a failed load."""
    if task.sklearn:
        return " Offline, `pip install scikit-learn` provides the same data."
    weka = "Offline, `apt-get install weka` (with `pip install scipy`) provides"
    if task.weka_exact:
        return f" {weka} the same data as {WEKA_EXAMPLES / task.weka_exact}."
    substitute = task.weka_variant or task.stand_in
    if allow_stand_in and substitute:
        return (
            f" {weka} a substitute that is not the paper's data: {WEKA_EXAMPLES / substitute[0]}."
        )
    return ""


def _weka_file(name: str | None) -> Path | None:
    if name is None or not has_module("scipy"):
        return None
    return find_file(WEKA_EXAMPLES, name)


def _plan(name: str, folder: Path, allow_stand_in: bool) -> _Plan | None:
    task = _TASKS[name]
    for fmt in task.formats:
        if (folder / fmt.file).is_file():
            original = folder / fmt.file
            source = f"original UCI file {original} ({task.uci_name})"
            return _Plan(source, True, path=original, fmt=fmt)
    if task.sklearn and has_module("sklearn"):
        return _Plan(
            f"scikit-learn {task.sklearn}() (UCI {task.uci_name}, the paper's data)",
            True,
            loader=task.sklearn,
        )
    if path := _weka_file(task.weka_exact):
        return _Plan(f"Weka {path} (UCI {task.uci_name}, the paper's data)", True, path=path)
    if not allow_stand_in:
        return None
    absent = f"{task.formats[0].file} was not found in {folder}"
    if task.weka_variant and (path := _weka_file(task.weka_variant[0])):
        return _Plan(
            f"Weka {path} (UCI {task.uci_name}): {task.weka_variant[1]}, because {absent}",
            False,
            path=path,
        )
    if task.stand_in and (path := _weka_file(task.stand_in[0])):
        return _Plan(
            f"stand-in: Weka {path.name} (UCI {task.stand_in[1]}), because {absent}",
            False,
            stand_in_for=name,
            path=path,
        )
    return None


@functools.lru_cache(maxsize=64)
def _load(name: str, plan: _Plan) -> UCIData:
    n_nominal = 0
    if plan.loader is not None:
        x, labels = _read_sklearn(plan.loader)
    else:
        assert plan.path is not None
        if plan.fmt is not None:
            x, labels = _read_text(plan.path, plan.fmt, _TASKS[name].num_features)
        else:
            x, labels, n_nominal = _read_arff(plan.path)
    notes = []
    labelled = labels != _MISSING
    if not labelled.all():
        notes.append(f"{int((~labelled).sum())} rows without a class label dropped")
        x, labels = x[labelled], labels[labelled]
    x, n_numeric = _impute_medians(x)
    if n_numeric:
        notes.append(f"{n_numeric} missing numeric values imputed with column medians")
    if n_nominal:
        notes.append(f"{n_nominal} missing nominal values imputed with the most frequent value")
    y, num_classes = _encode_labels(labels)
    return UCIData(
        name=name,
        x=_min_max(x),
        y=y,
        num_classes=num_classes,
        source="; ".join([plan.source, *notes]),
        exact=plan.exact,
        stand_in_for=plan.stand_in_for,
    )


def _read_text(path: Path, fmt: _TextFormat, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse an original UCI file: x with NaN where the file has '?', labels as strings."""
    width = num_features + 1 + len(fmt.skip_cols)
    label_col = fmt.label_col % width
    feature_cols = [c for c in range(width) if c != label_col and c not in fmt.skip_cols]
    lines = path.read_text(encoding="latin-1").splitlines()
    first = 1 + fmt.header
    rows, labels = [], []
    for lineno, line in enumerate(lines[fmt.header :], start=first):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(fmt.sep)]
        if len(fields) != width:
            raise DataFormatError(
                f"{path}, line {lineno}: expected {width} fields ({num_features} features, "
                f"the class, {len(fmt.skip_cols)} id/name columns), found {len(fields)}. "
                "Is this the original UCI file?"
            )
        try:
            rows.append(
                [np.nan if fields[c] == _MISSING else float(fields[c]) for c in feature_cols]
            )
        except ValueError as exc:
            raise DataFormatError(f"{path}, line {lineno}: non-numeric feature ({exc}).") from None
        labels.append(fields[label_col])
    if not rows:
        raise DataFormatError(f"{path}: no data rows.")
    return np.array(rows, dtype=np.float64), np.array(labels)


#: the csv file in scikit-learn's ``datasets/data`` that each loader reads
_SKLEARN_FILES = {"load_breast_cancer": "breast_cancer.csv", "load_iris": "iris.csv",
                  "load_wine": "wine_data.csv"}


def _read_sklearn(loader: str) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn bundled set: x and its labels as class-name strings.

    Read straight from the package's csv file when it has the layout scikit-learn's loader
    reads (a header ``rows,features,class names...``, then rows of features and a class
    index), which spares every process that loads it the seconds of importing scikit-learn;
    otherwise through the loader itself. Both give the same arrays (tested)."""
    read = _read_sklearn_csv(loader)
    if read is not None:
        return read
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader)()
    return bunch.data.astype(np.float64), np.asarray(bunch.target_names)[bunch.target]


def _read_sklearn_csv(loader: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``loader``'s csv file read without importing scikit-learn, or None where the file is
    not found or not laid out as expected."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if loader not in _SKLEARN_FILES or spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    try:
        with open(path / _SKLEARN_FILES[loader], encoding="utf-8") as f:
            header = f.readline().strip().split(",")
            rows, features, names = int(header[0]), int(header[1]), header[2:]
            data = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, IndexError):
        return None
    if data.shape != (rows, features + 1) or not names:
        return None
    target = data[:, -1]
    index = target.astype(np.int64)
    if (index != target).any() or index.min() < 0 or index.max() >= len(names):
        return None
    return data[:, :-1].copy(), np.asarray(names)[index]


def _read_arff(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Read an ARFF file (last attribute = class), one-hot encoding nominal attributes.

    Missing nominal values get the attribute's most frequent value (their count is returned);
    missing numeric values stay NaN.
    """
    from scipy.io import arff

    with (gzip.open(path, "rt", encoding="latin-1") if path.suffix == ".gz"
          else open(path, encoding="latin-1")) as f:
        data, meta = arff.loadarff(f)
    *attributes, label = meta.names()
    columns, n_imputed = [], 0
    for attribute in attributes:
        kind, values = meta[attribute]
        if kind == "numeric":
            columns.append(data[attribute].astype(np.float64)[:, None])
            continue
        if kind != "nominal":
            raise DataFormatError(f"{path}: unsupported {kind} attribute {attribute!r}.")
        strings = np.char.decode(data[attribute], "latin-1")
        missing = strings == _MISSING
        if missing.any():
            observed, counts = np.unique(strings[~missing], return_counts=True)
            strings[missing] = observed[np.argmax(counts)]
            n_imputed += int(missing.sum())
        columns.append((strings[:, None] == np.array(values)[None, :]).astype(np.float64))
    return np.hstack(columns), np.char.decode(data[label], "latin-1"), n_imputed


def _impute_medians(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN by the median of the column's observed values (0 if none observed)."""
    missing = np.isnan(x)
    x = x.copy()
    for col in np.flatnonzero(missing.any(axis=0)):
        observed = x[~missing[:, col], col]
        x[missing[:, col], col] = np.median(observed) if observed.size else 0.0
    return x, int(missing.sum())


def _min_max(x: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1]; constant columns become 0."""
    low, span = x.min(axis=0), np.ptp(x, axis=0)
    scaled: np.ndarray = ((x - low) / np.where(span > 0, span, 1.0)).astype(np.float32)
    return scaled


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map class labels to 0..K-1 in sorted order (numeric order when all are numbers)."""
    try:
        classes = sorted(set(labels.tolist()), key=float)
    except ValueError:
        classes = sorted(set(labels.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in labels.tolist()], dtype=np.int64), len(classes)
