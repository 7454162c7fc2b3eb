"""Command line: ``flexmtl list | run | plot | evaluate | export | pack | unpack |
reproduce | data``; thin: parses, then calls the library.

``torchrun --nproc_per_node=N -m flexmtl run ...`` runs an experiment data-parallel;
``flexmtl run --jobs N`` trains N runs of it at once (``--executor ray``: on a Ray cluster).

Exit status (:data:`EXIT_STATUS`): every failure ends with one line on stderr,
``flexmtl: error: ...``, never a traceback. SIGTERM, like Ctrl-C, stops a command with its
run folder released (``run.lock`` removed); rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flexmtl.errors import ConfigError, FlexMTLError, RunFailedError
from flexmtl.run_folder import ReproductionReport

if TYPE_CHECKING:
    from flexmtl.data import SourceStatus

#: the exit status of each way a command ends (``flexmtl --help`` lists them)
EXIT_STATUS = {
    0: "done",
    1: "a disk or OS error (the message names the file and the reason)",
    2: "bad input or a flexmtl error: usage, config, data, a diverged or failed run, a run "
       "folder that holds something else, is locked by another process or has a corrupt file",
    130: "interrupted (rerun the same command to resume)",
    143: "stopped by SIGTERM (rerun the same command to resume)",
    141: "the reader of the output went away (`flexmtl data | head`); nothing is printed",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexmtl",
        description="Flexible multi-task learning: run the papers' experiments and your own.",
        epilog="exit status: " + "; ".join(f"{code} {what}"
                                            for code, what in EXIT_STATUS.items()),
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="experiments, methods, config keys and data status")

    run = sub.add_parser("run", help="run an experiment (all methods x seeds), resumable")
    run.add_argument("experiment", help="experiment name (see `flexmtl list`)")
    run.add_argument("overrides", nargs="*", metavar="key=value",
                     help="config overrides, e.g. dropout=0.5 width=64")
    run.add_argument("--methods", help="comma-separated methods (default: the experiment's)")
    run.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    run.add_argument("--steps", type=int, help="training steps per run")
    run.add_argument("--out", help="run folder (default runs/EXPERIMENT); reruns resume")
    run.add_argument("--restart", action="store_true",
                     help="delete the runs, results and plots in the run folder and start over "
                          "(instead of resuming; also when the folder holds another "
                          "configuration's runs)")
    run.add_argument("--config", help="JSON or YAML file of config keys")
    sweeps = run.add_mutually_exclusive_group()
    sweeps.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="sweep one config key (default: the experiment's own sweep, if "
                             "any)")
    sweeps.add_argument("--no-sweep", action="store_true",
                        help="run only the configured point")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--no-plots", action="store_true", help="skip plotting at the end")
    run.add_argument("--no-floors", action="store_true",
                     help="skip the reference floors (majority class, logistic regression on "
                          "the same splits; they need scikit-learn)")
    run.add_argument("--device", type=_device, metavar="{cpu,cuda,cuda:N,auto}",
                     help="train on cpu or cuda (auto: cuda when present); default: the "
                          "config's device key (cpu). Under torchrun each process takes "
                          "the GPU of its LOCAL_RANK")
    run.add_argument("--tensorboard", action="store_true",
                     help="log losses, metrics, learning rates and the learned sharing for "
                          "TensorBoard (`tensorboard --logdir OUT`; needs pip install "
                          "'flexmtl[tensorboard]')")
    run.add_argument("--compile", action="store_true",
                     help="apply torch.compile to the training forward")
    _add_executor_options(run)

    plot = sub.add_parser("plot", help="redraw the plots of a run folder")
    plot.add_argument("run_dir")

    ev = sub.add_parser("evaluate", help="evaluate a finished run's selected model on its own "
                                         "splits or on new data")
    _add_run_choice(ev)
    ev.add_argument("--split", choices=("train", "val", "test"),
                    help="the run's own split to evaluate (default: test where the run has "
                         "one, else val)")
    ev.add_argument("--data", nargs="+", metavar="TASK=FILE", default=(),
                    help="new data per task instead: .npz (arrays x, y) or .csv (inputs, then "
                         "the target)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")

    ex = sub.add_parser("export", help="save one task's path of a finished run's selected "
                                       "model as a standalone torch.export program (.pt2)")
    _add_run_choice(ex)
    ex.add_argument("--task", required=True, help="the task to export (its name)")
    ex.add_argument("--out", required=True, help="the file to write (.pt2)")
    ex.add_argument("--prune", type=float, default=0.0,
                    help="soft ordering: drop branches whose scale is at most this (default 0: "
                         "keep all, the outputs are the model's); Gumbel-Matrix: inactive "
                         "components are always dropped")

    pack = sub.add_parser("pack", help="write the runs of a run folder to one .tar.gz, to "
                                        "carry them to another machine (`flexmtl unpack`)")
    pack.add_argument("run_dir", metavar="RUN_DIR",
                      help="an experiment folder (flexmtl run --out, or "
                           "runs/reproduce/MODE/STUDY)")
    pack.add_argument("archive", metavar="ARCHIVE", help="the .tar.gz to write")
    pack.add_argument("--finished-only", action="store_true",
                      help="leave out unfinished runs (their last.pt checkpoints are large)")
    pack.add_argument("--without-train-logs", action="store_true",
                      help="leave out finished runs' train_log.csv (per-step training losses, "
                           "which nothing reads once a run has finished; often most of an "
                           "archive's size)")
    unpack = sub.add_parser("unpack", help="merge the runs of a `flexmtl pack` archive into a "
                                           "run folder; rerunning its command then resumes")
    unpack.add_argument("archive", metavar="ARCHIVE")
    unpack.add_argument("run_dir", metavar="RUN_DIR", help="the experiment folder to merge "
                                                           "into (created if need be)")

    rep = sub.add_parser("reproduce", help="reproduce the papers' figures and tables and "
                                           "write REPRODUCTION.md (resumable)")
    rep.add_argument("--quick", action="store_true",
                     help="the stated smaller protocols (fewer seeds / steps) instead of the "
                          "papers'")
    rep.add_argument("--only", action="extend", nargs="+", metavar="NAME",
                     help="study keys (e.g. so-fig4a) or experiment names")
    rep.add_argument("--out", default="runs/reproduce",
                     help="folder of the reproduction's runs (default runs/reproduce)")
    rep.add_argument("--doc", default=ReproductionReport.DOC,
                     help="report to write; its figures go to docs/reproduction/ beside it")
    rep.add_argument("--report-only", action="store_true",
                     help="rewrite the whole report from the finished runs (full, else quick) "
                          "without training; studies with none keep their reported results")
    rep.add_argument("--device", type=_device, metavar="{cpu,cuda,cuda:N,auto}",
                     help="train on cpu or cuda (auto: cuda when present); default cpu")
    rep.add_argument("--compile", action="store_true",
                     help="apply torch.compile to the training forward")
    rep.add_argument("--restart", action="store_true",
                     help="delete the selected studies' runs (of this mode) and redo them")
    rep.add_argument("--allow-stale", action="store_true",
                     help="reuse finished runs of other code (source, torch, numpy) instead "
                          "of rerunning their study; the report marks it stale")
    rep.add_argument("--check", metavar="STUDY",
                     help="rerun STUDY from scratch in a temporary folder and compare every "
                          "per-seed value with docs/reproduction/STUDY/runs.json exactly "
                          "(exit 1 on a mismatch); --quick: its quick protocol")
    rep.add_argument("--list", action="store_true", help="list the studies and exit")
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_executor_options(rep)

    data = sub.add_parser("data", help="data sources: where each is looked for, download them")
    data.set_defaults(data_command="list", root=None)
    data_sub = data.add_subparsers(dest="data_command")
    data_list = data_sub.add_parser("list", help="every source: present or not, where it is "
                                    "looked for, what a run uses now (the default)")
    fetch = data_sub.add_parser("fetch", help="download public sources, verifying checksums")
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="source names (see `flexmtl data`), 'uci' for the ten UCI sets, "
                            "or 'all' (every source with a published checksum)")
    fetch.add_argument("--force", action="store_true",
                       help="download again even when the files are present")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="also download files with no published checksum (their SHA-256 "
                            "is printed)")
    fetch.add_argument("--no-progress", action="store_true", help="hide progress bars")
    for cmd in (data_list, fetch):
        cmd.add_argument("--root", help="data root (default: $FLEXMTL_DATA, else "
                                        "~/.flexmtl/data)")
    return p


def _add_run_choice(command: argparse.ArgumentParser) -> None:
    """RUN and the options that pick one training run of an experiment folder."""
    command.add_argument("run", metavar="RUN", help="a training run's folder (METHOD/seed-S) "
                                                    "or an experiment folder")
    command.add_argument("--method", help="the method, in an experiment folder")
    command.add_argument("--seed", type=int, help="the seed (default: the first)")
    command.add_argument("--point", metavar="KEY=VALUE", help="the sweep value, in a swept "
                                                              "experiment folder")


def _load(args: argparse.Namespace):
    from flexmtl.use import load_run

    return load_run(args.run, method=args.method, seed=args.seed, point=args.point)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from flexmtl.use.run import load_arrays

    loaded = _load(args)
    data = {}
    for item in args.data:
        task, sep, file = item.partition("=")
        if not sep or not task or not file:
            raise FlexMTLError(f"--data takes TASK=FILE, got {item!r}")
        data[task] = load_arrays(file)
    metrics = loaded.evaluate(args.split, data or None)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    split = args.split or loaded.default_split()
    where = ", ".join(f"{t} from {f}" for t, f in (i.split("=", 1) for i in args.data)) \
        or f"the run's {split} split"
    print(f"{loaded!r}\n  on {where}:")
    print(f"  {'task':>20}  {'loss':>10}  {'accuracy':>9}")
    for name, m in metrics["tasks"].items():
        print(f"  {name:>20}  {m['loss']:10.4f}  {m['accuracy']:9.4f}")
    print(f"  {'(sum / mean)':>20}  {metrics['loss']:10.4f}  {metrics['accuracy']:9.4f}")


def _cmd_export(args: argparse.Namespace) -> None:
    import torch

    from flexmtl.use import export_task
    from flexmtl.use.export import parameter_bytes

    loaded = _load(args)
    task = loaded.tasks[loaded.task_index(args.task)]
    split = next(s for s in (task.val, task.test, task.train) if s is not None)
    path = export_task(loaded, task.name, args.out, split.x[:8], prune=args.prune)
    # the size of what was saved, read back (not the task's path built a second time)
    kept = parameter_bytes(torch.export.load(str(path)).module())
    full = parameter_bytes(loaded.model)
    print(f"{path}: task {task.name!r} of {loaded!r}; parameters {kept:,} bytes "
          f"({kept / full:.0%} of the full model's {full:,}); load it with "
          f"torch.export.load({str(path)!r}).module()")


def _add_executor_options(command: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--executor`` and ``--address``: where a study's runs train
    (:mod:`flexmtl.executors`)."""
    command.add_argument("--jobs", type=int, metavar="N",
                         help="train N runs at once, each in a worker process (default: "
                              "$FLEXMTL_JOBS, else every usable CPU core; with --executor "
                              "ray the cluster's CPUs); 1: one after the other in this "
                              "process")
    command.add_argument("--executor", metavar="{local,ray}",
                         help="local: worker processes on this machine (the default); ray: "
                              "Ray tasks, on the cluster at --address (needs "
                              "pip install 'flexmtl[ray]')")
    command.add_argument("--no-batch-runs", action="store_true",
                         help="train every run by itself; by default the seeds of one method "
                              "and sweep point train as one batched model where the model "
                              "allows it (a batched run's result is the same in any batch, "
                              "and equals the run alone up to float rounding)")
    command.add_argument("--address", metavar="HOST:PORT",
                         help="with --executor ray: the running Ray cluster to use (`ray "
                              "start --head` prints it); its nodes must share the run "
                              "folder's file system. Default: as ray.init() finds one, else "
                              "a local instance")


