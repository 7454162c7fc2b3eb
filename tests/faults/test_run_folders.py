"""Run folders that cannot mix or stick: a rerun resumes only the same run (fingerprint), says
so, refuses anything else with what differs and the ways out; one process at a time (the
lock, stale locks taken over); damaged files are found before any training step, naming the
file, and the previous checkpoint takes over where it is good.

Each case asserts the exact error class and that the message names the culprit; the
trainer cases also assert (with a callback) that no training step ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import flexmtl.runner
from flexmtl import Task, TrainConfig, Trainer, build_model, make_core
from flexmtl.cli import main
from flexmtl.errors import (
    ConfigError,
    CorruptFileError,
    FolderLockedError,
    FolderMismatchError,
)
from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.run_folder import ExperimentFolder, FolderLock, TrainingRun, load_checkpoint
from flexmtl.runner import run_experiment

SRC = str(Path(flexmtl.__file__).resolve().parents[1])
TINY = ["random-tasks", "n=8", "m=4", "--steps", "2", "--seeds", "1", "--methods", "parallel",
        "--no-sweep", "--no-progress", "--no-plots"]
RUN_KW = dict(methods=["parallel"], seeds=1, steps=2, overrides={"n": 8, "m": 4},
              sweep=None, progress=False, plots=False, log=lambda _: None)


pytestmark = pytest.mark.usefixtures("isolated")  # tests/faults/conftest.py


def _env() -> dict[str, str]:
    """The child's environment: this flexmtl (the worktree's src) first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}


def make_tasks(names=("a", "b"), n=24, features=3, note="", seed=0, kind="multiclass"):
    rng = np.random.default_rng(seed)
    tasks = []
    for name in names:
        x = rng.random((n, features)).astype(np.float32)
        y = (x[:, 0] > 0.5).astype(np.int64)
        tasks.append(Task(name, kind, (x[:16], y[:16]), (x[16:20], y[16:20]),
                          (x[20:], y[20:]), note=note))
    return tasks


def make_model(tasks, width=8, method="parallel"):
    torch.manual_seed(0)
    return build_model(tasks, make_core(method, dense_blocks(width, 2), len(tasks)))


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 4, "batch_size": 4, "eval_every": 2, "progress": False,
                          "lr": 0.01, **changes})


class Steps:
    """A callback recording the steps that ran."""

    def __init__(self):
        self.steps: list[int] = []

    def __call__(self, trainer, step):
        self.steps.append(step)


def stop_at(step):
    """A callback that interrupts training (as Ctrl-C does) after step ``step``."""

    def stop(trainer, now):
        if now == step:
            raise KeyboardInterrupt

    return stop


def train(out, tasks=None, model=None, cfg=None, callbacks=(), **kwargs):
    tasks = tasks or make_tasks()
    steps = Steps()
    trainer = Trainer(model or make_model(tasks), tasks, cfg or config(), out_dir=out,
                      callbacks=[steps, *callbacks], **kwargs)
    return trainer.fit(), trainer, steps


def refused(error, match, out, tasks=None, model=None, cfg=None, held=False, **kwargs):
    """The trainer is refused with ``error`` matching ``match``, no step ran and the folder
    is not left locked (``held``: its lock is another holder's)."""
    tasks = tasks or make_tasks()
    steps = Steps()
    trainer = Trainer(model or make_model(tasks), tasks, cfg or config(), out_dir=out,
                      callbacks=[steps], **kwargs)
    with pytest.raises(error, match=match) as caught:
        trainer.fit()
    assert steps.steps == []  # found before any training step
    assert (Path(out) / FolderLock.NAME).exists() == held  # the folder is not left locked
    return caught.value


# ---------------------------------------------------------------------- fingerprint

def _changed_data(tasks):
    tasks[0].train.x[3, 1] += 1.0  # one value
    return tasks


def _changed_labels(tasks):
    tasks[1].train.y[0] = 1 - tasks[1].train.y[0]
    return tasks


def _changed_val(tasks):
    tasks[0].val.x[0, 0] = 0.123
    return tasks


