"""Speed benchmarks: fused vs reference (per-task loop) execution of flexmtl's models.

Each configuration from the papers is timed with the fused implementation and with the
reference loop (``flexmtl.fusion.set_fused(model, False)``: cores, routed layers, the
model's batched encoders and heads, the trainer's stacked losses), in the same process,
in alternating blocks so that a change of machine load hits both alike; the first steps of
every block are not timed (they pay for the other implementation's caches), and the
speed-up is the median of the blocks' paired ratios. Three levels are timed:

* ``step`` -- whole training steps (batches, forward, backward and optimiser update, as
  the trainer runs them): what a user waits for;
* ``model`` -- forward and backward of the model and losses on fixed batches (no batch
  sampling, no optimiser);
* ``core`` -- forward and backward of the shared core alone on random features (gradients
  of ones at its outputs): the part that fusion changes most.

Outside the core only alike small encoders, heads and losses are batched; the rest (e.g.
large frozen encoders, the optimiser, batch sampling) takes the same time in both
implementations and bounds the whole-step ratio. Reported per configuration: steps/s of
both (medians) and their ratio at each level; achieved GFLOP/s of the fused step against
this machine's measured fp32 matmul peak (the FLOPs of matmuls and convolutions in one
reference step, counted by ``torch.utils.flop_counter``); the peak memory of each
implementation training alone (the resident set size of a fresh process, or the CUDA
peak); and the 1-minute load average when the configuration started (other processes on a
shared machine slow both implementations, not always alike).

Two more modes time other things, with tables of their own in the same results file:

* ``--threads-crossover`` -- whole training steps on one thread and on all cores,
  alternating in one process, beside busy loops that keep 0, 0.5, 1, ... cores busy: the
  measurement behind ``TrainConfig.threads=0`` (:mod:`flexmtl.training.threads`);
* ``--study`` -- whole studies as users run them (``run_experiment``: the README's main job,
  Fig. 4a at the quick protocol, four-mnists), run by each variant in turn (``serial``;
  ``pool``, once ``run_experiment`` takes ``jobs``; a new variant is one entry of
  ``STUDY_VARIANTS``), comparing every variant's per-run test metrics with the first
  variant's (the largest difference) and the batched variants' with each other;
* ``--batch-scaling`` -- the training of a study's seeds as one batch of R runs
  (``train_runs``, one process, one thread), for several R alternating: the seconds per run
  at each R, fitted as ``a / R + b`` (a: the cost a batch pays once, b: each run's own), and
  what that bounds: batching makes a run at most ``T(1) / b`` times faster, however many
  runs share a batch.

Usage::

    python benchmarks/bench.py                 # all configurations, results in benchmarks/results/
    python benchmarks/bench.py --only mnist-pairs-10 --threads 1
    python benchmarks/bench.py --main-job      # also time the README's main job (MAIN_JOB)
    python benchmarks/bench.py --only four-mnists --repeats 3 --merge   # update some rows
    python benchmarks/bench.py --threads-crossover --steps 36 --busy 0,0.5,1,2 --quiet-wait 900
    python benchmarks/bench.py --study uci --study-scale 10   # steps / 10: a quicker look
    python benchmarks/bench.py --batch-scaling uci:soft,uci:parallel --batch-sizes 1,2,4,8

Results are written as ``benchmarks/results/<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import flexmtl as fm
from flexmtl import executors
from flexmtl.experiments import get_experiment
from flexmtl.fusion import set_fused
from flexmtl.reproduction.studies import get_study
from flexmtl.runner import run_experiment
from flexmtl.training.threads import FlopCount, other_load, usable_cores

HERE = Path(__file__).resolve().parent
#: the README's main job: ``flexmtl`` with these arguments
MAIN_JOB = ("run", "tabular")


# ---------------------------------------------------------------------- configurations


def random_tasks(shapes, classes, n, kind="multiclass", seed=0):
    """Tasks with random inputs of the given per-example shapes (speed does not need data)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for i, (shape, k) in enumerate(zip(shapes, classes)):
        x = rng.random((n, *shape), dtype=np.float32)
        y = rng.integers(0, k, n) if kind == "multiclass" else rng.integers(0, 2, n)
        tasks.append(fm.Task(f"t{i}", kind, (x, y), num_outputs=k if kind == "multiclass" else 0))
    return tasks


def soft_dense(width, tasks=10, layers=4, batch=64):
    """Soft ordering over dense ReLU blocks (the width sweep)."""
    ts = random_tasks([(width,)] * tasks, [2] * tasks, batch * 4)
    blocks = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)]
    core = fm.make_core("soft", blocks, tasks, dropout=0.0)
    model = fm.build_model(ts, core, encoder="identity")
    return model, ts, dict(batch_size=batch, schedule="joint")


def mnist_pairs_10(batch=32):
    exp = get_experiment("mnist-pairs")
    cfg = exp.resolve_config()
    ts = random_tasks([(784,)] * 10, [2] * 10, batch * 4, kind="binary")
    model = exp.build_model("soft", ts, cfg, 0)
    return model, ts, dict(batch_size=batch, schedule="joint")


def uci_10(batch=32):
    exp = get_experiment("uci")
    cfg = exp.resolve_config()
    features = [14, 30, 7, 24, 13, 19, 4, 8, 13, 8]
    classes = [2, 2, 8, 2, 5, 2, 3, 2, 3, 10]
    ts = random_tasks([(f,) for f in features], classes, batch * 4)
    model = exp.build_model("soft", ts, cfg, 0)
    return model, ts, dict(batch_size=batch, schedule="joint")


def four_mnists(batch=16):
    exp = get_experiment("four-mnists")
    cfg = exp.resolve_config()
    ts = random_tasks([(1, 28, 28)] * 4, [10] * 4, batch * 4)
    model = exp.build_model("gumbel", ts, cfg, 0)
    return model, ts, dict(batch_size=batch, schedule="round-robin")


def omniglot_20(batch=16, size=105):
    exp = get_experiment("omniglot")
    cfg = exp.resolve_config(overrides={"size": size})
    ts = random_tasks([(1, size, size)] * 20, [40] * 20, batch * 2)
    model = exp.build_model("gumbel", ts, cfg, 0)
    return model, ts, dict(batch_size=batch, schedule="round-robin")