def _executor_options(args: argparse.Namespace) -> dict:
    """The executor keywords of ``run_experiment`` given on the command line."""
    return {"jobs": args.jobs, "executor": args.executor or "local", "address": args.address,
            "batch_runs": not args.no_batch_runs}


def _given_executor_flags(args: argparse.Namespace) -> list[str]:
    return [flag for flag, value in (("--jobs", args.jobs), ("--executor", args.executor),
                                     ("--address", args.address)) if value is not None]


def _device(name: str) -> str:
    """``--device``: cpu, cuda, cuda:N or auto (:func:`~flexmtl.training.distributed.
    check_device_name`)."""
    from flexmtl.training.distributed import check_device_name

    try:
        return check_device_name(name)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_list() -> None:
    from flexmtl.data import data_status
    from flexmtl.experiments import EXPERIMENTS

    print("Experiments (flexmtl run NAME):")
    for name in EXPERIMENTS.names():
        exp = EXPERIMENTS.get(name)
        print(f"  {name:<14} {exp.summary}  [{exp.paper}]")
        default = exp.default_methods or exp.method_names()
        print(f"  {'':<14} methods: {', '.join(exp.method_names())} "
              f"(default: {', '.join(default)})")
        keys = ", ".join(f"{k}={v!r}" for k, v in exp.defaults.items())
        print(f"  {'':<14} config: {keys}")
        if exp.sweep:
            print(f"  {'':<14} default sweep: {exp.sweep[0]} over {list(exp.sweep[1])}")
    print("\nData:")
    _print_data_status(data_status())