MISMATCHES = {  # what changes -> (tasks, model, cfg) of the rerun, and the key the diff names
    "config lr": (lambda: (None, None, config(lr=0.02)), "config.lr: 0.01 -> 0.02"),
    "config batch_size": (lambda: (None, None, config(batch_size=8)),
                          "config.batch_size: 4 -> 8"),
    "config seed": (lambda: (None, None, config(seed=1)), "config.seed: 0 -> 1"),
    "config schedule": (lambda: (None, None, config(schedule="round-robin")),
                        "config.schedule: 'joint' -> 'round-robin'"),
    "config select_on": (lambda: (None, None, config(select_on="last")),
                         "config.select_on: 'val_loss' -> 'last'"),
    "task name": (lambda: (make_tasks(("a", "c")), None, None),
                  'tasks: ["a", "b"] -> ["a", "c"]'),
    "data values": (lambda: (_changed_data(make_tasks()), None, None), "task a.train.x: "),
    "labels": (lambda: (_changed_labels(make_tasks()), None, None), "task b.train.y: "),
    "validation data": (lambda: (_changed_val(make_tasks()), None, None), "task a.val.x: "),
    "other data, same shapes": (lambda: (make_tasks(seed=1), None, None), "task a.train.x: "),
    "input shape": (lambda: (make_tasks(features=4), None, None),
                    "task a.input_shape: [3] -> [4]"),
    "split size": (lambda: (make_tasks(n=26), None, None), "task a.test.size: 4 -> 6"),
    "note": (lambda: (make_tasks(note="v2"), None, None), "task a.note: '' -> 'v2'"),
    "kind": (lambda: (make_tasks(kind="binary"), None, None),
             "task a.kind: 'multiclass' -> 'binary'"),
    "model width": (lambda: (None, make_model(make_tasks(), width=16), None),
                    r"model\.\S+: \[8(, 8)?\] -> \[16"),
    "model method": (lambda: (None, make_model(make_tasks(), method="soft"), None), "model."),
}


@pytest.mark.parametrize("change", list(MISMATCHES))
def test_a_rerun_of_something_else_is_refused_with_the_diff(tmp_path, change):
    train(tmp_path)
    build, key = MISMATCHES[change]
    tasks, model, cfg = build()
    tasks = tasks or make_tasks()
    error = refused(FolderMismatchError, re.escape(key) if change != "model width" else key,
                    tmp_path, tasks=tasks, model=model or make_model(tasks), cfg=cfg)
    message = str(error)
    assert str(tmp_path) in message and "--restart" in message and "--out" in message
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4  # the run is kept


@pytest.mark.parametrize("change", [{"steps": 6}, {"eval_every": 1, "steps": 6},
                                    {"log_every": 2, "steps": 6}])
def test_settings_that_may_change_on_resume_resume(tmp_path, change, capsys):
    train(tmp_path)
    result, trainer, steps = train(tmp_path, cfg=config(**change))
    assert trainer.resumed_from == 4 and steps.steps == [5, 6] and result.steps == 6
    assert f"resuming {tmp_path} from step 4" in capsys.readouterr().err


def test_a_checkpoint_without_fingerprint_is_refused(tmp_path):
    train(tmp_path)
    (tmp_path / TrainingRun.FINGERPRINT).unlink()
    error = refused(FolderMismatchError, "holds a checkpoint .* but no fingerprint.json",
                    tmp_path, cfg=config(steps=6))
    assert "resume='restart'" in str(error)


def test_the_fingerprint_is_written_with_the_first_checkpoint(tmp_path):
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks), tasks, config(eval_every=2), out_dir=tmp_path)
    seen = []
    trainer.callbacks.append(lambda t, step: seen.append(
        (step, (tmp_path / "fingerprint.json").exists(), (tmp_path / "last.pt").exists())))
    trainer.fit()
    assert seen[:2] == [(1, False, False), (2, True, True)]
    data = json.loads((tmp_path / "fingerprint.json").read_text())
    assert data["tasks"] == ["a", "b"] and "config.steps" not in data


# ---------------------------------------------------------------------- resume policies

def test_auto_resumes_a_finished_run_and_says_so(tmp_path, capsys):
    first, _, _ = train(tmp_path)
    capsys.readouterr()
    again, trainer, steps = train(tmp_path)
    assert steps.steps == [] and trainer.resumed_from == 4
    assert again.test == first.test
    assert capsys.readouterr().err == (f"resuming {tmp_path} from step 4 (resume='restart' or "
                                       "flexmtl run --restart to start over)\n")