CONFIGS = {
    "mnist-pairs-10": mnist_pairs_10,
    "uci-10": uci_10,
    "four-mnists": four_mnists,
    "omniglot-20": omniglot_20,
    **{f"soft-width-{w}": (lambda w=w: soft_dense(w)) for w in (64, 128, 256, 512, 1024)},
}
#: reference steps are slow for these; fewer repeats
HEAVY = {"omniglot-20"}


# ---------------------------------------------------------------------- timing


def _trainer(model, tasks, train_kwargs, device) -> fm.Trainer:
    """A trainer of ``model`` with the configuration's batch size and schedule (never
    evaluating or stopping by itself), on this process's torch threads."""
    cfg = fm.TrainConfig(steps=10**9, eval_every=10**9, progress=False, device=device,
                         threads=torch.get_num_threads(),
                         **{k: v for k, v in train_kwargs.items() if k in ("batch_size",
                                                                           "schedule")})
    return fm.Trainer(model, tasks, cfg)


def step_fn(model, tasks, train_kwargs, device, tasks_per_step=None):
    """One training step of ``model`` as the trainer runs it (its own trainer and state)."""
    trainer = _trainer(model, tasks, train_kwargs, device)
    num = tasks_per_step or len(tasks)

    if num == len(tasks):
        return trainer.train_step

    def step():  # a step of fewer tasks (Omniglot: one task's round)
        trainer.schedule.step(num, trainer.draw_batch, trainer.training_losses, trainer.update,
                              trainer.task_order_generator)

    return step


def _grad_resetter(tensors):
    """A function that sets the gradients of ``tensors`` to None, as the trainer's
    ``optimizer.zero_grad(set_to_none=True)`` does (``Module.zero_grad`` walks every
    submodule: about 0.1 ms on the mnist-pairs model, a fifth of a fused core step)."""
    tensors = list(tensors)

    def reset():
        for t in tensors:
            t.grad = None

    return reset


def model_step_fn(model, tasks, train_kwargs, device, tasks_per_step=None):
    """Forward and backward of the model and its losses on fixed batches (no sampling, no
    update): all tasks together (joint) or one after another (round-robin)."""
    trainer = _trainer(model, tasks, train_kwargs, device)
    num = tasks_per_step or len(tasks)
    batches = [trainer.draw_batch(t) for t in range(num)]
    joint = train_kwargs["schedule"] == "joint"
    reset = _grad_resetter(p for p in model.parameters() if p.requires_grad)

    def step():
        reset()
        if joint:
            torch.stack(trainer.training_losses(range(num), batches)).sum().backward()
        else:
            for t in range(num):
                trainer.training_losses([t], [batches[t]])[0].backward()

    return step


def core_step_fn(model, tasks, train_kwargs, device, tasks_per_step=None):
    """Forward and backward of the shared core alone, on random features of its input
    shape: all tasks in one ``forward_tasks`` (joint; the reference loops inside it) or
    one task after another (round-robin). The backward starts from gradients of ones at
    the core's outputs (no loss), and only the core's and the features' gradients are
    reset."""
    core, batch = model.core, train_kwargs["batch_size"]
    num = tasks_per_step or len(tasks)
    gen = torch.Generator().manual_seed(0)
    hs = [torch.randn(batch, *core.feature_shape, generator=gen).to(device).requires_grad_()
          for _ in range(num)]
    joint = train_kwargs["schedule"] == "joint" and hasattr(core, "forward_tasks")
    reset = _grad_resetter([*(p for p in core.parameters() if p.requires_grad), *hs])
    ones: dict[tuple, torch.Tensor] = {}  # upstream gradients, by output shape

    def backward(outs):
        grads = [ones.get(y.shape) for y in outs]
        for i, y in enumerate(outs):
            if grads[i] is None:
                grads[i] = ones[y.shape] = torch.ones_like(y)
        torch.autograd.backward(outs, grads)

    def step():
        reset()
        if joint:
            backward(core.forward_tasks(hs, list(range(num))))
        else:
            for t in range(num):
                backward([core(hs[t], t)])

    return step


LEVELS = {"step": step_fn, "model": model_step_fn, "core": core_step_fn}


