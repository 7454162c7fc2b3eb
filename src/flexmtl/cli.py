"""Command line: ``flexmtl list | run | plot``. Thin: it parses, then calls the library.

``torchrun --nproc_per_node=N -m flexmtl run ...`` runs an experiment data-parallel.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flexmtl.errors import FlexMTLError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flexmtl",
        description="Flexible multi-task learning: run the papers' experiments and your own.",
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
    run.add_argument("--config", help="JSON or YAML file of config keys")
    run.add_argument("--sweep", metavar="KEY=V1,V2,...",
                     help="sweep one config key (default: the experiment's own sweep, if any)")
    run.add_argument("--no-sweep", action="store_true", help="run only the configured point")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--no-plots", action="store_true", help="skip plotting at the end")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"),
                     help="train on cpu or cuda (auto: cuda when present); default: the "
                          "config's device key (cpu). Under torchrun each process takes "
                          "the GPU of its LOCAL_RANK")
    run.add_argument("--compile", action="store_true",
                     help="apply torch.compile to the training forward")

    plot = sub.add_parser("plot", help="redraw the plots of a run folder")
    plot.add_argument("run_dir")
    return p


def _cmd_list() -> None:
    from flexmtl.data import data_status
    from flexmtl.experiments import EXPERIMENTS

    print("Experiments (flexmtl run NAME):")
    for name in EXPERIMENTS.names():
        exp = EXPERIMENTS.get(name)
        print(f"  {name:<14} {exp.summary}  [{exp.paper}]")
        default = exp.default_methods or exp.methods
        print(f"  {'':<14} methods: {', '.join(exp.methods)} (default: {', '.join(default)})")
        keys = ", ".join(f"{k}={v!r}" for k, v in exp.defaults.items())
        print(f"  {'':<14} config: {keys}")
        if exp.sweep:
            print(f"  {'':<14} default sweep: {exp.sweep[0]} over {list(exp.sweep[1])}")
    print("\nData:")
    for row in data_status():
        if row["present"]:
            mark = "present"
        elif row["using"]:
            mark = "built-in" if row["exact"] else "stand-in"
        else:
            mark = "missing"
        using = row["using"] or "nothing (a run would fail)"
        exact = "" if row["exact"] or not row["using"] else " [not the paper's data]"
        print(f"  {row['name']:<14} {mark:<8} looks in {row['looks_in']}")
        print(f"  {'':<14} {'':<8} using: {using}{exact}")
        if row["to_get"]:
            print(f"  {'':<14} {'':<8} to get it: {row['to_get']}")


def _cmd_run(args: argparse.Namespace) -> None:
    from flexmtl.runner import run_experiment

    sweep: object = True
    if args.no_sweep:
        sweep = None
    elif args.sweep:
        key, sep, values = args.sweep.partition("=")
        if not sep or not values:
            raise FlexMTLError(f"--sweep expects KEY=V1,V2,..., got {args.sweep!r}")
        sweep = (key, values.split(","))
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.compile:
        overrides.append("compile=true")
    run_experiment(
        args.experiment,
        methods=args.methods.split(",") if args.methods else None,
        seeds=args.seeds,
        steps=args.steps,
        out_dir=args.out,
        config_file=args.config,
        overrides=overrides,
        sweep=sweep,
        progress=not args.no_progress,
        plots=not args.no_plots,
    )


def _cmd_plot(run_dir: str) -> None:
    from pathlib import Path

    if not Path(run_dir).is_dir():
        raise FlexMTLError(f"run folder {run_dir} does not exist")
    try:
        from flexmtl.analysis.plots import plot_run
    except ImportError as exc:
        raise FlexMTLError("plotting needs matplotlib: pip install 'flexmtl[plots]'") from exc
    paths = plot_run(run_dir)
    if not paths:
        print(f"nothing to plot in {run_dir}")
    for path in paths:
        print(path)


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

    try:
        if args.command == "list":
            _cmd_list()
        elif args.command == "run":
            _cmd_run(args)
        elif args.command == "plot":
            _cmd_plot(args.run_dir)
        # leave the process group (if torchrun started one) together, before interpreter
        # shutdown, where gloo's teardown can race and abort the process
        distributed.cleanup(wait=True)
    except FlexMTLError as exc:
        where = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
        print(f"flexmtl: error{where}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nflexmtl: interrupted; rerun the same command to resume from the last "
              "checkpoint", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()  # after an error: leave without waiting for the other ranks
    return 0


if __name__ == "__main__":
    sys.exit(main())