def test_auto_on_an_empty_folder_starts_quietly(tmp_path, capsys):
    _, trainer, steps = train(tmp_path / "new")
    assert steps.steps == [1, 2, 3, 4] and trainer.resumed_from == 0
    assert capsys.readouterr().err == ""


def test_must_with_nothing_to_resume_is_an_error(tmp_path):
    error = refused(ConfigError, "resume='must', but .* holds no last.pt", tmp_path,
                    resume="must")
    assert str(tmp_path) in str(error)


def test_must_resumes(tmp_path):
    train(tmp_path, cfg=config(steps=2))
    _, trainer, steps = train(tmp_path, resume="must")
    assert trainer.resumed_from == 2 and steps.steps == [3, 4]


def test_restart_deletes_the_run_even_of_another_fingerprint(tmp_path, capsys):
    train(tmp_path)
    (tmp_path / "result.json").write_text("{}")
    tasks = make_tasks(("x", "y"))
    result, trainer, steps = train(tmp_path, tasks=tasks, resume="restart")
    assert steps.steps == [1, 2, 3, 4] and trainer.resumed_from == 0
    assert not (tmp_path / "result.json").exists()
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3", "4"]
    assert json.loads((tmp_path / "fingerprint.json").read_text())["tasks"] == ["x", "y"]
    assert f"restarting {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("resume, says", [(True, "'auto'"), (False, "'restart'"),
                                          ("yes", "must be one of")])
def test_resume_is_a_policy_not_a_flag(tmp_path, resume, says):
    tasks = make_tasks()
    with pytest.raises(ConfigError, match=says):
        Trainer(make_model(tasks), tasks, config(), out_dir=tmp_path, resume=resume)


def test_must_without_a_folder_is_refused_by_the_constructor():
    tasks = make_tasks()
    with pytest.raises(ConfigError, match="needs an out_dir"):
        Trainer(make_model(tasks), tasks, config(), resume="must")


def test_the_constructor_touches_no_file(tmp_path):
    tasks = make_tasks()
    Trainer(make_model(tasks), tasks, config(), out_dir=tmp_path / "later")
    assert not (tmp_path / "later").exists()


# ---------------------------------------------------------------------- the lock

LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from flexmtl.run_folder import FolderLock
    lock = FolderLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture(scope="module")
def other_process(tmp_path_factory):
    """A live process holding the lock of a folder ``out``: the folder and the PID."""
    out = tmp_path_factory.mktemp("locked") / "out"
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the PID names no process
    return proc.pid


def test_a_folder_locked_by_a_live_process_is_refused(other_process):
    out, pid = other_process
    error = refused(FolderLockedError, f"in use by process {pid} on host "
                    f"{re.escape(socket.gethostname())}", out, held=True)
    assert f"delete {out / 'run.lock'}" in str(error)


