"""Tests of the Omniglot, CIFAR-100 and CelebA readers on tiny fixture files that each test
writes in the original layout (no real data is on these machines)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import COARSE_NAMES, FINE_NAMES, write_cifar, write_omniglot

from flexmtl.data import celeba, cifar, omniglot
from flexmtl.data.celeba import CelebAIndex, celeba_status, load_celeba_index, read_celeba_image
from flexmtl.data.cifar import Cifar100Data, cifar100_status, load_cifar100
from flexmtl.data.omniglot import (
    OMNIGLOT_ALPHABET_ORDER,
    OMNIGLOT_GUMBEL_ALPHABETS,
    OMNIGLOT_SORTED_ORDER,
    OmniglotTask,
    load_omniglot,
    omniglot_status,
)
from flexmtl.data.paths import DataFormatError
from flexmtl.errors import ConfigError, DataNotFoundError, UnknownNameError

Image = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------- Omniglot


TWO = {"Gujarati": ("images_background", 3), "Sylheti": ("images_evaluation", 2)}


def drawers(task: OmniglotTask, split: str, label: int) -> set[int]:
    """Which drawings (by their row-0 mark) of character ``label`` are in ``split``."""
    x, y = getattr(task, f"{split}_x"), getattr(task, f"{split}_y")
    return {int(np.flatnonzero(img[0, 0, :20] > 0.5)[0]) for img in x[y == label]}


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Every test reads its own files (the loaders cache by path)."""
    omniglot._load_task.cache_clear()
    cifar._read.cache_clear()
    celeba._read_index.cache_clear()


def test_omniglot_alphabet_constants():
    assert len(OMNIGLOT_ALPHABET_ORDER) == 50 == len(set(OMNIGLOT_ALPHABET_ORDER))
    assert set(OMNIGLOT_ALPHABET_ORDER) == set(OMNIGLOT_SORTED_ORDER)
    assert OMNIGLOT_GUMBEL_ALPHABETS == OMNIGLOT_ALPHABET_ORDER[:20]
    assert OMNIGLOT_GUMBEL_ALPHABETS[:3] == ("Gujarati", "Sylheti", "Arcadian")
    # The paper's 20 need both archives: 11 background and 9 evaluation alphabets.
    assert len(set(OMNIGLOT_GUMBEL_ALPHABETS) & set(omniglot.BACKGROUND_ALPHABETS)) == 11
    assert len(set(OMNIGLOT_GUMBEL_ALPHABETS) & set(omniglot.EVALUATION_ALPHABETS)) == 9
    assert list(OMNIGLOT_SORTED_ORDER[:30]) == sorted(OMNIGLOT_SORTED_ORDER[:30])
    assert list(OMNIGLOT_SORTED_ORDER[30:]) == sorted(OMNIGLOT_SORTED_ORDER[30:])


def test_omniglot_tasks_split_per_character_inverted(tmp_path):
    write_omniglot(tmp_path, TWO)
    tasks = load_omniglot(tmp_path, alphabets=["Sylheti", "Gujarati"])
    assert [t.alphabet for t in tasks] == ["Sylheti", "Gujarati"]
    assert [t.num_classes for t in tasks] == [2, 3]
    guj = tasks[1]
    assert guj.characters == ("character01", "character02", "character03")
    for split, per_char in (("train", 10), ("val", 4), ("test", 6)):
        x, y = getattr(guj, f"{split}_x"), getattr(guj, f"{split}_y")
        assert x.shape == (3 * per_char, 1, 105, 105) and x.dtype == np.float32
        assert y.dtype == np.int64 and np.bincount(y).tolist() == [per_char] * 3
        assert set(np.unique(x).tolist()) == {0.0, 1.0}
        # Inverted: white background 0, black strokes 1.
        assert x[:, 0, 100, 100].max() == 0.0 and x[:, 0, 45:55, 50:55].min() == 1.0
        # Label mapping: character<NN> -> NN - 1 (the row-1 mark of the fixture).
        assert all(img[0, 1, label] == 1.0 for img, label in zip(x, y, strict=True))
    for label in range(3):
        parts = [drawers(guj, s, label) for s in ("train", "val", "test")]
        assert sum(map(len, parts)) == 20 and set().union(*parts) == set(range(20))


