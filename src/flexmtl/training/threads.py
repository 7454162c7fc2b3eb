"""How many intra-op threads a CPU run uses when ``TrainConfig.threads`` is 0 ("auto").

Small models train fastest on one thread: their ops are too small to split, and every op of
two threads waits for the slower. On a machine whose cores are busy elsewhere it is worse:
a thread kept off its core stalls every op. Measured by ``python benchmarks/bench.py
--threads-crossover`` (the table "Threads crossover" in
``benchmarks/results/cpu-2threads.md``: whole training steps on 1 and on 2 threads,
alternating in one process, beside 0, 0.5, 1 and 2 busy cores; a step's size is the
matmul and convolution FLOPs of its forward and backward) on this project's 2-core
machine:

* idle: one thread faster at 22 MFLOP per step (uci-10, 2 threads 0.97x), the two from
  87 MFLOP on (four-mnists 1.12x, up to 1.83x at 38 GFLOP);
* half a core busy elsewhere: one thread faster up to 591 MFLOP (0.55-0.88x), the two from
  2.4 GFLOP on (1.03-1.19x);
* a whole core busy elsewhere (with this process, as many runnable threads as cores): one
  thread faster at every size (2 threads 0.44-0.84x);
* both cores busy elsewhere: 2 threads 0.11-0.73x (up to 9 times slower).

:func:`auto_threads` is the rule drawn from it. The thread count can change a run's float
results in the last bits (a different split of the sums: the mnist-pairs model's weights
differ by up to 2.6e-6 after 10 steps on 1 and on 2 threads), so a run that must repeat bit
for bit on a machine whose load varies sets ``threads`` (the experiments set 1).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

__all__ = ["CROSSOVER_FLOPS", "BUSY_CROSSOVER_FLOPS", "IDLE_LOAD", "auto_threads",
           "affinity_cores", "usable_cores", "other_load", "FlopCount"]

#: FLOPs of one training step (:attr:`~flexmtl.training.Trainer.step_flops`) from which all
#: cores of an idle machine beat one thread: between uci-10 (22 MFLOP, slower) and
#: four-mnists (87 MFLOP, faster) in benchmarks/results/cpu-2threads.md
CROSSOVER_FLOPS = 50_000_000
#: the same with half a core busy elsewhere: between soft-width-128 (591 MFLOP, slower) and
#: soft-width-256 (2356 MFLOP, faster)
BUSY_CROSSOVER_FLOPS = 1_200_000_000
#: other load below which the machine counts as idle (between the measured 0 and 0.5)
IDLE_LOAD = 0.25

#: the time constant of the kernel's 1-minute load average (seconds)
LOAD_WINDOW_S = 60.0


def auto_threads(step_flops: int, cores: int | None = None, load: float | None = None) -> int:
    """Intra-op threads for a model of ``step_flops`` FLOPs per training step: one below the
    crossover (:data:`CROSSOVER_FLOPS` on an idle machine, other load below
    :data:`IDLE_LOAD`; :data:`BUSY_CROSSOVER_FLOPS` otherwise); from there on the cores that
    other processes leave free, ``cores - ceil(load - 0.5)`` and at least one: a core at
    most half busy elsewhere still counts (measured: 2 threads 1.03-1.19x beside half a busy
    core above its crossover, 0.68-0.84x beside a whole one).

    ``cores``: the cores this process may use (None: :func:`usable_cores`); ``load``: the
    runnable processes besides this one (None: :func:`other_load`). Neither is read for a
    model below :data:`CROSSOVER_FLOPS`.
    """
    if step_flops < CROSSOVER_FLOPS:
        return 1
    load = other_load() if load is None else load
    if load >= IDLE_LOAD and step_flops < BUSY_CROSSOVER_FLOPS:
        return 1
    cores = usable_cores() if cores is None else cores
    return max(1, min(cores, cores - math.ceil(load - 0.5)))


class FlopCount(TorchDispatchMode):
    """Counts the matmul and convolution FLOPs (``flops``) of the ops run inside it, with the
    formulas of ``torch.utils.flop_counter``, and runs every op as it is: unlike
    ``FlopCounterMode`` it decomposes no op and sets no module hooks (a routed layer runs
    another path under hooks), so a counted training step is bit for bit the uncounted one.
    Also counted: the im2col convolutions that flexmtl's fused layers run for small CPU
    convolutions (torch's formula for their forward takes other arguments, and their
    backward has none).
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        formulas = FlopCounterMode(display=False).flop_registry
        conv, conv_backward = formulas[aten.convolution], formulas[aten.convolution_backward]
        self.formulas = {
            **formulas,
            aten._slow_conv2d_forward: (
                lambda x, w, kernel, bias, stride, padding, out_val:
                conv(x, w, bias, stride, padding, (1, 1), False, out_val=out_val)),
            aten._slow_conv2d_backward: (
                lambda grad, x, w, kernel, stride, padding, mask, out_val:
                conv_backward(grad, x, w, None, stride, padding, (1, 1), False, (0, 0), 1, mask,
                              out_val=out_val)),
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(getattr(func, "overloadpacket", None))
        if formula is not None:
            try:
                self.flops += formula(*args, **kwargs, out_val=out)
            except TypeError:  # a formula not fitting the op's arguments: left uncounted
                pass
        return out


def affinity_cores() -> int:
    """The CPU cores this process may run on: its affinity where the OS tells it, else the
    machine's (what :mod:`flexmtl.executors` sizes a pool of processes by)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_cores() -> int:
    """The cores this process's threads may use: :func:`affinity_cores`, at most
    ``OMP_NUM_THREADS`` when that is set (as torch's own default; ``torchrun`` sets it to 1
    for several processes per machine)."""
    cores = affinity_cores()
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


def other_load() -> float:
    """The 1-minute load average less this process's own share of it (0 where the OS has
    no load average). It lags: for a minute after other work stops it still counts some of
    it (a process started right after another reads about 1 on an idle 2-core machine, in
    the benchmark's table), and work started seconds ago counts little."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0
    return max(0.0, load - _own_load())


class _OwnLoad:
    """This process's share of the 1-minute load average, estimated as the kernel averages
    load: its CPU seconds per second since the previous call, decayed with the average's
    60-second time constant (the process's CPU use between two calls is taken as even).
    Without it, a process training run after run would count its own last run as another
    process's load, and give the next run fewer threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.clock, self.cpu_clock = clock, cpu_clock
        self.at, self.cpu, self.share = clock(), cpu_clock(), 0.0

    def __call__(self) -> float:
        at, cpu = self.clock(), self.cpu_clock()
        if at > self.at:
            keep = math.exp(-(at - self.at) / LOAD_WINDOW_S)
            self.share = self.share * keep + (cpu - self.cpu) / (at - self.at) * (1 - keep)
        self.at, self.cpu = at, cpu
        return self.share


_own_load = _OwnLoad()