def test_two_commands_on_one_out_the_second_is_refused(other_process, capsys):
    out, pid = other_process
    assert main(["run", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flexmtl: error: {out} is in use by process {pid} on host ")
    assert not (out / "config.json").exists()  # nothing was written


def test_a_second_trainer_in_this_process_is_refused(tmp_path):
    tasks = make_tasks()
    first = Trainer(make_model(tasks), tasks, config(), out_dir=tmp_path)
    first.setup()
    refused(FolderLockedError, rf"process {os.getpid()} \(this process\)", tmp_path,
            held=True)
    first.fit()  # still its own
    assert not (tmp_path / "run.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    (tmp_path / "run.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "started": "", "command": "x"}))
    _, _, steps = train(tmp_path)
    assert steps.steps == [1, 2, 3, 4] and not (tmp_path / "run.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_by_the_cli(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert main(["run", *TINY, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "results.json").exists() and not (out / "run.lock").exists()


@pytest.mark.parametrize("lock, says", [
    ({"pid": 1, "host": "elsewhere.example"}, "process 1 on host elsewhere.example"),
    ({"pid": "?", "host": socket.gethostname()}, "process ? on host"),
    ("{torn", "cannot be read"),
])
def test_a_lock_we_cannot_judge_is_refused_never_guessed(tmp_path, lock, says):
    (tmp_path / "run.lock").write_text(lock if isinstance(lock, str) else json.dumps(lock))
    tasks = make_tasks()
    steps = Steps()
    trainer = Trainer(make_model(tasks), tasks, config(), out_dir=tmp_path, callbacks=[steps])
    with pytest.raises(FolderLockedError, match=re.escape(says)) as caught:
        trainer.fit()
    assert steps.steps == [] and (tmp_path / "run.lock").exists()  # not ours: kept
    assert f"delete {tmp_path / 'run.lock'}" in str(caught.value)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_after_an_exception(tmp_path, failure):
    def fail(trainer, step):
        if step == 3:
            raise failure("stop")

    tasks = make_tasks()
    trainer = Trainer(make_model(tasks), tasks, config(), out_dir=tmp_path, callbacks=[fail])
    with pytest.raises(failure):
        trainer.fit()
    assert not (tmp_path / "run.lock").exists()
    _, again, steps = train(tmp_path)
    assert again.resumed_from == 2 and steps.steps == [3, 4]


def test_the_runner_releases_its_lock_after_an_error(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(flexmtl.runner, "Trainer", boom)
    with pytest.raises(RuntimeError):
        run_experiment("random-tasks", out_dir=tmp_path / "o", **RUN_KW)
    assert not (tmp_path / "o" / "run.lock").exists()


# ---------------------------------------------------------------------- damaged files

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint at all")


def _list(path: Path) -> None:
    path.write_text("[1, 2]")


DAMAGES = [  # (file, damage, also remove last.prev.pt so that there is no fallback)
    ("last.pt", _truncate, True),
    ("last.pt", _garbage, True),
    ("best.pt", _truncate, False),
    ("best.pt", _garbage, False),
    ("best.pt", Path.unlink, False),
    ("result.json", _truncate, False),
    ("result.json", _list, False),
    ("fingerprint.json", _truncate, False),
    ("fingerprint.json", _list, False),
]


@pytest.mark.parametrize("name, damage, no_prev", DAMAGES,
                         ids=[f"{n}-{d.__name__.strip('_')}" for n, d, _ in DAMAGES])
def test_a_damaged_file_is_found_before_training_and_named(tmp_path, name, damage, no_prev):
    train(tmp_path, cfg=config(steps=4))
    if name == "result.json":
        (tmp_path / name).write_text(json.dumps({"test": 1}))
    if no_prev:
        (tmp_path / "last.prev.pt").unlink(missing_ok=True)
    damage(tmp_path / name)
    error = refused(CorruptFileError, re.escape(str(tmp_path / name)), tmp_path,
                    cfg=config(steps=8))
    assert error.path == tmp_path / name


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    reference, _, _ = train(tmp_path / "ref", cfg=config(steps=6))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # after the checkpoints of steps 2 and 4
        train(out, cfg=config(steps=6), callbacks=[stop_at(5)])
    assert load_checkpoint(out / "last.prev.pt")["step"] == 2
    _truncate(out / "last.pt")
    capsys.readouterr()
    result, trainer, steps = train(out, cfg=config(steps=6))
    assert trainer.resumed_from == 2 and steps.steps == [3, 4, 5, 6]
    assert result.test == reference.test  # the same run as one never damaged
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'} is truncated or corrupt; resuming from " \
           f"{out / 'last.prev.pt'} (step 2) instead" in err


@pytest.mark.parametrize("eval_every", [2, 1])
def test_a_best_model_newer_than_the_checkpoint_gives_way_to_the_kept_one(tmp_path,
                                                                         eval_every):
    """Stopped after new best models (every evaluation selects, select_on=last) but before
    their checkpoint: the checkpoint's selected model is best.prev.pt, and the rerun ends
    like a run never stopped."""
    cfg = config(steps=8, eval_every=eval_every, checkpoint_every=4, select_on="last")
    reference, _, _ = train(tmp_path / "ref", cfg=cfg)
    out = tmp_path / "run"
    tasks = make_tasks()
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(tasks), tasks, cfg, out_dir=out, callbacks=[stop_at(7)]).fit()
    assert load_checkpoint(out / "best.pt")["step"] == (6 if eval_every == 2 else 7)
    assert load_checkpoint(out / "best.prev.pt")["step"] == 4
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks), tasks, cfg, out_dir=out)
    trainer.setup()
    assert trainer.step == 4 and load_checkpoint(out / "best.pt")["step"] == 4
    result = trainer.fit()
    assert result.best_step == 8 and result.test == reference.test