def test_omniglot_split_is_deterministic_and_seeded(tmp_path):
    write_omniglot(tmp_path, TWO)
    first = load_omniglot(tmp_path, alphabets=["Gujarati", "Sylheti"], seed=3)
    omniglot._load_task.cache_clear()
    again = load_omniglot(tmp_path, alphabets=["Gujarati", "Sylheti"], seed=3)
    for a, b in zip(first, again, strict=True):
        for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # An alphabet's split does not depend on which other alphabets are loaded.
    alone = load_omniglot(tmp_path, alphabets=["Sylheti"], seed=3)[0]
    np.testing.assert_array_equal(alone.test_x, first[1].test_x)
    other = load_omniglot(tmp_path, alphabets=["Gujarati"], seed=4)[0]
    assert any(drawers(other, "test", c) != drawers(first[0], "test", c) for c in range(3))


def test_omniglot_resize_and_custom_split(tmp_path):
    write_omniglot(tmp_path, {"Gujarati": ("images_background", 2)})
    (task,) = load_omniglot(tmp_path, alphabets=["Gujarati"], size=28, split=(0.6, 0.1, 0.3))
    assert task.train_x.shape == (24, 1, 28, 28) and task.train_x.dtype == np.float32
    assert task.val_x.shape == (4, 1, 28, 28) and task.test_x.shape == (12, 1, 28, 28)
    assert 0.0 <= task.train_x.min() and task.train_x.max() <= 1.0
    # The 20x5-pixel stroke block (rows 40-59, columns 50-54) survives, antialiased.
    assert task.train_x[:, 0, 11:16, 13:15].max(axis=(1, 2)).min() > 0.5
    assert task.train_x[:, 0, 25, 25].max() < 1e-6
    with pytest.raises(ConfigError):
        load_omniglot(tmp_path, alphabets=["Gujarati"], split=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError):
        load_omniglot(tmp_path, alphabets="Gujarati")
    with pytest.raises(ConfigError):
        load_omniglot(tmp_path, alphabets=["Gujarati"], size=0)


def test_omniglot_default_is_the_papers_20_in_order(tmp_path):
    parts = {n: "images_background" for n in omniglot.BACKGROUND_ALPHABETS}
    parts |= {n: "images_evaluation" for n in omniglot.EVALUATION_ALPHABETS}
    write_omniglot(tmp_path, {n: (parts[n], 1) for n in OMNIGLOT_GUMBEL_ALPHABETS}, drawings=10)
    (row,) = omniglot_status(tmp_path)
    assert row["present"] and row["exact"] and row["to_get"] == ""
    tasks = load_omniglot(tmp_path)
    assert tuple(t.alphabet for t in tasks) == OMNIGLOT_GUMBEL_ALPHABETS
    assert all((len(t.train_y), len(t.val_y), len(t.test_y)) == (5, 2, 3) for t in tasks)


def test_omniglot_missing_data_says_what_to_download(tmp_path):
    (row,) = omniglot_status(tmp_path)
    assert not row["present"] and row["using"] is None
    assert "images_background.zip" in row["to_get"] and "images_evaluation.zip" in row["to_get"]
    with pytest.raises(DataNotFoundError) as err:
        load_omniglot(tmp_path)
    message = str(err.value)
    for expected in (
        "images_background.zip",
        "images_evaluation.zip",
        "brendenlake/omniglot",
        str(tmp_path / "omniglot"),
    ):
        assert expected in message
    # Only the background archive unzipped: an evaluation alphabet names its zip.
    write_omniglot(tmp_path, {"Gujarati": ("images_background", 1)})
    with pytest.raises(DataNotFoundError, match="images_evaluation.zip") as err:
        load_omniglot(tmp_path, alphabets=["Gujarati", "Sylheti"])
    assert "Sylheti" in str(err.value)
    with pytest.raises(UnknownNameError, match="Gujarati"):
        load_omniglot(tmp_path, alphabets=["Gujarat"])


def test_omniglot_corrupt_files(tmp_path):
    folder = write_omniglot(tmp_path, {"Gujarati": ("images_background", 1)})
    png = folder / "images_background" / "Gujarati" / "character01" / "0001_05.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataFormatError, match="0001_05.png"):
        load_omniglot(tmp_path, alphabets=["Gujarati"])
    Image.new("L", (64, 64), 255).save(png)
    omniglot._load_task.cache_clear()
    with pytest.raises(DataFormatError, match="105x105"):
        load_omniglot(tmp_path, alphabets=["Gujarati"])
    (folder / "images_evaluation" / "Sylheti").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no character"):
        load_omniglot(tmp_path, alphabets=["Sylheti"])


