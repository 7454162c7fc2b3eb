"""What a CPU run reads of the machine it shares and of its own size: the cores this
process may use (:func:`usable_cores`), the load of the other processes
(:func:`other_load`), and the FLOPs of a training step (:class:`FlopCount`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

__all__ = ["usable_cores", "other_load", "FlopCount"]

#: the time constant of the kernel's 1-minute load average (seconds)
LOAD_WINDOW_S = 60.0


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


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it), at most
    ``OMP_NUM_THREADS`` when that is set (as torch's own default; ``torchrun`` sets it to 1
    for several processes per machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
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