def _print_data_status(rows: list[SourceStatus]) -> None:
    from flexmtl.data.fetch import fetch_command
    from flexmtl.data.paths import status_label

    for row in rows:
        using = row["using"] or "nothing (a run would fail)"
        exact = "" if row["exact"] or not row["using"] else " [not the paper's data]"
        indent = " " * 26
        print(f"  {row['name']:<14} {status_label(row):<8} looks in {row['looks_in']}")
        print(f"{indent}using: {using}{exact}")
        if row["to_get"]:
            command = fetch_command(row["name"])
            if command:
                print(f"{indent}to get it: {command}")
            print(f"{indent}{'or by hand' if command else 'to get it (by hand)'}: "
                  f"{row['to_get']}")


def _cmd_data(args: argparse.Namespace) -> None:
    from flexmtl.data import data_root, data_status
    from flexmtl.data.fetch import fetch

    if args.data_command == "fetch":
        fetch(args.names, args.root, force=args.force, allow_unverified=args.allow_unverified,
              progress=not args.no_progress)
        return
    print(f"Data sources under {data_root(args.root)} (set FLEXMTL_DATA or --root to move it):")
    _print_data_status(data_status(args.root))


def _cmd_run(args: argparse.Namespace) -> None:
    from flexmtl.runner import run_experiment

    sweep: tuple[str, list[str]] | bool | None = True
    if args.no_sweep:
        sweep = None
    elif args.sweep:
        key, sep, values = args.sweep.partition("=")
        if not sep or not values:
            raise FlexMTLError(f"--sweep expects KEY=V1,V2,..., got {args.sweep!r}")
        sweep = (key, values.split(","))
    if args.methods is not None and not all(m.strip() for m in args.methods.split(",")):
        raise ConfigError(f"--methods {args.methods!r} holds no method name or an empty one; "
                          "give comma-separated names (see `flexmtl list`), or leave it out "
                          "for the experiment's default methods")
    overrides = list(args.overrides)
    from flexmtl.sharing.methods import METHODS

    loose = [item for item in overrides if "=" not in item and item in METHODS.names()]
    if loose:  # `--methods soft parallel`: the second name lands among the overrides
        listed = ",".join([*(args.methods or "").split(","), *loose]).strip(",")
        raise ConfigError(f"{', '.join(loose)} looks like a method name given after --methods "
                          f"with a space; methods are comma-separated: --methods {listed}")
    given = {}  # key -> the key=value override that sets it
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep:
            given[key.strip()] = item.strip()
    for key, flag, value in (("steps", "--steps", args.steps), ("device", "--device",
                                                                 args.device),
                             ("compile", "--compile", args.compile or None),
                             ("tensorboard", "--tensorboard", args.tensorboard or None)):
        if value is not None and key in given:
            option = flag if isinstance(value, bool) else f"{flag} {value}"
            raise ConfigError(f"{key} given twice ({given[key]} and {option}); give it once")
    if args.device:
        overrides.append(f"device={args.device}")
    if args.compile:
        overrides.append("compile=true")
    if args.tensorboard:
        overrides.append("tensorboard=true")
    run_experiment(
        args.experiment,
        methods=[m.strip() for m in args.methods.split(",")] if args.methods else None,
        seeds=args.seeds,
        steps=args.steps,
        out_dir=args.out,
        config_file=args.config,
        overrides=overrides,
        sweep=sweep,
        progress=not args.no_progress,
        plots=not args.no_plots,
        floors=not args.no_floors,
        restart=args.restart,
        **_executor_options(args),
    )


