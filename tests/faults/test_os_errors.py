"""Disk and OS errors, malformed config files and a closed stdout: each ends with one line
``flexmtl: error: ...`` naming the culprit and a documented exit status (1 a disk or OS
error, 2 bad input, 141 a reader that went away, 143 SIGTERM), never a traceback, and what
was already written stays intact.

A full disk is simulated by making ``os.fsync``, ``os.replace`` or a write raise ENOSPC; a
read-only folder by ``os.open`` raising EACCES (a real ``chmod`` does not stop root).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import python_env, sigterm_when

from flexmtl import run_folder
from flexmtl.cli import EXIT_STATUS, _os_error_message, main
from flexmtl.errors import ConfigError, DataNotFoundError
from flexmtl.experiments.base import load_config_file
from flexmtl.run_folder import atomic_save, atomic_write, load_checkpoint, write_json

TINY = ["random-tasks", "n=8", "m=4", "--steps", "4", "--seeds", "1", "--methods", "parallel",
        "--no-sweep", "--no-progress", "--no-plots"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


pytestmark = pytest.mark.usefixtures("isolated")  # tests/faults/conftest.py


def _error(capsys) -> str:
    """stderr, which must be one line and no traceback."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------- atomic writes


def test_full_disk_at_fsync_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json(target, {"old": 1})
    monkeypatch.setattr(run_folder.os, "fsync", _full_disk)
    with pytest.raises(OSError) as info:
        write_json(target, {"new": 2})
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)  # the file meant, not the temporary one
    assert json.loads(target.read_text()) == {"old": 1}
    assert _temporary_files(tmp_path) == []


def test_full_disk_at_replace_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    write_json(target, {"old": 1})

    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)

    monkeypatch.setattr(run_folder.os, "replace", replace)
    with pytest.raises(OSError) as info:
        write_json(target, {"new": 2})
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert json.loads(target.read_text()) == {"old": 1}
    assert _temporary_files(tmp_path) == []