# ----------------------------------------------------------------------------- CIFAR-100

@pytest.mark.parametrize("layout", ["cifar-100/cifar-100-python", "cifar-100", "cifar-100-python"])
def test_cifar100_reads_the_python_pickles(tmp_path, layout):
    content = write_cifar(tmp_path / layout)
    data = load_cifar100(tmp_path)
    assert isinstance(data, Cifar100Data)
    assert data.train_x.shape == (12, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert (
        data.train_x.dtype == np.float32 and 0.0 <= data.train_x.min() <= data.train_x.max() <= 1.0
    )
    raw = content["train"][b"data"]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    np.testing.assert_allclose(
        data.train_x[3, 1] * 255.0, raw[3, 1024:2048].reshape(32, 32), atol=1e-3
    )
    np.testing.assert_array_equal(data.train_fine, content["train"][b"fine_labels"])
    np.testing.assert_array_equal(data.test_coarse, content["test"][b"coarse_labels"])
    assert data.train_fine.dtype == np.int64 and data.train_coarse.dtype == np.int64
    assert data.fine_names[7] == "fine_07" and data.coarse_names[19] == "coarse_19"
    present = np.unique(data.train_fine)
    np.testing.assert_array_equal(data.fine_to_coarse[present], present // 5)
    (row,) = cifar100_status(tmp_path)
    assert row["present"] and row["exact"] and str(tmp_path / layout) in row["using"]


def test_cifar100_missing_data_says_what_to_download(tmp_path):
    (row,) = cifar100_status(tmp_path)
    assert (
        not row["present"] and row["using"] is None and "cifar-100-python.tar.gz" in row["to_get"]
    )
    with pytest.raises(DataNotFoundError, match="cifar-100-python.tar.gz") as err:
        load_cifar100(tmp_path)
    assert "University of Toronto" in str(err.value) and str(tmp_path / "cifar-100") in str(
        err.value
    )
    folder = tmp_path / "cifar-100" / "cifar-100-python"
    write_cifar(folder)
    (folder / "meta").unlink()
    with pytest.raises(DataNotFoundError, match="missing meta"):
        load_cifar100(tmp_path)


def test_cifar100_corrupt_files(tmp_path):
    folder = tmp_path / "cifar-100"
    content = write_cifar(folder)
    blob = (folder / "train").read_bytes()
    (folder / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="train"):
        load_cifar100(tmp_path)
    cifar._read.cache_clear()
    bad = {**content["train"], b"data": np.zeros((12, 100), dtype=np.uint8)}
    (folder / "train").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataFormatError, match="3072"):
        load_cifar100(tmp_path)
    cifar._read.cache_clear()
    bad = {**content["train"], b"fine_labels": [100] * 12}
    (folder / "train").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataFormatError, match="fine_labels"):
        load_cifar100(tmp_path)
    cifar._read.cache_clear()
    (folder / "train").write_bytes(pickle.dumps(content["train"]))
    (folder / "meta").write_bytes(
        pickle.dumps({b"fine_label_names": FINE_NAMES[:10], b"coarse_label_names": COARSE_NAMES})
    )
    with pytest.raises(DataFormatError, match="fine_label_names"):
        load_cifar100(tmp_path)


# ----------------------------------------------------------------------------- CelebA

ATTRS = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
COLOURS = {"000001.jpg": (255, 0, 0), "000002.jpg": (0, 255, 0), "000003.jpg": (0, 0, 255)}


def celeba_values(i: int) -> np.ndarray:
    """Attribute values of image i in {-1, 1}: attribute j is present iff (i + j) % 3 == 0."""
    return np.where((i + np.arange(40)) % 3 == 0, 1, -1)


