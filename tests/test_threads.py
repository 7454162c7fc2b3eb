"""Threads: the rule of ``TrainConfig.threads=0`` (auto) and the trainer applying it. The
machine's cores and load are injected: nothing here is timed."""

import pytest
import torch
from test_trainer import make_model, make_tasks
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import flexmtl.training.trainer as trainer_module
from flexmtl import TrainConfig, Trainer, build_model, make_core
from flexmtl.training import threads
from flexmtl.training.threads import (
    BUSY_CROSSOVER_FLOPS,
    CROSSOVER_FLOPS,
    IDLE_LOAD,
    auto_threads,
    other_load,
    usable_cores,
)


@pytest.fixture(autouse=True)
def _restore_threads():
    """The trainer sets torch's (process-wide) thread count: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_small_model_gets_one_thread_whatever_the_machine(monkeypatch):
    def unread():
        raise AssertionError("the machine is not read for a small model")

    monkeypatch.setattr(threads, "usable_cores", unread)
    monkeypatch.setattr(threads, "other_load", unread)
    assert auto_threads(CROSSOVER_FLOPS - 1) == 1
    for cores, load in ((2, 0.0), (16, 0.0), (16, 12.0)):
        assert auto_threads(CROSSOVER_FLOPS - 1, cores=cores, load=load) == 1


def test_a_large_model_gets_the_cores_that_other_processes_leave_free():
    large = BUSY_CROSSOVER_FLOPS
    assert auto_threads(large, cores=2, load=0.0) == 2  # idle
    assert auto_threads(large, cores=2, load=0.5) == 2  # half a core busy: still faster
    assert auto_threads(large, cores=2, load=0.6) == 1
    assert auto_threads(large, cores=2, load=1.0) == 1  # a whole core busy
    assert auto_threads(large, cores=16, load=5.5) == 11
    assert auto_threads(large, cores=16, load=5.6) == 10
    assert auto_threads(large, cores=2, load=2.0) == 1  # all busy: never fewer than one
    assert auto_threads(large, cores=2, load=7.5) == 1


def test_a_medium_model_gets_the_cores_only_on_an_idle_machine():
    medium = CROSSOVER_FLOPS
    assert medium < BUSY_CROSSOVER_FLOPS
    assert auto_threads(medium, cores=4, load=0.0) == 4
    assert auto_threads(medium, cores=4, load=IDLE_LOAD - 0.01) == 4
    assert auto_threads(medium, cores=4, load=IDLE_LOAD) == 1  # busy: below its crossover
    assert auto_threads(BUSY_CROSSOVER_FLOPS, cores=4, load=IDLE_LOAD) == 4


def test_the_machine_is_read_when_not_given(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "other_load", lambda: 3.0)
    assert auto_threads(BUSY_CROSSOVER_FLOPS) == 5


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


def test_trainer_auto_threads_one_for_a_small_model(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    torch.set_num_threads(2)
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks=tasks), tasks, TrainConfig(steps=2, progress=False))
    trainer.fit()
    assert 0 < trainer.step_flops < CROSSOVER_FLOPS
    assert trainer.threads == 1
    assert torch.get_num_threads() == 2  # the process's own count, given back at the end


@pytest.mark.parametrize("load, expected", [(0.0, 2), (0.9, 1)])
def test_trainer_auto_threads_free_cores_for_a_large_model(monkeypatch, load, expected):
    monkeypatch.setattr(threads, "CROSSOVER_FLOPS", 1)  # every model is large
    monkeypatch.setattr(threads, "BUSY_CROSSOVER_FLOPS", 1)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "other_load", lambda: load)
    torch.set_num_threads(2)
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks=tasks), tasks, TrainConfig(steps=1, progress=False))
    trainer.setup()
    assert torch.get_num_threads() == trainer.threads == 1  # until the first step is counted
    trainer.train_step()
    assert torch.get_num_threads() == trainer.threads == expected


def test_explicit_threads_win(monkeypatch):
    monkeypatch.setattr(threads, "CROSSOVER_FLOPS", 1)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks=tasks), tasks,
                      TrainConfig(steps=1, progress=False, threads=1))
    trainer.train_step()
    assert torch.get_num_threads() == 1
    assert trainer.step_flops is None  # an explicit count never runs under the FLOP counter


def test_flop_count_counts_as_the_flop_counter():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(5, 1, 8, 8)
    with threads.FlopCount() as count:
        model(x).sum().backward()
    with FlopCounterMode(display=False) as reference:
        model(x).sum().backward()
    assert count.flops == reference.get_total_flops() > 0


def _allocation_model(tasks):
    """Gumbel-Matrix routing (a step counter buffer, sampled connections, a fused path that
    hooks turn off), batch norm and dropout: everything a step can change or draw."""
    torch.manual_seed(0)
    width = 8
    layers = [[nn.Linear(width, width), nn.Linear(width, width)], nn.BatchNorm1d(width),
              nn.Dropout(0.3), [nn.Linear(width, width) for _ in range(3)]]
    core = make_core("gumbel", layers, len(tasks), feature_shape=(width,))
    return build_model(tasks, core, encoder="learned")


class _Uncounted:
    flops = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("threads_setting", [0, 1])
@pytest.mark.parametrize("build", [_allocation_model, lambda tasks: make_model(tasks=tasks)],
                         ids=["gumbel", "soft"])
def test_the_counted_first_step_is_bit_identical_to_an_uncounted_one(monkeypatch, build,
                                                                      threads_setting):
    """The first step runs under FlopCount; with auto (0) a small model then stays on one
    thread: the run equals one whose first step is not counted, on one thread. (With
    torch's FlopCounterMode, which decomposes ops and sets module hooks, they differ.)"""
    tasks = make_tasks(num=3)

    def train():
        torch.manual_seed(1)
        cfg = TrainConfig(steps=20, batch_size=8, eval_every=10, progress=False,
                          threads=threads_setting)
        trainer = Trainer(build(tasks), tasks, cfg)
        trainer.fit()
        return trainer.final_state

    counted = train()
    with monkeypatch.context() as m:
        m.setattr(trainer_module, "FlopCount", _Uncounted)
        torch.set_num_threads(1)
        uncounted = train()
    for key, value in counted.items():
        assert torch.equal(value, uncounted[key]), key


def test_runs_set_up_together_and_trained_one_by_one_keep_their_threads():
    """Trainers set up one after the other, then each trained alone (the runner's path when
    its runs do not batch, which gives the process its count back itself): each trains with
    its own thread count, whatever was set since its setup."""
    torch.set_num_threads(2)
    tasks = make_tasks()
    trainers = [Trainer(make_model(tasks=tasks), tasks,
                        TrainConfig(steps=2, progress=False, threads=1)) for _ in range(3)]
    for trainer in trainers:
        trainer.setup()
    seen = []
    for trainer in trainers:
        trainer.callbacks.append(lambda t, step: seen.append(torch.get_num_threads()))
        torch.set_num_threads(2)  # another run changed it since this one's setup
        trainer.fit()
    assert seen == [1] * 6