def _cmd_plot(run_dir: str) -> None:
    from pathlib import Path

    if not Path(run_dir).is_dir():
        raise FlexMTLError(f"run folder {run_dir} does not exist")
    try:
        from flexmtl.analysis.plots import plot_run
    except ImportError as exc:
        raise FlexMTLError("plotting needs matplotlib: pip install 'flexmtl[plots]'") from exc
    from flexmtl.experiments.layer_visualization import plot_layer_vis  # needs its model

    paths = plot_run(run_dir) + plot_layer_vis(run_dir)
    if not paths:
        print(f"nothing to plot in {run_dir}")
    for path in paths:
        print(path)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from flexmtl.reproduction import reproduce, write_report
    from flexmtl.reproduction.report import check, select, unavailable

    if args.list:
        for study in select(args.only):
            why = unavailable(study)
            print(f"  {study.key:<12} {study.figure:<20} {study.claim}")
            print(f"  {'':<12} {'':<20} experiment {study.experiment}"
                  + (f"; not runnable here: {why}" if why else ""))
        return 0
    if args.report_only:
        if args.only or args.quick or args.restart or args.check or _given_executor_flags(args):
            raise FlexMTLError("--report-only rewrites the whole report from every finished "
                               "run without training; it takes neither --only, --quick, "
                               "--restart, --check, --jobs, --executor nor --address")
        write_report(args.out, args.doc)
        return 0
    runtime = {"device": args.device} if args.device else {}
    if args.compile:
        runtime["compile"] = True
    if args.check:
        if args.only or args.restart or args.allow_stale or _given_executor_flags(args):
            raise FlexMTLError("--check reruns one study into a temporary folder, one run "
                               "after the other; it takes neither --only, --restart, "
                               "--allow-stale, --jobs, --executor nor --address")
        mismatches = check(args.check, quick=args.quick, doc=args.doc, runtime=runtime,
                           progress=not args.no_progress)
        return 1 if mismatches else 0
    reproduce(args.only, quick=args.quick, out=args.out, doc=args.doc,
              progress=not args.no_progress, runtime=runtime, restart=args.restart,
              allow_stale=args.allow_stale, **_executor_options(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse leaves key=value overrides given after an option (`run uci --seeds 1
        # width=8`) unparsed; they are overrides all the same
        if args.command != "run" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from flexmtl.training import distributed

    previous = _catch_sigterm()
    rc = 0
    try:
        if args.command == "list":
            _cmd_list()
        elif args.command == "run":
            _cmd_run(args)
        elif args.command == "plot":
            _cmd_plot(args.run_dir)
        elif args.command == "reproduce":
            rc = _cmd_reproduce(args)
        elif args.command == "evaluate":
            _cmd_evaluate(args)
        elif args.command == "export":
            _cmd_export(args)
        elif args.command == "data":
            _cmd_data(args)
        elif args.command == "pack":
            from flexmtl.use.archive import pack_runs
            pack_runs(args.run_dir, args.archive, finished_only=args.finished_only,
                      without_train_logs=args.without_train_logs)
        elif args.command == "unpack":
            from flexmtl.use.archive import unpack_runs
            unpack_runs(args.archive, args.run_dir)
        sys.stdout.flush()  # a reader that left surfaces here, not at interpreter exit
        # leave the process group (if torchrun started one) together, before interpreter
        # shutdown, where gloo's teardown can race and abort the process
        distributed.cleanup(wait=True)
    except FlexMTLError as exc:
        if isinstance(exc, RunFailedError) and not exc.expected:  # a bug: show where
            print(exc.traceback, file=sys.stderr, end="")
        print(f"flexmtl: error{_rank()}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout went away (`flexmtl data | head`): stop quietly, as Unix tools
        # do (Python's recipe: https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        _stdout_to_devnull()
        return 141
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder belongs
        print(f"flexmtl: error{_rank()}: {_os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nflexmtl: interrupted; rerun the same command to resume from the last "
              "checkpoint", file=sys.stderr)
        return 130
    except Terminated:
        print("flexmtl: stopped by SIGTERM; rerun the same command to resume", file=sys.stderr)
        return 143
    finally:
        distributed.cleanup()  # after an error: leave without waiting for the other ranks
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rc


class Terminated(BaseException):
    """Raised by SIGTERM while :func:`main` runs, so that ``finally`` blocks run as for
    Ctrl-C: the run folder's lock is released, logs are closed, a torn write is cleaned
    up. A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` does
    not swallow it."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated


def _catch_sigterm() -> signal.Handlers | Callable[..., object] | int | None:
    """Make SIGTERM raise :class:`Terminated` (in the main thread only, where Python runs
    signal handlers); the handler it replaces, or None where none was installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    return signal.SIG_DFL if previous is None else previous


def _rank() -> str:
    """`` (rank R)`` under torchrun with several processes."""
    from flexmtl.training import distributed

    return f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""


def _os_error_message(exc: OSError) -> str:
    """One line for a disk or OS error: the file it concerns and the system's reason."""
    names = [os.fsdecode(n) if isinstance(n, (str, bytes, os.PathLike)) else str(n)
             for n in (exc.filename, exc.filename2) if n is not None]
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and names:
        path = Path(names[0])
        blocker = next((p for p in (path, *path.parents) if p.is_file()), None)
        if blocker is not None:  # e.g. --out naming a file
            return f"{blocker} is a file where a folder is needed"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at devnull, so that the interpreter's final flush of
    what is still buffered does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. under pytest)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