def test_full_disk_during_the_write_names_the_target(tmp_path):
    target = tmp_path / "log.csv"
    target.write_text("step\n1\n")

    def write(_f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write names no file

    with pytest.raises(OSError) as info:
        atomic_write(target, write, text=True)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_text() == "step\n1\n"
    assert _temporary_files(tmp_path) == []


def test_full_disk_on_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder.os, "fsync", _full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_json(tmp_path / "new.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_full_disk_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"step": 10, "w": torch.ones(3)}, target)
    fsync = os.fsync
    monkeypatch.setattr(run_folder.os, "fsync", _full_disk)
    with pytest.raises(OSError) as info:
        atomic_save({"step": 20, "w": torch.zeros(3)}, target)
    assert info.value.filename == str(target)
    monkeypatch.setattr(run_folder.os, "fsync", fsync)
    state = load_checkpoint(target)
    assert state["step"] == 10 and torch.equal(state["w"], torch.ones(3))
    assert _temporary_files(tmp_path) == []


def test_read_only_folder_names_the_target_not_the_temporary(tmp_path, monkeypatch):
    def refuse(path, *_args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(run_folder.os, "open", refuse)
    with pytest.raises(PermissionError) as info:  # the class survives the renaming
        write_json(tmp_path / "result.json", {})
    assert info.value.filename == str(tmp_path / "result.json")


def test_an_error_naming_another_file_passes_unchanged(tmp_path):
    other = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/elsewhere/x")

    def write(_f):
        raise other

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "a.json", write)
    assert info.value is other
    assert list(tmp_path.iterdir()) == []


def test_a_non_os_error_passes_unchanged_and_leaves_no_temporary(tmp_path):
    def write(_f):
        raise ValueError("not serialisable")

    with pytest.raises(ValueError, match="not serialisable"):
        atomic_write(tmp_path / "a.json", write)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- the command line


def test_out_naming_a_file(capsys):
    Path("o").write_text("my notes")
    assert main(["run", *TINY, "--out", "o"]) == 1
    assert _error(capsys) == "flexmtl: error: o is a file where a folder is needed\n"
    assert Path("o").read_text() == "my notes"


def test_out_below_a_file(capsys):
    Path("o").write_text("my notes")
    assert main(["run", *TINY, "--out", "o/sub"]) == 1
    assert _error(capsys) == "flexmtl: error: o is a file where a folder is needed\n"
    assert Path("o").read_text() == "my notes"


def test_read_only_folder_for_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        try:
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("running as root: chmod does not stop writes")
        assert main(["run", *TINY, "--out", str(ro / "o")]) == 1
        assert _error(capsys) == f"flexmtl: error: {ro / 'o'}: Permission denied\n"
    finally:
        ro.chmod(0o700)


def test_read_only_folder_simulated(capsys, monkeypatch):
    def refuse(path, *_args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(run_folder.os, "open", refuse)
    assert main(["run", *TINY, "--out", "o"]) == 1
    assert _error(capsys) == f"flexmtl: error: {Path('o', 'config.json')}: Permission denied\n"


def test_full_disk_on_a_rerun_loses_nothing(capsys, monkeypatch):
    assert main(["run", *TINY, "--out", "o"]) == 0
    before = {p: p.read_bytes() for p in Path("o").rglob("*") if p.is_file()}
    capsys.readouterr()
    monkeypatch.setattr(run_folder.os, "fsync", _full_disk)
    assert main(["run", *TINY, "--out", "o"]) == 1
    err = _error(capsys)
    assert err == f"flexmtl: error: {Path('o', 'config.json')}: No space left on device\n"
    after = {p: p.read_bytes() for p in Path("o").rglob("*") if p.is_file()}
    assert after == before


def test_full_disk_at_the_result_keeps_the_checkpoint(capsys, monkeypatch):
    replace = os.replace

    def fail_result(src, dst):
        if Path(dst).name == "result.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)
        replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", fail_result)
    assert main(["run", *TINY, "--out", "o"]) == 1
    run = Path("o", "parallel", "seed-0")
    assert _error(capsys) == (f"flexmtl: error: {run / 'result.json'}: "
                              "No space left on device\n")
    assert load_checkpoint(run / "last.pt")["step"] == 4  # the training is not lost
    assert not (run / "result.json").exists() and _temporary_files(Path("o")) == []
    monkeypatch.setattr(run_folder.os, "replace", replace)  # room again: the rerun finishes
    assert main(["run", *TINY, "--out", "o"]) == 0
    assert (run / "result.json").is_file()


def test_report_beside_a_file(capsys):
    Path("d").write_text("x")
    assert main(["reproduce", "--report-only", "--out", "runs", "--doc",
                 str(Path("d", "REPRODUCTION.md"))]) == 1
    assert _error(capsys).endswith("flexmtl: error: d is a file where a folder is needed\n")
    assert Path("d").read_text() == "x"


def test_data_not_found_is_still_a_flexmtl_error(capsys, monkeypatch):
    # DataNotFoundError is also a FileNotFoundError: it keeps its own message and status 2
    def missing(_args):
        raise DataNotFoundError("MNIST is not under ~/.flexmtl/data/mnist")

    monkeypatch.setattr("flexmtl.cli._cmd_data", missing)
    assert main(["data"]) == 2
    assert _error(capsys) == "flexmtl: error: MNIST is not under ~/.flexmtl/data/mnist\n"


def test_an_os_error_anywhere_is_one_line(capsys, monkeypatch):
    def broken(_args):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "somewhere/file.npz")

    monkeypatch.setattr("flexmtl.cli._cmd_data", broken)
    assert main(["data"]) == 1
    assert _error(capsys) == "flexmtl: error: somewhere/file.npz: Is a directory\n"


def test_os_error_messages():
    assert _os_error_message(OSError(errno.EXDEV, "Invalid cross-device link", "a", None,
                                     "b")) == "a -> b: Invalid cross-device link"
    assert _os_error_message(ENOSPC) == "No space left on device"
    assert _os_error_message(OSError("no such thing")) == "no such thing"
    # EEXIST where nothing is a file: the system's words
    assert _os_error_message(FileExistsError(errno.EEXIST, "File exists", ".")) \
        == ".: File exists"


def test_exit_statuses_are_documented(capsys):
    assert set(EXIT_STATUS) == {0, 1, 2, 130, 141, 143}
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 a disk or OS error" in text
    assert "143 stopped by SIGTERM (rerun the same command to resume)" in text


# ---------------------------------------------------------------------- SIGTERM


def test_sigterm_releases_the_folder_and_the_rerun_resumes(capsys, monkeypatch):
    """SIGTERM as Ctrl-C: finally blocks run (no run.lock is left), one line, exit 143; the
    handler main() installed is gone afterwards, and the rerun resumes from last.pt."""
    import flexmtl.runner
    from flexmtl.training import Trainer

    def terminate(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    class TerminatedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[terminate], **kwargs)

    before = signal.getsignal(signal.SIGTERM)
    args = ["run", *TINY, "eval_every=2", "--out", "o"]
    monkeypatch.setattr(flexmtl.runner, "Trainer", TerminatedTrainer)
    assert main(args) == 143
    assert _error(capsys) == ("flexmtl: stopped by SIGTERM; rerun the same command to "
                              "resume\n")
    assert signal.getsignal(signal.SIGTERM) == before
    assert not list(Path("o").rglob("run.lock"))
    run = Path("o/parallel/seed-0")
    assert (run / "last.pt").exists() and not (run / "result.json").exists()
    monkeypatch.setattr(flexmtl.runner, "Trainer", Trainer)
    assert main(args) == 0
    assert json.loads((run / "result.json").read_text())["resumed_from"] == 2


def test_sigterm_in_a_real_process_exits_143_without_a_lock(tmp_path):
    out = tmp_path / "o"
    args = [a if a != "4" else "100000" for a in TINY]  # long enough to be killed
    returncode, err = sigterm_when(["run", *args, "--out", str(out)],
                                   lambda: bool(list(out.rglob("seed-0/run.lock"))))
    assert returncode == 143, err
    assert err.splitlines()[-1] == ("flexmtl: stopped by SIGTERM; rerun the same command to "
                                    "resume")
    assert "Traceback" not in err
    assert not list(out.rglob("run.lock"))


# ---------------------------------------------------------------------- config files


@pytest.mark.parametrize("text, message", [
    ('{"n": 8,\n "m": }', "is not valid JSON: Expecting value (line 2, column 7)"),
    ('{"n": 8 "m": 4}', "is not valid JSON: Expecting ',' delimiter (line 1, column 9)"),
    ("", "is not valid JSON: Expecting value (line 1, column 1)"),
    ("[1, 2]", "must hold a mapping of keys to values, not a list"),
    ('"n=8"', "must hold a mapping of keys to values, not a str"),
])
def test_bad_json_config(text, message, capsys):
    path = Path("cfg.json")
    path.write_text(text)
    assert main(["run", *TINY, "--config", str(path), "--out", "o"]) == 2
    assert _error(capsys) == f"flexmtl: error: config file {path} {message}\n"
    assert not Path("o").exists()


@pytest.mark.parametrize("text, message", [
    ("n: 8\nm: [4, 5\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' "
                         "(line 3, column 1)"),
    ("n: 8\n\tm: 4\n", "is not valid YAML: found character '\\t' that cannot start any token "
                       "(line 2, column 1)"),
    ("n: 8\nn: : 9\n", "is not valid YAML: mapping values are not allowed here "
                       "(line 2, column 4)"),
    ("- n\n- m\n", "must hold a mapping of keys to values, not a list"),
    ("1: 2\n", "key 1 is not a name"),
])
def test_bad_yaml_config(text, message, capsys):
    pytest.importorskip("yaml")
    path = Path("cfg.yaml")
    path.write_text(text)
    assert main(["run", *TINY, "--config", str(path), "--out", "o"]) == 2
    err = _error(capsys)
    assert err.startswith(f"flexmtl: error: config file {path}")
    assert message in err


def test_empty_yaml_config_is_no_keys():
    pytest.importorskip("yaml")
    Path("cfg.yaml").write_text("# nothing yet\n")
    assert load_config_file("cfg.yaml") == {}


def test_config_that_is_a_folder(capsys):
    Path("cfg.json").mkdir()
    assert main(["run", *TINY, "--config", "cfg.json", "--out", "o"]) == 2
    assert _error(capsys) == "flexmtl: error: config file cfg.json cannot be read: Is a directory\n"


def test_unreadable_config(monkeypatch):
    Path("cfg.json").write_text("{}")
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self.name == "cfg.json":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(ConfigError, match="^config file cfg.json cannot be read: "
                                          "Permission denied$"):
        load_config_file("cfg.json")


def test_config_that_is_not_text(capsys):
    Path("cfg.json").write_bytes(b'{"n": 8}\xff\xfe')
    assert main(["run", *TINY, "--config", "cfg.json", "--out", "o"]) == 2
    assert _error(capsys) == "flexmtl: error: config file cfg.json is not UTF-8 text (byte 8)\n"


def test_missing_config(capsys):
    assert main(["run", *TINY, "--config", "nope.yaml", "--out", "o"]) == 2
    assert _error(capsys) == "flexmtl: error: config file nope.yaml does not exist\n"


# ---------------------------------------------------------------------- a closed stdout


class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader went away."""

    def write(self, s):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def flush(self):
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def test_closed_stdout_stops_quietly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["data", "list", "--root", str(tmp_path)]) == 141
    assert capsys.readouterr().err == ""


def test_closed_pipe_leaves_stdout_on_devnull(tmp_path, capsys, monkeypatch):
    # Python's recipe: after the broken pipe, stdout's descriptor points at devnull, so that
    # the interpreter's last flush of what is buffered cannot fail again
    read, write = os.pipe()
    os.close(read)
    stdout = io.TextIOWrapper(io.FileIO(write, "w"), encoding="utf-8")
    captured = sys.stdout
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["data", "list", "--root", str(tmp_path)]) == 141
        stdout.write("still buffered\n")
        stdout.flush()  # goes to devnull
    finally:
        monkeypatch.setattr(sys, "stdout", captured)
        stdout.close()
    assert capsys.readouterr().err == ""


def test_closed_pipe_in_a_real_process(tmp_path):
    err = tmp_path / "err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "flexmtl", "data", "list", "--root",
                                 str(tmp_path)], stdout=subprocess.PIPE, stderr=stderr,
                                env=python_env())
        assert proc.stdout is not None
        proc.stdout.close()  # the reader leaves before anything is written
        code = proc.wait(timeout=300)
    assert err.read_bytes() == b""
    assert code == 141


def test_data_into_head(tmp_path):
    # whether the pipe breaks depends on timing; either way no traceback and the first line
    command = (f"{sys.executable} -m flexmtl data list --root {tmp_path} | head -1; "
               "exit ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          env=python_env(), timeout=300)
    assert proc.stderr == ""
    assert proc.returncode in (0, 141)
    assert proc.stdout.startswith(f"Data sources under {tmp_path}")
    assert proc.stdout.count("\n") == 1


def test_a_full_disk_while_logging_names_the_log(tmp_path, monkeypatch):
    from flexmtl.run_folder import CsvLog

    log = CsvLog(tmp_path / "train_log.csv")
    log.write({"step": 1, "loss": 0.5})

    class Full:
        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log, "writer", Full())
    with pytest.raises(OSError, match="No space left") as caught:
        log.write({"step": 2, "loss": 0.4})
    assert caught.value.filename == str(tmp_path / "train_log.csv")
    log.close()
    assert (tmp_path / "train_log.csv").read_text().splitlines() == ["step,loss", "1,0.5"]