def time_step(step, device) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_interleaved(steps: dict, switch, device, n_steps, warmup, blocks=5) -> dict:
    """Seconds per step of each of ``steps`` (median) and the median over blocks of the
    paired ratio second / first (the speed-up of the first), timed in ``blocks`` alternating
    blocks (first, second, first, ...; ``switch(key)`` before each) of ``n_steps / blocks``
    steps, each after ``warmup`` untimed steps (the first steps after a switch pay for the
    other's caches or threads)."""
    times: dict = {key: [] for key in steps}
    first, second = steps
    ratios = []
    per_block = max(1, -(-n_steps // blocks))
    for _ in range(blocks):
        block = {}
        for key, step in steps.items():
            switch(key)
            for _ in range(warmup):
                step()
            block[key] = [time_step(step, device) for _ in range(per_block)]
            times[key] += block[key]
        ratios.append(statistics.median(block[second]) / statistics.median(block[first]))
    out = {key: statistics.median(t) for key, t in times.items()}
    out["speedup"] = statistics.median(ratios)
    out["block_speedups"] = ratios
    return out


def matmul_peak(device, n=2048, repeats=10):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def build(name, device):
    """``(model, tasks, train kwargs)`` of configuration ``name`` on ``device``, seeded."""
    torch.manual_seed(0)
    model, tasks, kwargs = CONFIGS[name]()
    return model.to(device), tasks, kwargs


def count_flops(model, tasks, kwargs, device, per) -> int:
    """Matmul and convolution FLOPs of one reference training step (forward and backward,
    as ``torch.utils.flop_counter`` counts them): the useful work of a step (rows the fused
    path pads to stack tasks' batches are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = step_fn(model, tasks, kwargs, device, per)
    set_fused(model, False)
    step()  # untimed and uncounted: lazy state is made here
    with FlopCounterMode(display=False) as counter:
        step()
    set_fused(model, True)
    return counter.get_total_flops()


def run_one(name, device, steps):
    """Benchmark one configuration in this process; returns a result row."""
    model, tasks, kwargs = build(name, device)
    heavy = name in HEAVY
    n_steps = max(2, steps // 10) if heavy else steps
    # omniglot: time one task step (1 of 20 tasks per "step") to keep the reference bearable
    per = 1 if heavy else None
    row = {"config": name, "tasks": len(tasks), "batch_size": kwargs["batch_size"],
           "schedule": kwargs["schedule"], "timed_steps": n_steps,
           "unit": "one task step" if heavy else "one training step (all tasks)",
           "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_average": os.getloadavg()[0]}
    row["fused_implemented"] = set_fused(model, True)
    flops = count_flops(model, tasks, kwargs, device, per)
    row["step_flops"] = flops
    for level in ("step",) if heavy else LEVELS:
        make = LEVELS[level]
        steps = {fused: make(model, tasks, kwargs, device, per) for fused in (True, False)}
        seconds = time_interleaved(steps, lambda fused: set_fused(model, fused), device,
                                   n_steps, 1 if heavy else 3, blocks=2 if heavy else 6)
        prefix = "" if level == "step" else f"{level}_"
        row.update({f"{prefix}fused_steps_per_s": 1 / seconds[True],
                    f"{prefix}reference_steps_per_s": 1 / seconds[False],
                    f"{prefix}speedup": seconds["speedup"]})
        if level == "step" and flops:
            row["fused_gflops"] = flops / seconds[True] / 1e9
    set_fused(model, True)
    return row


def peak_memory(name, device, fused: bool, steps=3) -> dict:
    """Peak memory (MB) of training steps of one implementation alone (``peak``), and how
    much the steps added to the built model and data (``steps``): the CUDA peak, or on the
    CPU the resident set size of this process (run it fresh: ``peak`` counts everything the
    process ever held; ``steps`` is the peak during the steps where Linux can restart the
    count, else the whole process's)."""
    model, tasks, kwargs = build(name, device)
    step = step_fn(model, tasks, kwargs, device, 1 if name in HEAVY else None)
    set_fused(model, fused)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before, restarted = _resident_mb("VmRSS"), _restart_peak_rss()
    for _ in range(steps):
        time_step(step, device)
    if cuda:
        peak = during = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        during = _resident_mb("VmHWM") if restarted else peak
    return {"peak": max(peak, during), "steps": during - before}


def _resident_mb(field: str) -> float:
    """``VmRSS`` (resident set size now) or ``VmHWM`` (its peak) of this process in MB, from
    Linux's /proc; elsewhere the peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _restart_peak_rss() -> bool:
    """Restart this process's peak resident set size (``VmHWM``) from its present size;
    False where Linux's /proc/self/clear_refs is not there to do it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- threads crossover

#: configurations of the threads crossover (omniglot: too slow for CPU steps)
CROSSOVER_CONFIGS = tuple(name for name in CONFIGS if name not in HEAVY)
#: a process keeping a fraction (argv[1]) of one core busy: spinning that share of every 10 ms
BUSY_LOOP = ("import sys, time\nshare = float(sys.argv[1])\nwhile True:\n"
             "    end = time.perf_counter() + 0.01 * share\n"
             "    while time.perf_counter() < end:\n        pass\n"
             "    time.sleep(0.01 * (1 - share))\n")


def crossover_one(name, steps) -> dict:
    """Whole training steps of configuration ``name`` on all usable cores and on one thread,
    alternating in blocks in this process; with the FLOPs of the trainer's step (what
    ``auto_threads`` judges), the load of other processes before and after (what it reads),
    and the threads runnable elsewhere at every switch (what the timing met)."""
    cores = usable_cores()
    if cores < 2:
        raise SystemExit("the threads crossover needs a machine with two or more cores")
    model, tasks, kwargs = build(name, "cpu")
    trainer = _trainer(model, tasks, kwargs, "cpu")
    with FlopCount() as count:  # the first step's FLOPs, as the trainer counts them
        trainer.train_step()
    flops = count.flops
    load = other_load()
    elsewhere = []

    def switch(threads):
        elsewhere.append(runnable_elsewhere())
        torch.set_num_threads(threads)

    seconds = time_interleaved({cores: trainer.train_step, 1: trainer.train_step}, switch,
                               "cpu", steps, 3, blocks=6)
    elsewhere.append(runnable_elsewhere())
    return {"config": name, "step_flops": flops, "cores": cores,
            "cores_steps_per_s": 1 / seconds[cores], "one_thread_steps_per_s": 1 / seconds[1],
            "speedup": seconds["speedup"], "block_speedups": seconds["block_speedups"],
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "other_load": [load, other_load()], "runnable_elsewhere": elsewhere}


def runnable_elsewhere() -> int:
    """Threads running or waiting for a core right now outside this process (Linux's /proc:
    all runnable threads, less this process's; 0 where /proc is not there)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        own = sum((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
                  for task in Path("/proc/self/task").iterdir())
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - own)


def wait_until_quiet(busy: float, seconds: float, log=print) -> None:
    """Wait (at most ``seconds``) until, for 5 s, no more threads run elsewhere than the
    ``busy`` loops: other work on a shared machine would be timed as well."""
    deadline, quiet_since = time.monotonic() + seconds, time.monotonic()
    while time.monotonic() < deadline:
        if runnable_elsewhere() > math.ceil(busy):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 5:
            return
        time.sleep(0.25)
    if seconds:
        log(f"  (the machine was not quiet within {seconds:.0f} s: timing anyway)")


def busy_loops(cores: float) -> list[subprocess.Popen]:
    """Processes that keep ``cores`` cores busy: one spinning for each whole core, one
    spinning a share of each 10 ms for the fraction."""
    shares = [1.0] * int(cores) + ([cores % 1] if cores % 1 else [])
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(share)]) for share in shares]


def threads_crossover(names, levels, steps, quiet_wait=0.0, log=print) -> list[dict]:
    """:func:`crossover_one` of each configuration (a fresh process each, after waiting up to
    ``quiet_wait`` seconds for other work to stop) beside each level of busy loops
    (``levels``: busy cores); the rows."""
    rows = []
    for level in levels:
        loops = busy_loops(level)
        try:
            time.sleep(2 if loops else 0)  # the loops running before the timing starts
            for name in names:
                wait_until_quiet(level, quiet_wait, log)
                r = _subprocess_json(["--crossover-one", name, "--steps", str(steps)], name)
                if r is None:
                    continue
                rows.append({"busy_cores": level, **r})
                log(f"busy {level:g}  {name:>16}: {r['step_flops'] / 1e6:9.1f} MFLOP  "
                    f"1 thread {r['one_thread_steps_per_s']:7.1f}/s  {r['cores']} threads "
                    f"{r['cores_steps_per_s']:7.1f}/s  x{r['speedup']:.2f}  (other load "
                    f"{r['other_load'][0]:.1f}-{r['other_load'][1]:.1f}, runnable elsewhere "
                    f"{r['runnable_elsewhere']})", flush=True)
        finally:
            for loop in loops:
                loop.terminate()
                loop.wait()
    return rows


def crossover_points(rows) -> list[dict]:
    """Per level of busy loops: the largest step (FLOPs) at which one thread was
    faster, and the smallest step above it from which all cores were always faster (None:
    no such step)."""
    out = []
    for level in dict.fromkeys(r["busy_cores"] for r in rows):
        level_rows = sorted((r for r in rows if r["busy_cores"] == level),
                            key=lambda r: r["step_flops"])
        slower = [r["step_flops"] for r in level_rows if r["speedup"] < 1]
        last = max(slower, default=0)
        above = [r["step_flops"] for r in level_rows if r["step_flops"] > last]
        out.append({"busy_cores": level, "one_thread_faster_up_to": last or None,
                    "cores_faster_from": min(above, default=None)})
    return out


# ---------------------------------------------------------------------- studies

#: how a study runs: run_experiment's extra keyword arguments (each value computed when the
#: variant runs); a variant runs only where run_experiment takes all its arguments
STUDY_VARIANTS = {
    # one run after the other in this process, each trained alone (before issue 14)
    "serial": {"jobs": lambda: 1, "batch_runs": lambda: False},
    # worker processes, each run trained alone
    "pool": {"jobs": executors.usable_cores, "batch_runs": lambda: False},
    # the seeds of a method and point as one batched model, in this process
    "batched-serial": {"jobs": lambda: 1, "batch_runs": lambda: True},
    # batches on worker processes: run_experiment's default
    "batched": {"jobs": executors.usable_cores, "batch_runs": lambda: True},
}
#: the studies timed (see :func:`studies`)
STUDY_NAMES = ("uci", "so-fig4a", "four-mnists")


def studies(scale: int) -> dict[str, dict]:
    """run_experiment's arguments of each study, as users run them, with steps (or epochs)
    and eval_every divided by ``scale``: the paper's UCI experiment (``flexmtl run uci``), Fig.
    4a at the quick protocol of ``flexmtl reproduce`` (so-fig4a), and four-mnists."""
    fig4a = get_study("so-fig4a").quick
    assert fig4a is not None
    runs = {
        "uci": dict(name="uci", seeds=3, overrides={}),
        "so-fig4a": dict(name="mnist-pairs", methods=fig4a.methods, seeds=fig4a.seeds,
                         overrides=dict(fig4a.overrides), sweep=fig4a.sweep or False),
        "four-mnists": dict(name="four-mnists", methods=("gumbel", "shared-bottom",
                                                         "no-sharing"), seeds=3, overrides={}),
    }
    for args in runs.values():
        cfg = get_experiment(args["name"]).resolve_config(overrides=args["overrides"])
        length = {"steps": cfg["steps"] // scale} if cfg["steps"] else {
            "epochs": cfg["epochs"] / scale}
        args["overrides"] = {**args["overrides"], **length,
                             "eval_every": max(1, cfg["eval_every"] // scale)}
    return runs


def study_variants(names) -> list[str]:
    """The variants of ``names`` that this flexmtl's run_experiment can run."""
    takes = inspect.signature(run_experiment).parameters
    return [v for v in names if all(key in takes for key in STUDY_VARIANTS[v])]


def time_study(args: dict, variants, repeats, log=print) -> dict:
    """Wall seconds of the study ``args`` run by each variant, alternating (A, B, A, B, ...),
    each run in a fresh temporary folder: medians, the median of the paired ratios variant /
    first variant, the load of other processes before each, and whether every run of every
    variant gave the per-run test metrics of the first variant's first run."""
    seconds: dict = {v: [] for v in variants}
    loads: dict = {v: [] for v in variants}
    metrics: dict = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            extra = {key: make() for key, make in STUDY_VARIANTS[variant].items()}
            loads[variant].append(other_load())
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                results = run_experiment(**args, out_dir=tmp, progress=False, plots=False,
                                         log=_quiet, **extra)
                seconds[variant].append(time.perf_counter() - t0)
            metrics[variant].append(run_metrics(results))
            log(f"  {variant}: {seconds[variant][-1]:.1f} s (other load "
                f"{loads[variant][-1]:.1f})", flush=True)
    first = variants[0]
    base = metrics[first][0]
    return {"runs": base["runs"], "repeats": repeats,
            "seconds": {v: statistics.median(t) for v, t in seconds.items()},
            "all_seconds": seconds, "other_load": loads,
            "ratio": {v: statistics.median(a / b for a, b in zip(seconds[v], seconds[first]))
                      for v in variants[1:]},
            "identical": {v: all(m == base for m in ms) for v, ms in metrics.items()},
            "max_difference": {v: max(metric_difference(m, base) for m in ms)
                               for v, ms in metrics.items()},
            "batched_identical": _batched_identical(metrics)}


def metric_difference(a: dict, b: dict) -> float:
    """The largest absolute difference of one run's test metric between two
    :func:`run_metrics` (NaN where both are NaN counts as equal; inf when runs differ)."""
    if a.keys() != b.keys():
        return math.inf
    worst = 0.0
    for key in a:
        if key == "runs":
            continue
        for x, y in zip(a[key], b[key]):
            if not (math.isnan(x) and math.isnan(y)):
                worst = max(worst, abs(x - y))
    return worst


def _batched_identical(metrics: dict) -> bool | None:
    """Whether every repeat of every batched variant gave the same per-run test metrics
    (a batched run does not depend on its batch or the workers); None without one."""
    batched = [m for v, ms in metrics.items() if STUDY_VARIANTS[v].get("batch_runs", bool)()
               for m in ms]
    return None if not batched else all(m == batched[0] for m in batched)


def run_metrics(results: dict) -> dict:
    """Every run's test metrics in run_experiment's results: ``{(sweep value, method,
    metric): per-seed values}``, the tasks' own included, and ``"runs"``: how many."""
    sweep = results["sweep"]
    points = sweep["points"] if sweep else [{"value": None, "methods": results["methods"]}]
    out: dict = {"runs": 0}
    for point in points:
        for method, m in point["methods"].items():
            out["runs"] += len(m["seeds"])
            for key in ("test_loss", "test_accuracy"):
                if key in m["metrics"]:
                    out[(point["value"], method, key)] = m["metrics"][key]["values"]
            for task, metrics in m["per_task"].items():
                for key, summary in metrics.items():
                    out[(point["value"], method, f"{task}/{key}")] = summary["values"]
    return out


#: ``--batch-scaling``'s studies: (experiment, its overrides) by name
SCALING_STUDIES = {"uci": ("uci", {}), "mnist-pairs": ("mnist-pairs", {})}


def batch_scaling(name: str, method: str, sizes, steps: int, repeats: int,
                  log=print) -> dict:
    """Seconds per run of ``method``'s seeds trained as one batch of R runs for each R of
    ``sizes`` (``train_runs``, fresh folders, this process on one thread; ``steps`` steps,
    0: the study's own, and its eval_every), the sizes alternating in each repeat; medians, the fit
    ``seconds per run = a / R + b`` (least squares over every measurement) and what it
    bounds: ``T(1) / b``, the most a run can gain from batching with any R."""
    from flexmtl.runner import train_runs

    experiment, overrides = SCALING_STUDIES[name]
    cfg = get_experiment(experiment).resolve_config(overrides=overrides)
    steps = steps or cfg["steps"]
    cfg = {**cfg, "steps": steps}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    per_run: dict = {r: [] for r in sizes}
    loads: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:  # a batch of one first: data and imports
            train_runs(experiment, method, [0], {**cfg, "steps": 2}, [tmp + "/warm"])
        for _ in range(repeats):
            for r in sizes:
                loads.append(other_load())
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    train_runs(experiment, method, list(range(r)), cfg,
                               [f"{tmp}/{seed}" for seed in range(r)])
                    per_run[r].append((time.perf_counter() - t0) / r)
                log(f"  {name} {method} R={r}: {per_run[r][-1]:.2f} s per run (other load "
                    f"{loads[-1]:.1f})", flush=True)
    finally:
        torch.set_num_threads(threads)
    x = np.array([1 / r for r in sizes for _ in per_run[r]])
    y = np.array([t for r in sizes for t in per_run[r]])
    a, b = np.polyfit(x, y, 1)
    median = {r: statistics.median(t) for r, t in per_run.items()}
    first = median[min(sizes)] if min(sizes) == 1 else float(a + b)
    return {"study": name, "method": method, "steps": steps, "repeats": repeats,
            "seconds_per_run": {str(r): t for r, t in median.items()},
            "all_seconds_per_run": {str(r): t for r, t in per_run.items()},
            "batch_cost": float(a), "run_cost": float(b),
            "batching_bound": float(first / b) if b > 0 else math.inf,
            "other_load": [min(loads), max(loads)], "platform": platform.platform(),
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _quiet(_message: str) -> None:
    pass


def _subprocess_json(args: list[str], what: str):
    """Run this script with ``args`` in a fresh process; its last stdout line as JSON (None
    after a failure, which is reported)."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        print(f"{what}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated configurations: " + ", ".join(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per implementation and "
                   "level (in 6 blocks)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per configuration (fresh processes); each figure is the median "
                        "over the runs, and the runs' speed-ups are recorded")
    p.add_argument("--merge", action="store_true",
                   help="keep the other configurations' rows of the existing results file "
                        "(threads crossover: those of other configurations or busy levels)")
    p.add_argument("--main-job", action="store_true",
                   help=f"also time the README's main job, `flexmtl {' '.join(MAIN_JOB)}`")
    p.add_argument("--threads-crossover", action="store_true",
                   help="instead: time whole steps on one thread and on all cores (--only "
                        "configurations, --steps per thread count), beside busy loops")
    p.add_argument("--busy", default="0,0.5,1",
                   help="cores kept busy beside the threads crossover, one level after another")
    p.add_argument("--quiet-wait", type=float, default=0.0,
                   help="threads crossover: wait up to this many seconds before each "
                        "configuration until no other work runs beside the busy loops")
    p.add_argument("--study", nargs="?", const=",".join(STUDY_NAMES),
                   help="instead: time whole studies run by each variant (default: "
                        f"{', '.join(STUDY_NAMES)})")
    p.add_argument("--study-scale", type=int, default=1,
                   help="divide the studies' steps (or epochs) and eval_every by this")
    p.add_argument("--study-repeats", type=int, default=2, help="runs of each variant")
    p.add_argument("--variants", default=",".join(STUDY_VARIANTS),
                   help="study variants, the first the baseline; those that this "
                        "run_experiment cannot run are left out")
    p.add_argument("--batch-scaling", help="instead: time batches of R runs of these "
                   "study:method pairs (comma-separated; studies: "
                   + ", ".join(SCALING_STUDIES) + ")")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="the R of --batch-scaling")
    p.add_argument("--scaling-steps", type=int, default=0,
                   help="training steps of each --batch-scaling batch (0: the study's)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    p.add_argument("--memory", help=argparse.SUPPRESS)  # internal: CONFIG:fused|reference
    p.add_argument("--crossover-one", help=argparse.SUPPRESS)  # internal: one config, JSON
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, args.device, args.steps)))
        return
    if args.memory:
        name, impl = args.memory.split(":")
        print(json.dumps(peak_memory(name, args.device, impl == "fused")))
        return
    if args.crossover_one:
        print(json.dumps(crossover_one(args.crossover_one, args.steps)))
        return
    names = args.only.split(",") if args.only else list(
        CROSSOVER_CONFIGS if args.threads_crossover else CONFIGS)
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown configuration {n!r}; known: {', '.join(CONFIGS)}")
    out = Path(args.out)
    tag = f"{args.device}-{torch.get_num_threads()}threads"
    recorded = out / f"{tag}.json"
    previous = json.loads(recorded.read_text()) if recorded.exists() else {}
    # a mode replaces its own tables: the step benchmark keeps only the others' (and with
    # --merge its other rows and main job), the others keep everything else
    # ("machine": that of the step benchmark; the other tables name their own platform)
    steps = not (args.threads_crossover or args.study or args.batch_scaling)
    report = {k: v for k, v in previous.items()
              if not steps or k in ("threads_crossover", "studies", "batch_scaling")}
    if steps or "machine" not in report:
        report["machine"] = machine(args.device)
    if args.threads_crossover:
        levels = [float(level) for level in args.busy.split(",")]
        rows = threads_crossover(names, levels, args.steps, args.quiet_wait)
        if args.merge:  # the rows of other configurations and levels are kept
            rerun = {(r["busy_cores"], r["config"]) for r in rows}
            rows = [r for r in previous.get("threads_crossover", {}).get("rows", [])
                    if (r["busy_cores"], r["config"]) not in rerun] + rows
        rows.sort(key=lambda r: (r["busy_cores"], r["step_flops"]))
        report["threads_crossover"] = {"platform": platform.platform(), "cores": usable_cores(),
                                       "steps": args.steps, "rows": rows,
                                       "crossover": crossover_points(rows)}
    elif args.study:
        report["studies"] = study_report(args, previous.get("studies", {}))
    elif args.batch_scaling:
        report["batch_scaling"] = scaling_report(args, previous.get("batch_scaling", []))
    else:
        report = {**report, **step_report(args, names, previous)}
    report = {key: report[key] for key in REPORT_KEYS if key in report}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2))
    (out / f"{tag}.md").write_text(markdown(report))
    print(markdown(report))


#: the tables of a results file, in order
REPORT_KEYS = ("machine", "matmul_peak_gflops", "results", "main_job", "main_job_seconds",
               "main_job_measured", "threads_crossover", "studies", "batch_scaling")


def machine(device: str) -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda")
            else platform.processor() or platform.machine()}


def study_report(args, previous: dict) -> dict:
    """The study table: each study of ``--study`` timed by :func:`time_study`, the other
    studies' rows of ``previous`` kept."""
    names = args.study.split(",")
    for name in names:
        if name not in STUDY_NAMES:
            raise SystemExit(f"unknown study {name!r}; known: {', '.join(STUDY_NAMES)}")
    variants = study_variants(args.variants.split(","))
    left_out = sorted(set(args.variants.split(",")) - set(variants))
    if left_out:
        print(f"variants left out (run_experiment takes no such argument): "
              f"{', '.join(left_out)}", file=sys.stderr)
    rows = dict(previous)
    for name, study in studies(args.study_scale).items():
        if name not in names:
            continue
        print(f"{name} (scale 1/{args.study_scale}):", flush=True)
        rows[name] = {"scale": args.study_scale, "variants": variants,
                      "platform": platform.platform(),
                      "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      **time_study(study, variants, args.study_repeats)}
    return {name: rows[name] for name in STUDY_NAMES if name in rows}


def scaling_report(args, previous: list) -> list:
    """The batch-scaling table: each ``study:method`` of ``--batch-scaling`` timed by
    :func:`batch_scaling`, the other pairs' rows of ``previous`` kept."""
    sizes = [int(r) for r in args.batch_sizes.split(",")]
    if len(set(sizes)) < 2 or min(sizes) < 1:
        raise SystemExit(f"--batch-sizes {args.batch_sizes!r}: give two or more sizes >= 1")
    pairs = [pair.split(":") for pair in args.batch_scaling.split(",")]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in SCALING_STUDIES:
            raise SystemExit(f"--batch-scaling {':'.join(pair)!r}: give STUDY:METHOD, "
                             f"STUDY one of {', '.join(SCALING_STUDIES)}")
    rows = [r for r in previous if [r["study"], r["method"]] not in pairs]
    for study, method in pairs:
        length = f"{args.scaling_steps} steps" if args.scaling_steps else "the study's steps"
        print(f"{study} {method}: batches of {sizes} runs, {length}", flush=True)
        rows.append(batch_scaling(study, method, sizes, args.scaling_steps, args.repeats))
    return rows


def step_report(args, names, previous: dict) -> dict:
    """The step, model and core levels of each configuration of ``names`` (fresh processes),
    its peak memory, and this machine's matmul peak; with ``--merge`` the other
    configurations' rows of ``previous`` are kept."""
    peak = matmul_peak(args.device)
    if previous:  # the machine's peak: the best measured (a loaded machine measures less)
        peak = max(peak, previous["matmul_peak_gflops"])
    old = previous if args.merge else {}
    rows = []
    for name in names:
        runs = []
        common = ["--device", args.device, "--threads", str(args.threads)]
        for _ in range(args.repeats):
            r = _subprocess_json(["--one", name, "--steps", str(args.steps), *common], name)
            if r is None:
                continue
            runs.append(r)
            levels = "  ".join(f"{level} x{r[f'{level}_speedup']:.2f}"
                               for level in ("model", "core") if f"{level}_speedup" in r)
            print(f"{name:>16}: fused {r['fused_steps_per_s']:8.1f}/s  reference "
                  f"{r['reference_steps_per_s']:8.1f}/s  x{r['speedup']:.2f}  {levels}  "
                  f"(load {r['load_average']:.1f})", flush=True)
        if not runs:
            continue
        rows.append(median_row(runs))
        for impl, prefix in (("fused", ""), ("reference", "reference_")):
            mb = _subprocess_json(["--memory", f"{name}:{impl}", *common], f"{name} memory")
            if mb is not None:
                rows[-1][f"{prefix}peak_memory_mb"] = mb["peak"]
                rows[-1][f"{prefix}steps_memory_mb"] = mb["steps"]
    rerun = {r["config"] for r in rows}
    kept = {r["config"]: r for r in old.get("results", []) if r["config"] not in rerun}
    rows = [r for name in CONFIGS for r in rows + list(kept.values()) if r["config"] == name]
    for row in rows:
        if "fused_gflops" in row:
            row["fraction_of_matmul_peak"] = row["fused_gflops"] / peak
    report: dict = {"matmul_peak_gflops": peak, "results": rows}
    if args.main_job:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh run folder: nothing resumed
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "flexmtl.cli", *MAIN_JOB, "--no-progress",
                            "--out", tmp], check=True, capture_output=True)
            report["main_job_seconds"] = time.perf_counter() - t0
            report["main_job_measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            report["main_job"] = " ".join(MAIN_JOB)
    elif "main_job_seconds" in old:
        for key in ("main_job_seconds", "main_job_measured", "main_job"):
            if key in old:
                report[key] = old[key]
    return report


def median_row(runs: list[dict]) -> dict:
    """One row for repeated runs of a configuration: the median of each timing (the
    speed-up is the median of the runs' own, paired, ratios), the highest load average."""
    row = dict(runs[0])
    if len(runs) == 1:
        return row
    keys = [f"{prefix}{k}" for prefix in ("", "model_", "core_")
            for k in ("fused_steps_per_s", "reference_steps_per_s", "speedup")]
    for key in (*keys, "fused_gflops"):
        if key in row:
            row[key] = statistics.median(r[key] for r in runs)
    row["load_average"] = max(r["load_average"] for r in runs)
    for prefix in ("", "model_", "core_"):  # each level's runs, for its range
        if f"{prefix}speedup" in row:
            row[f"{prefix}speedups_of_repeats"] = [r[f"{prefix}speedup"] for r in runs]
    return row


def markdown(report) -> str:
    m = report["machine"]
    lines = [f"# flexmtl benchmarks: {m['device']} ({m['device_name']}), {m['threads']} "
             f"thread(s), torch {m['torch']}", ""]
    if "results" in report:
        lines += _steps_markdown(report)
    if "threads_crossover" in report:
        lines += _crossover_markdown(report["threads_crossover"])
    if "studies" in report:
        lines += _studies_markdown(report["studies"])
    if "batch_scaling" in report:
        lines += _scaling_markdown(report["batch_scaling"])
    return "\n".join(lines) + "\n"


def _scaling_markdown(rows: list) -> list[str]:
    lines = ["", "## Batch scaling", "",
             "`python benchmarks/bench.py --batch-scaling`: a method's seeds trained as one "
             "batch of R runs (`flexmtl.runner.train_runs`: `RunBatch`, with its evaluations, "
             "logs and checkpoints), in one process on one thread, the sizes alternating. "
             "Seconds per run: medians; a, b: the least-squares fit seconds per run = a / R + "
             "b (a: paid once per batch, b: by each run); bound: T(1) / b (T(1): a batch of "
             "one), the most batching can speed a run up with any R. A study on c cores "
             "gains at most c times that (less its own start-up, probe and plots).", "",
             "| study | method | steps | seconds per run by R | a | b | bound | other load | "
             "measured |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{k}: {v:.2f}" for k, v in r["seconds_per_run"].items())
        lines.append(f"| {r['study']} | {r['method']} | {r['steps']} x {r['repeats']} | {per} "
                     f"| {r['batch_cost']:.2f} | {r['run_cost']:.2f} | "
                     f"{r['batching_bound']:.2f}x | {r['other_load'][0]:.1f}-"
                     f"{r['other_load'][1]:.1f} | {r['measured']} |")
    return lines


def _steps_markdown(report) -> list[str]:
    lines = [f"fp32 matmul peak (2048x2048): {report['matmul_peak_gflops']:.1f} GFLOP/s", ""]
    if "main_job_seconds" in report:
        when = report.get("main_job_measured", "an earlier run")
        job = report.get("main_job", "run uci")
        lines += [f"README main job (`flexmtl {job}`): {report['main_job_seconds']:.0f} s "
                  f"({when})", ""]
    lines += ["Fused and reference alternate in blocks (the first steps of each block untimed); "
              "a speed-up is the median of the blocks' paired ratios. `step`: whole training "
              "steps; `model`: forward + backward of model and losses on fixed batches; "
              "`core`: forward + backward of the shared core alone (the part fusion changes "
              "most; outside it only alike small encoders, heads and losses are batched). "
              "The last column says "
              "when each row was measured and the 1-minute load average then (it counts this "
              "benchmark's own previous runs too; other processes sharing the CPUs slow both "
              "implementations, not always alike). With repeated runs every figure is the "
              "median over the runs, the load the highest, and each speed-up's range (in "
              "brackets) that of the runs. GFLOP/s: the matmul and convolution FLOPs of a "
              "reference step (torch.utils.flop_counter) per second of the fused step. Peak "
              "memory: of a fresh process training with one implementation (CPU: resident "
              "set size, torch and the data included); in brackets what its training "
              "steps added to the built model.", ""]
    lines += ["| config | unit | fused steps/s | reference steps/s | speed-up (step) | "
              "speed-up (model) | speed-up (core) | fused GFLOP/s | % of matmul peak | "
              "peak memory MB (fused / reference) | measured (1-min load) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        g = f"{r['fused_gflops']:.1f}" if "fused_gflops" in r else "-"
        frac = (f"{100 * r['fraction_of_matmul_peak']:.0f}%"
                if "fraction_of_matmul_peak" in r else "-")
        speedup, model, core = (_speedup(r, prefix) for prefix in ("", "model_", "core_"))
        when = (f"{r['measured']} ({r['load_average']:.1f})" if "measured" in r
                else "earlier run")
        lines.append(f"| {r['config']} | {r['unit']} | {r['fused_steps_per_s']:.1f} | "
                     f"{r['reference_steps_per_s']:.1f} | {speedup} | {model} | {core} | {g} | "
                     f"{frac} | {_memory(r)} | {when} |")
    return lines


def _crossover_markdown(crossover) -> list[str]:
    n = crossover["cores"]
    lines = ["", "## Threads crossover", "",
             f"`python benchmarks/bench.py --threads-crossover` on {crossover['platform']}: "
             f"whole training steps on one thread and on all {n} cores, alternating in 6 "
             f"blocks in one process (a fresh one per row; {crossover['steps']} timed steps "
             "each, the first 3 of every block untimed); the speed-up of the cores is the "
             "median of the blocks' paired ratios, in brackets their range. Beside it, busy "
             "loops keep that many cores busy (0.5: a loop spinning half of every 10 ms). "
             "Step size: the matmul and convolution FLOPs of one training step, forward and "
             "backward (`Trainer.step_flops`, counted in the first step; what "
             "`flexmtl.training.threads.auto_threads` judges). Other load: the 1-minute load "
             "average less the process's own share (`other_load`, what the rule reads) "
             "before and after the timing; it lags, and counts the previous row's process "
             "for a while. Runnable elsewhere: the threads outside the process running or "
             "waiting for a core at each switch of thread count (median and maximum; the "
             "busy loops included): the other work the timing met.", "",
             f"| busy cores | config | step MFLOP | 1 thread steps/s | {n} threads "
             f"steps/s | speed-up of {n} threads | other load | runnable elsewhere | "
             "measured |", "|---|---|---|---|---|---|---|---|---|"]
    for r in crossover["rows"]:
        blocks, elsewhere = r["block_speedups"], r["runnable_elsewhere"]
        lines.append(f"| {r['busy_cores']:g} | {r['config']} | "
                     f"{r['step_flops'] / 1e6:.1f} | {r['one_thread_steps_per_s']:.1f} | "
                     f"{r['cores_steps_per_s']:.1f} | {r['speedup']:.2f}x ({min(blocks):.2f}-"
                     f"{max(blocks):.2f}) | {r['other_load'][0]:.1f}-{r['other_load'][1]:.1f} | "
                     f"{statistics.median(elsewhere):g} (max {max(elsewhere)}) | "
                     f"{r['measured']} |")
    lines += ["", "| busy cores | one thread faster up to (MFLOP) | all cores faster from "
              "(MFLOP) |", "|---|---|---|"]
    for c in crossover["crossover"]:
        below, above = (f"{c[k] / 1e6:.0f}" if c[k] else "-"
                        for k in ("one_thread_faster_up_to", "cores_faster_from"))
        lines.append(f"| {c['busy_cores']:g} | {below} | {above} |")
    return lines


def _studies_markdown(rows) -> list[str]:
    lines = ["", "## Studies", "",
             "`python benchmarks/bench.py --study`: whole studies as users run them "
             "(`flexmtl.runner.run_experiment`, a fresh temporary folder each, no plots), run "
             "by each variant in turn (A, B, A, B, ...) in one process. `serial`: one run "
             "after another in the process, each trained alone (`jobs=1, batch_runs=False`: "
             "how every study ran before issue 14); `pool`: `jobs` = the usable cores, one "
             "run per worker process; `batched-serial`: the seeds of each method and point "
             "as one batched model (`RunBatch`), one batch after another in the process; "
             "`batched`: such batches on the worker processes (the default). "
             "Scale 1/k: the studies' steps (or epochs) and eval_every divided by k. "
             "Seconds: medians; ratio: the median of the paired "
             "ratios variant / first variant; identical: whether the per-run test metrics "
             "(the tasks' own included) of every repeat of the variant equal those of the "
             "first variant's first repeat, else the largest absolute difference of one; "
             "batched alike: whether every repeat of the batched variants gave the same "
             "per-run metrics (a run does not depend on its batch or the workers). Other "
             "load: before each run (the 1-minute load average less this process's own "
             "share).", "",
             "| study | scale | runs | variant seconds | ratio | identical | batched alike | "
             "other load | measured |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        first = r["variants"][0]
        seconds = ", ".join(f"{v} {t:.1f}" for v, t in r["seconds"].items())
        ratio = ", ".join(f"{v}/{first} {x:.2f}" for v, x in r["ratio"].items()) or "-"
        worst = r.get("max_difference", {})
        same = ", ".join(f"{v}: " + ("yes" if x else f"no, max {worst[v]:.2g}" if v in worst
                                     else "NO")
                         for v, x in r["identical"].items())
        alike = {None: "-", True: "yes", False: "NO"}[r.get("batched_identical")]
        load = ", ".join(f"{v} {min(x):.1f}-{max(x):.1f}" for v, x in r["other_load"].items())
        lines.append(f"| {name} | 1/{r['scale']} | {r['runs']} x {r['repeats']} | {seconds} | "
                     f"{ratio} | {same or '-'} | {alike} | {load} | {r['measured']} |")
    return lines


def _memory(row: dict) -> str:
    """``fused / reference`` peak MB, and in brackets what the training steps added."""
    text = " / ".join(f"{row[k]:.0f}" if k in row else "-"
                      for k in ("peak_memory_mb", "reference_peak_memory_mb"))
    if "steps_memory_mb" in row and "reference_steps_memory_mb" in row:
        text += f" (+{row['steps_memory_mb']:.0f} / +{row['reference_steps_memory_mb']:.0f})"
    return text


def _speedup(row: dict, prefix: str) -> str:
    """A level's speed-up, with the range of the runs when there were several."""
    if f"{prefix}speedup" not in row:
        return "-"
    text = f"{row[f'{prefix}speedup']:.2f}x"
    runs = row.get(f"{prefix}speedups_of_repeats")
    return text + (f" ({min(runs):.2f}-{max(runs):.2f})" if runs else "")


if __name__ == "__main__":
    main()