def test_the_fallback_copies_go_when_training_ends(tmp_path):
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(stopped, cfg=config(steps=6, eval_every=1, checkpoint_every=2,
                                  select_on="last"), callbacks=[stop_at(5)])
    assert (stopped / "last.prev.pt").exists() and (stopped / "best.prev.pt").exists()
    train(tmp_path / "done")
    names = {p.name for p in (tmp_path / "done").iterdir()}
    assert {"last.pt", "best.pt"} <= names and not names & {"last.prev.pt", "best.prev.pt"}


def test_a_best_model_that_does_not_match_and_no_kept_one_is_refused(tmp_path):
    train(tmp_path)
    best = load_checkpoint(tmp_path / "best.pt")
    torch.save({"step": 77, "model": best["model"]}, tmp_path / "best.pt")
    (tmp_path / "best.prev.pt").unlink(missing_ok=True)
    error = refused(CorruptFileError, "holds the model of step 77", tmp_path,
                    cfg=config(steps=6))
    assert error.path == tmp_path / "best.pt" and "--restart" in str(error)


# ---------------------------------------------------------------------- the runner

def _no_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the folder was refused")

    monkeypatch.setattr(flexmtl.runner, "Trainer", no_training)


@pytest.mark.parametrize("name", ["config.json", "results.json"])
def test_runner_a_damaged_folder_file_is_named_before_training(tmp_path, monkeypatch, name):
    out = tmp_path / "o"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    _truncate(out / name)
    _no_training(monkeypatch)
    with pytest.raises(CorruptFileError, match=re.escape(str(out / name))):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)


