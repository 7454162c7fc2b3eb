"""Multi-process training (torchrun + DistributedDataParallel, gloo on the cpu).

Two processes launched with ``torch.distributed.run`` must train like one process with the
same global batch: a soft-ordering model with the joint schedule (unequal pieces of the
batch: 7 = 4 + 3, and a task of 5 examples), and a routed Gumbel-Matrix model with a frozen
encoder and the round-robin schedule (per-task updates, parameters without gradients, one
allocation sample per (task, batch) shared by the ranks). Rank 0 alone writes the run
folders; and an experiment with dropout stopped mid-run and resumed by
``torchrun -m flexmtl run`` ends exactly like an uninterrupted one, every rank's random
state included.

This file is also the script the first launch runs (see ``worker``); two launches in all,
about 30 s on 2 cpu cores. DDP looks for parameters without a gradient only where a step
can leave some.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

import flexmtl as fm
import flexmtl.runner
from flexmtl.training import distributed, load_checkpoint

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")

STEPS = 6
STOP_AT = 4  # the interrupted experiment stops after its checkpoint of this step
WIDTH = 8


def make_tasks() -> list[fm.Task]:
    g = torch.Generator().manual_seed(0)

    def split(n, features, classes):
        return torch.rand(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)

    return [
        fm.Task("a", "multiclass", split(40, 5, 3), val=split(10, 5, 3), test=split(10, 5, 3)),
        fm.Task("b", "multiclass", split(5, 3, 2), val=split(6, 3, 2)),  # batch = whole set
        fm.Task("c", "multiclass", split(30, 4, 4), val=split(8, 4, 4), test=split(8, 4, 4)),
    ]


def soft_model(tasks):
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(3)]
    return fm.build_model(tasks, fm.make_core("soft", blocks, len(tasks), dropout=0.0))


def routed_model(tasks, dropout=0.0):
    def layer():
        components = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(3)]
        return fm.RoutedLayer(components, len(tasks), input_shape=(WIDTH,))

    core = fm.RoutedCore([layer(), nn.Dropout(dropout), layer()], len(tasks),
                         feature_shape=(WIDTH,), budget=0.5)
    return fm.build_model(tasks, core, encoder="frozen")


#: name -> (model, training config) of the runs compared with one process
RUNS = {
    "soft-joint": (soft_model, dict(batch_size=7, schedule="joint")),
    "routed-rr": (routed_model, dict(batch_size=8, schedule="round-robin")),
}
#: a tiny experiment with dropout: ``flexmtl run`` arguments and the same for run_experiment
EXPERIMENT = ["random-tasks", "n=16", "m=8", "dropout=0.3", "eval_every=2"]
CLI_ARGS = ["run", *EXPERIMENT, "--methods", "soft", "--seeds", "1", "--steps", str(STEPS),
            "--no-sweep", "--no-plots", "--no-progress"]


class Stop(Exception):
    pass


def train(name: str, out_dir: Path | None) -> fm.Trainer:
    build, extra = RUNS[name]
    fm.seed_everything(0)
    tasks = make_tasks()
    cfg = fm.TrainConfig(steps=STEPS, lr=0.01, eval_every=2, progress=False, **extra)
    trainer = fm.Trainer(build(tasks), tasks, cfg, out_dir=out_dir)
    trainer.fit()
    return trainer


def run_experiment(out_dir: Path, stop_at: int | None = None) -> None:
    def stop(trainer, step):
        if step == stop_at:
            raise Stop

    trainer, flexmtl.runner.Trainer = flexmtl.runner.Trainer, partial(fm.Trainer,
                                                                      callbacks=[stop])
    try:
        flexmtl.runner.run_experiment(
            EXPERIMENT[0], methods=["soft"], seeds=1, steps=STEPS, out_dir=out_dir,
            overrides=EXPERIMENT[1:], sweep=None, progress=False, plots=False,
            log=lambda _: None)
    except Stop:
        pass
    finally:
        flexmtl.runner.Trainer = trainer


def with_a_spare_layer(tasks):
    """A soft-ordering model with a layer no loss uses: DDP must be told to expect it."""
    model = soft_model(tasks)
    model.spare = nn.Linear(2, 2)
    return model


def worker(out: Path) -> None:
    """The first launch, in each process: train RUNS into ``out/NAME`` and save each rank's
    final parameters and DDP's ``find_unused_parameters`` beside them; run EXPERIMENT to
    the end in ``out/straight`` and stopped after step STOP_AT in ``out/resumed``; train a
    model with a spare layer jointly, which stops with a ConfigError saying what to set,
    and again with that setting."""
    for name in RUNS:
        trainer = train(name, out / name)  # joins the process group
        rank = distributed.rank()
        torch.save(trainer.final_state, out / f"{name}.rank{rank}.pt")
        (out / f"{name}.unused").write_text(str(trainer.training_forward.find_unused_parameters))
    run_experiment(out / "straight")
    run_experiment(out / "resumed", stop_at=STOP_AT)
    tasks = make_tasks()
    for setting, value in (("auto", None), ("true", True)):
        cfg = fm.TrainConfig(steps=3, progress=False, find_unused_parameters=value)
        try:
            fm.Trainer(with_a_spare_layer(tasks), tasks, cfg).fit()
            message = "trained"
        except fm.ConfigError as exc:
            message = str(exc)
        (out / f"spare-{setting}.rank{rank}.txt").write_text(message)
    distributed.cleanup(wait=True)


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=0.1", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4 if atol else 0, msg=key)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The worker's launch, then ``python -m flexmtl run`` resuming the stopped experiment."""
    out = tmp_path_factory.mktemp("ddp")
    first = launch(__file__, str(out))
    assert (out / "resumed" / "soft" / "seed-0" / "last.pt").exists()
    assert not (out / "resumed" / "soft" / "seed-0" / "result.json").exists()
    cli = launch("-m", "flexmtl", *CLI_ARGS, "--out", str(out / "resumed"), "--device", "cpu")
    for proc in (first, cli):  # DDP warns when told to look for unused parameters in vain
        assert "did not find any unused parameters" not in proc.stdout + proc.stderr
    return out, cli