def write_celeba(folder: Path, anno_dirs: bool = False, nested: bool = False) -> Path:
    images = folder / "img_align_celeba"
    if nested:
        images = images / "img_align_celeba"
    images.mkdir(parents=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (178, 218), colour).save(images / name, quality=95)
    lines = [str(len(COLOURS)), " ".join(ATTRS) + " "]
    for i, name in enumerate(COLOURS):
        # The original aligns values in columns: two spaces before 1, one before -1.
        lines.append(name + "".join(f" {v:2d}" for v in celeba_values(i)))
    attr_dir = folder / "Anno" if anno_dirs else folder
    eval_dir = folder / "Eval" if anno_dirs else folder
    attr_dir.mkdir(exist_ok=True)
    eval_dir.mkdir(exist_ok=True)
    (attr_dir / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (eval_dir / "list_eval_partition.txt").write_text(
        "".join(f"{name} {i}\n" for i, name in enumerate(COLOURS))
    )
    return images


@pytest.mark.parametrize("anno_dirs,nested", [(False, False), (True, True)])
def test_celeba_index_splits_and_attributes(tmp_path, anno_dirs, nested):
    images = write_celeba(tmp_path / "celeba", anno_dirs=anno_dirs, nested=nested)
    index = load_celeba_index(tmp_path, check_images=True)
    assert isinstance(index, CelebAIndex)
    assert index.attribute_names == tuple(ATTRS) and index.image_dir == images
    for code, split in enumerate(("train", "val", "test")):
        paths, attrs = index.split(split)
        assert paths == (str(images / f"00000{code + 1}.jpg"),)
        assert attrs.dtype == np.int8 and attrs.shape == (1, 40)
        np.testing.assert_array_equal(attrs[0], (celeba_values(code) == 1).astype(np.int8))
    (row,) = celeba_status(tmp_path)
    assert row["present"] and row["exact"]
    with pytest.raises(ConfigError):
        index.split("validation")


def test_read_celeba_image(tmp_path):
    images = write_celeba(tmp_path / "celeba")
    x = read_celeba_image(images / "000001.jpg", 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[0].mean() > 0.95 and x[1].mean() < 0.05 and x[2].mean() < 0.05  # red
    blue = read_celeba_image(images / "000003.jpg")
    assert blue.shape == (3, 218, 178) and blue[2].mean() > 0.95
    (images / "000002.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataFormatError, match="000002.jpg"):
        read_celeba_image(images / "000002.jpg", 32)
    with pytest.raises(DataNotFoundError):
        read_celeba_image(images / "000009.jpg", 32)


def test_celeba_missing_data_says_what_to_download(tmp_path):
    (row,) = celeba_status(tmp_path)
    assert not row["present"] and row["using"] is None
    with pytest.raises(DataNotFoundError) as err:
        load_celeba_index(tmp_path)
    for expected in (
        "img_align_celeba.zip",
        "list_attr_celeba.txt",
        "list_eval_partition.txt",
        str(tmp_path / "celeba"),
    ):
        assert expected in str(err.value)
    images = write_celeba(tmp_path / "celeba")
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataNotFoundError, match="missing list_eval_partition.txt"):
        load_celeba_index(tmp_path)
    write_celeba_partition = "".join(f"{n} {i}\n" for i, n in enumerate(COLOURS))
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(write_celeba_partition)
    (images / "000002.jpg").unlink()
    load_celeba_index(tmp_path)  # only the first and last images are checked by default
    with pytest.raises(DataNotFoundError, match="000002.jpg"):
        load_celeba_index(tmp_path, check_images=True)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda ls: ["4", *ls[1:]], "announces 4"),
        (lambda ls: [ls[0], " ".join(ATTRS[:39]), *ls[2:]], "40 distinct"),
        (lambda ls: [*ls[:2], ls[2].replace(" 1", " 2", 1), *ls[3:]], "-1 or 1"),
        (lambda ls: [*ls[:2], ls[2].rsplit(" ", 1)[0], *ls[3:]], "line 3"),
        (lambda ls: ["three", *ls[1:]], "image count"),
    ],
)
def test_celeba_corrupt_attribute_file(tmp_path, edit, match):
    write_celeba(tmp_path / "celeba")
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DataFormatError, match=match):
        load_celeba_index(tmp_path)


def test_celeba_partition_must_match(tmp_path):
    write_celeba(tmp_path / "celeba")
    path = tmp_path / "celeba" / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n000002.jpg 1\n")
    with pytest.raises(DataFormatError, match="000003.jpg"):
        load_celeba_index(tmp_path)
    celeba._read_index.cache_clear()
    path.write_text("000001.jpg 0\n000002.jpg 3\n000003.jpg 2\n")
    with pytest.raises(DataFormatError, match="line 2"):
        load_celeba_index(tmp_path)