def test_runner_a_damaged_checkpoint_of_a_later_run_is_found_before_the_first(tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "o"
    kw = {**RUN_KW, "methods": ["parallel", "soft"]}
    run_experiment("random-tasks", out_dir=out, **kw)
    folder = ExperimentFolder(out)
    first, later = folder.run("parallel", 0), folder.run("soft", 0)
    first.result.unlink()
    later.result.unlink()
    _garbage(later.best)
    _no_training(monkeypatch)
    with pytest.raises(CorruptFileError, match=re.escape(str(later.best))):
        run_experiment("random-tasks", out_dir=out, **kw)


def test_runner_runs_without_a_manifest_are_refused(tmp_path, monkeypatch):
    out = tmp_path / "o"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    (out / "config.json").unlink()
    _no_training(monkeypatch)
    with pytest.raises(FolderMismatchError, match="holds runs and results.json but no "
                                                  "config.json.*--restart"):
        run_experiment("random-tasks", out_dir=out,
                       **{**RUN_KW, "overrides": {"n": 8, "m": 4, "lr": 0.5}})


def test_runner_another_experiments_results_are_refused_not_overwritten(tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    foreign = json.dumps({"experiment": "uci", "config": {"width": 3}, "sweep": None})
    (out / "results.json").write_text(foreign)
    run_experiment("random-tasks", out_dir=tmp_path / "p", **RUN_KW)  # a manifest of ours
    (tmp_path / "p" / "results.json").write_text(foreign)
    _no_training(monkeypatch)
    with pytest.raises(FolderMismatchError,
                       match=r"holds results.json but no config.json"):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)
    with pytest.raises(FolderMismatchError, match=r"results.json of another experiment .*"
                                                  r"experiment: 'uci' -> 'random-tasks'"):
        run_experiment("random-tasks", out_dir=tmp_path / "p", **RUN_KW)
    assert (out / "results.json").read_text() == foreign


def test_runner_another_configuration_is_refused_with_the_diff(tmp_path, monkeypatch):
    out = tmp_path / "o"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    _no_training(monkeypatch)
    with pytest.raises(FolderMismatchError, match=r"\(lr: 0.001 -> 0.5\); pass another "
                                                  r"--out folder .* or --restart"):
        run_experiment("random-tasks", out_dir=out,
                       **{**RUN_KW, "overrides": {"n": 8, "m": 4, "lr": 0.5}})


def test_cli_restart_redoes_the_runs_and_keeps_other_files(tmp_path, capsys):
    assert main(["run", *TINY, "--out", "o"]) == 0
    (Path("o") / "notes.txt").write_text("mine")
    assert main(["run", *TINY, "lr=0.5", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "different configuration (lr: 0.001 -> 0.5)" in err and "--restart" in err
    assert main(["run", *TINY, "lr=0.5", "--out", "o", "--restart"]) == 0
    assert "--restart: deleted the earlier runs" in capsys.readouterr().out
    assert json.loads(Path("o/config.json").read_text())["config"]["lr"] == 0.5
    result = json.loads(Path("o/parallel/seed-0/result.json").read_text())
    assert result["resumed_from"] == 0 and Path("o/notes.txt").read_text() == "mine"


def test_cli_reproduce_report_only_takes_no_restart(capsys):
    assert main(["reproduce", "--report-only", "--restart"]) == 2
    assert "--restart" in capsys.readouterr().err


def test_runner_a_finished_run_of_other_data_is_refused_not_averaged(tmp_path, monkeypatch):
    # the data behind a source changed between two commands (e.g. a file was replaced):
    # the finished seed must not be averaged with new ones
    out = tmp_path / "o"
    exp = flexmtl.runner.get_experiment("random-tasks")
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    build = exp.build_tasks

    def other_data(cfg, seed):
        tasks = build(cfg, seed)
        first = tasks[0]
        flipped = (first.train.x, 1 - first.train.y)
        tasks[0] = Task(first.name, first.kind, flipped, first.val, first.test,
                        num_outputs=first.num_outputs, note=first.note)
        return tasks

    monkeypatch.setattr(flexmtl.runner, "get_experiment",
                        lambda name: dataclasses.replace(exp, build_tasks=other_data))
    _no_training(monkeypatch)
    with pytest.raises(FolderMismatchError, match=r"finished run .*seed-0 trained something "
                                                  r"else .*train\.y.*--restart"):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)


def test_runner_a_finished_run_of_the_same_data_is_reused(tmp_path, monkeypatch):
    out = tmp_path / "o"
    first = run_experiment("random-tasks", out_dir=out, **RUN_KW)
    _no_training(monkeypatch)
    lines: list[str] = []
    again = run_experiment("random-tasks", out_dir=out, **{**RUN_KW, "log": lines.append})
    assert again["methods"] == first["methods"]
    assert any("done before" in line and "not checked" not in line for line in lines)


def test_temporaries_of_a_lock_whose_process_died_are_removed(tmp_path):
    from flexmtl.run_folder import remove_torn_writes

    gone = tmp_path / f"run.lock.{dead_pid()}-0123abcd"  # killed while taking the lock
    mine = tmp_path / f"run.lock.{os.getpid()}-0123abcd"  # a live process at it
    old = tmp_path / "run.lock.stale-0123abcd"  # killed while taking over a stale lock
    recent = tmp_path / "run.lock.stale-89abcdef"  # another process at it now
    notes = tmp_path / "run.lock.txt"  # not ours
    for path in (gone, mine, old, recent, notes):
        path.write_text("{}")
    os.utime(old, (0, 0))
    assert sorted(remove_torn_writes(tmp_path)) == sorted([gone, old])
    assert {p.name for p in tmp_path.iterdir()} == {mine.name, recent.name, notes.name}


# ---------------------------------------------------------------------- review findings

def test_a_damaged_run_file_names_the_run_not_restart_of_everything(tmp_path):
    train(tmp_path)
    _garbage(tmp_path / "best.pt")
    (tmp_path / "best.prev.pt").unlink(missing_ok=True)
    error = refused(CorruptFileError, re.escape(str(tmp_path / "best.pt")), tmp_path,
                    cfg=config(steps=6))
    assert f"delete the folder {tmp_path} and rerun to redo that run alone" in str(error)


def test_restart_deletes_only_what_flexmtl_wrote(tmp_path, capsys):
    assert main(["run", *TINY, "--out", "o"]) == 0
    seed = Path("o/parallel/seed-0")
    (seed / "my_analysis.txt").write_text("mine")
    (Path("o/parallel/seed-extra")).mkdir()
    (Path("o/parallel/seed-extra/x.txt")).write_text("mine")
    Path("o/plots").mkdir(exist_ok=True)
    (Path("o/plots/learning_curves.png")).write_bytes(b"ours")
    (Path("o/plots/my_figure.png")).write_bytes(b"mine")
    assert main(["run", *TINY, "--out", "o", "--restart"]) == 0
    assert (seed / "my_analysis.txt").read_text() == "mine"
    assert Path("o/parallel/seed-extra/x.txt").read_text() == "mine"
    assert Path("o/plots/my_figure.png").read_bytes() == b"mine"
    assert json.loads((seed / "result.json").read_text())["resumed_from"] == 0


@pytest.mark.parametrize("content, lacks", [
    ({}, "method"), ({"method": "parallel", "seed": 0, "best_step": 2, "steps": 2,
                      "seconds": 1.0, "val": {"loss": 1.0}, "test": [], "tasks": []},
                     "val.accuracy")])
def test_runner_a_finished_result_lacking_keys_is_named(tmp_path, monkeypatch, content, lacks):
    out = tmp_path / "o"
    run_experiment("random-tasks", out_dir=out, **RUN_KW)
    result = ExperimentFolder(out).run("parallel", 0).result
    result.write_text(json.dumps(content))
    _no_training(monkeypatch)
    with pytest.raises(CorruptFileError, match=re.escape(str(result)) + f".*lacks .*{lacks}"):
        run_experiment("random-tasks", out_dir=out, **RUN_KW)


@pytest.mark.parametrize("state, says", [
    ({"step": 5, "best_step": -1}, "model"),
    ({"step": "5", "best_step": 2, "model": {}, "optimizer": {}, "sampler": {}, "history": [],
      "config": {}}, "step")])
def test_a_checkpoint_of_the_wrong_content_is_named(tmp_path, state, says):
    stopped = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(stopped, callbacks=[stop_at(3)])
    (stopped / "last.prev.pt").unlink(missing_ok=True)
    torch.save(state, stopped / "last.pt")
    refused(CorruptFileError, re.escape(str(stopped / "last.pt")) + f".*{says}", stopped)


def test_a_missing_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    reference, _, _ = train(tmp_path / "ref", cfg=config(steps=6))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(out, cfg=config(steps=6), callbacks=[stop_at(5)])
    (out / "last.pt").unlink()
    capsys.readouterr()
    result, trainer, steps = train(out, cfg=config(steps=6))
    assert trainer.resumed_from == 2 and result.test == reference.test
    assert f"{out / 'last.pt'} is missing; resuming from" in capsys.readouterr().err


def test_a_fingerprint_without_checkpoint_is_still_checked(tmp_path):
    # last.pt gone, last.prev.pt gone: the folder's fingerprint still says what ran there,
    # so other settings are refused before the folder's files are deleted
    train(tmp_path)
    (tmp_path / "last.pt").unlink()
    refused(FolderMismatchError, r"config\.lr: 0\.01 -> 0\.5", tmp_path,
            cfg=config(lr=0.5))
    assert (tmp_path / "best.pt").exists()


def test_a_log_of_garbage_is_named(tmp_path):
    stopped = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(stopped, callbacks=[stop_at(3)])
    (stopped / "train_log.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    refused(CorruptFileError, re.escape(str(stopped / "train_log.csv")) + ".*delete it",
            stopped)


def test_tasks_of_one_input_group_must_have_the_same_inputs():
    tasks = make_tasks()
    a, b = tasks
    shared = [Task(t.name, t.kind, t.train, t.val, t.test, input_group="g") for t in (a, b)]
    with pytest.raises(ConfigError, match=r"'a' and 'b' share input group 'g' but their "
                                          r"train inputs differ"):
        Trainer(make_model(shared), shared, config())
    same = [Task(t.name, t.kind, (a.train.x, t.train.y), (a.val.x, t.val.y),
                 (a.test.x, t.test.y), input_group="g") for t in (a, b)]
    Trainer(make_model(same), same, config())  # accepted


def test_a_metric_nan_in_some_seeds_is_flagged_not_dropped():
    from flexmtl.runner import _aggregate, format_table

    def result(seed, loss):
        split = {"loss": loss, "accuracy": 0.5, "tasks": {"a": {"loss": loss, "accuracy": 0.5}}}
        return {"seed": seed, "best_step": 1, "seconds": 1.0, "test": split, "val": split}

    agg = _aggregate({"soft": [result(0, 1.0), result(1, float("nan")), result(2, 2.0)]})
    loss = agg["soft"]["metrics"]["test_loss"]
    assert loss["nan_seeds"] == [1] and np.isnan(loss["mean"])
    assert agg["soft"]["per_task"]["a"]["test_loss"]["nan_seeds"] == [1]
    table = format_table({"experiment": "x", "seeds": [0, 1, 2], "methods": agg})
    assert "NaN in seed(s) 1" in table