@needs_gloo
def test_ddp_looks_for_unused_parameters_only_where_a_step_can_leave_some(two_processes):
    out, _ = two_processes
    assert (out / "soft-joint.unused").read_text() == "False"
    assert (out / "routed-rr.unused").read_text() == "True"  # round-robin, routed layers
    for rank in (0, 1):
        said = (out / f"spare-auto.rank{rank}.txt").read_text()
        assert said.endswith("set find_unused_parameters=true"), said
        assert (out / f"spare-true.rank{rank}.txt").read_text() == "trained"


@needs_gloo
@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_train_like_one_with_the_same_global_batch(two_processes, name):
    out, _ = two_processes
    single = train(name, None)
    for rank in (0, 1):
        assert_close(torch.load(out / f"{name}.rank{rank}.pt"), single.final_state)
    fm.seed_everything(0)
    initial = RUNS[name][0](make_tasks()).state_dict()
    assert any(not torch.allclose(initial[k], single.final_state[k]) for k in initial)


@needs_gloo
def test_rank0_alone_writes_logs_and_checkpoints(two_processes, tmp_path):
    out, cli = two_processes
    run = out / "soft-joint"
    written = {p.name for p in run.iterdir()}
    assert sorted(written) == [  # no run.lock (released), no fallback copies (training ended)
        "best.pt", "eval_log.csv", "fingerprint.json", "last.pt", "sharing.pt",
        "train_log.csv"]
    rows = [r.split(",") for r in (run / "train_log.csv").read_text().splitlines()]
    assert [r[0] for r in rows] == ["step", *map(str, range(1, STEPS + 1))]
    evals = (run / "eval_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in evals] == ["step", "2", "4", "6"]
    assert len(load_checkpoint(run / "last.pt")["rng_ranks"]) == 2
    # the logged losses are the global batch's: one process logs the same values
    train("soft-joint", tmp_path)
    single = [r.split(",") for r in (tmp_path / "train_log.csv").read_text().splitlines()]
    assert rows[0] == single[0]
    for got, want in zip(rows[1:], single[1:], strict=True):
        assert list(map(float, got)) == pytest.approx(list(map(float, want)), rel=1e-5)
    assert cli.stdout.count("test loss (sum)") == 1  # rank 0 alone prints the table


@needs_gloo
def test_stopped_experiment_resumes_exactly_on_every_rank(two_processes):
    out, _ = two_processes
    straight = out / "straight" / "soft" / "seed-0"
    resumed = out / "resumed" / "soft" / "seed-0"
    assert json.loads((resumed / "result.json").read_text())["resumed_from"] == STOP_AT
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == STEPS
    assert_close(a["model"], b["model"], atol=0)
    for rank in (0, 1):  # each rank's dropout stream went on where it stopped
        assert torch.equal(a["rng_ranks"][rank]["torch"], b["rng_ranks"][rank]["torch"])
    assert not torch.equal(a["rng_ranks"][0]["torch"], a["rng_ranks"][1]["torch"])
    for name in ("train_log.csv", "eval_log.csv"):
        assert (resumed / name).read_text() == (straight / name).read_text()
    for name in ("results.json", "config.json"):
        assert (out / "resumed" / name).exists()


def test_one_process_needs_no_process_group():
    assert distributed.world_size() == 1 and distributed.is_main()
    batch = torch.arange(5)
    assert distributed.shard(batch) is batch
    assert distributed.on_main(lambda: 3) == 3
    assert distributed.broadcast_object("x") == "x"
    assert distributed.rank_seed(0, 1) != distributed.rank_seed(1, 0)


def test_device_is_checked():
    with pytest.raises(fm.ConfigError, match="device must be"):
        fm.TrainConfig(device="gpu0").validate()
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto") == torch.device("cpu")
        tasks = make_tasks()
        with pytest.raises(fm.ConfigError, match="CUDA is not available"):
            fm.Trainer(soft_model(tasks), tasks, fm.TrainConfig(device="cuda"))


def test_a_failing_compiled_forward_says_to_train_without_compile():
    tasks = make_tasks()
    trainer = fm.Trainer(soft_model(tasks), tasks, fm.TrainConfig(steps=1, compile=True))
    trainer.setup()

    def crash(xs, tasks):
        raise SystemError("error return without exception set")

    trainer.training_forward = crash
    with pytest.raises(fm.ConfigError, match="train without --compile"):
        trainer.fit()


def test_a_run_folder_resumes_with_another_device_or_compile_setting(tmp_path):
    args = dict(methods=["soft"], seeds=1, steps=2, out_dir=tmp_path, sweep=None,
                progress=False, plots=False, log=lambda _: None)
    flexmtl.runner.run_experiment(EXPERIMENT[0], overrides=["n=16", "m=8"], **args)
    again = flexmtl.runner.run_experiment(
        EXPERIMENT[0], overrides=["n=16", "m=8", "device=auto", "compile=true"], **args)
    assert again["config"]["device"] == "auto"  # nothing was retrained: the run was done
    with pytest.raises(fm.FolderMismatchError, match=r"\(m: 8 -> 4\)"):
        flexmtl.runner.run_experiment(EXPERIMENT[0], overrides=["n=16", "m=4"], **args)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
