"""Threads: what a run reads of the machine it shares (cores, the load of other processes)
and the size of its step. The machine's cores and load are injected: nothing here is
timed."""

import pytest
import torch
from test_trainer import make_tasks
from torch import nn

from flexmtl import TrainConfig, Trainer, build_model, make_core
from flexmtl.training import threads
from flexmtl.training.threads import other_load, usable_cores


@pytest.fixture(autouse=True)
def _restore_threads():
    """The trainer sets torch's (process-wide) thread count: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cores_are_the_affinity_at_most_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3},
                        raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cores() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # e.g. torchrun's, several ranks per machine
    assert usable_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert usable_cores() == 4


def test_other_load_leaves_out_this_process_own_share(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.3, 2.0, 1.5))
    monkeypatch.setattr(threads, "_own_load", lambda: 2.0)
    assert other_load() == pytest.approx(0.3)
    monkeypatch.setattr(threads, "_own_load", lambda: 2.6)
    assert other_load() == 0.0


def test_own_load_follows_the_cpu_use_with_the_load_average_decay():
    """A process that trained on two threads for ten minutes accounts for about 2 of the
    load average; five idle minutes later for almost nothing."""
    clock = {"wall": 0.0, "cpu": 0.0}
    own = threads._OwnLoad(lambda: clock["wall"], lambda: clock["cpu"])
    clock.update(wall=600.0, cpu=1200.0)
    assert own() == pytest.approx(2.0, abs=1e-3)
    clock.update(wall=900.0)
    assert own() == pytest.approx(2.0 * 2.718281828 ** -5, rel=1e-3)
    clock.update(wall=910.0, cpu=1205.0)  # 10 s at half a core: a sixth of the way to 0.5
    assert own() == pytest.approx(0.0135 + (0.5 - 0.0135) * (1 - 2.718281828 ** (-10 / 60)),
                                  rel=1e-2)


def _allocation_model(tasks):
    """Gumbel-Matrix routing (a step counter buffer, sampled connections), batch norm
    (running statistics) and dropout: everything a forward can change or draw."""
    torch.manual_seed(0)
    width = 8
    layers = [[nn.Linear(width, width), nn.Linear(width, width)], nn.BatchNorm1d(width),
              nn.Dropout(0.3), [nn.Linear(width, width) for _ in range(3)]]
    core = make_core("gumbel", layers, len(tasks), feature_shape=(width,))
    return build_model(tasks, core, encoder="learned")


def test_counting_the_step_flops_changes_nothing():
    """The count runs a training forward: the buffers it moves (the routing's step counter,
    batch-norm statistics) and the random state it draws from are put back."""
    tasks = make_tasks(num=3)
    model = _allocation_model(tasks)
    trainer = Trainer(model, tasks, TrainConfig(steps=1, progress=False, threads=1))
    trainer.setup()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    assert trainer.step_flops() > 0
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key
