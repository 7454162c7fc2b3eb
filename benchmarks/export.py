"""What exporting one task's path gains: size and inference speed (flexmtl.use.export).

Each configuration trains a short run of a flexmtl experiment (in a temporary folder), loads
its selected model (``flexmtl.load_run``) and, for every task, compares

* the full multi-task model, ``model(x, task)`` (evaluation mode, no gradients), with
* the exported program of that task (``flexmtl.export_task``: ``torch.export``, reloaded
  with ``torch.export.load``), unpruned and, for soft ordering, with branches of scale at
  most ``--prune`` dropped.

Size: the bytes of the parameters and buffers each one holds, and the file size of the
saved program against the full model's state dict saved with ``torch.save``. Speed:
forward passes on one batch of inputs, the implementations alternating in blocks in this
one process (the first passes of every block not timed); the speed-up is the median of the
blocks' paired ratios. The 1-minute load average is recorded per configuration: the
machine is shared. Outputs of every exported program are checked against the model's.

Usage::

    python benchmarks/export.py                    # results in benchmarks/results/export-*.md/.json
    python benchmarks/export.py --only planted-orders-soft --blocks 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import flexmtl as fm
from flexmtl.runner import run_experiment
from flexmtl.use.export import parameter_bytes, task_module

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Config:
    name: str
    experiment: str
    method: str
    overrides: dict = field(default_factory=dict)
    note: str = ""


CONFIGS = (
    Config("planted-orders-soft", "planted-orders", "soft",
           {"blocks": "learned", "steps": 1500},
           "soft ordering at the library's default scale rate (its scales end nearly hard)"),
    Config("planted-orders-soft-paper-rate", "planted-orders", "soft",
           {"blocks": "learned", "steps": 1500, "scale_lr_multiplier": 1.0},
           "soft ordering at the paper's scale rate (its scales stay near uniform)"),
    Config("synthetic-pairs-gumbel", "synthetic-pairs", "gumbel", {"steps": 1500},
           "Gumbel-Matrix, 4 components of 3 dense layers (Fig. 7's network)"),
    Config("planted-groups-gumbel", "planted-groups", "gumbel", {"steps": 1500},
           "Gumbel-Matrix, two routed dense layers"),
)


def _time(fn, x, passes: int) -> float:
    """Seconds per forward pass, over ``passes`` passes."""
    start = time.perf_counter()
    for _ in range(passes):
        fn(x)
    return (time.perf_counter() - start) / passes


def measure(config: Config, batch: int, blocks: int, passes: int, prune: float,
            folder: Path) -> list[dict]:
    load = os.getloadavg()[0]
    out = folder / config.name
    run_experiment(config.experiment, methods=[config.method], seeds=1, out_dir=out,
                   overrides=config.overrides, sweep=False, progress=False, plots=False,
                   log=lambda s: None)
    with torch.no_grad():
        return _measure_loaded(config, fm.load_run(out, method=config.method), batch, blocks,
                               passes, prune, folder, load)


def _measure_loaded(config: Config, loaded, batch: int, blocks: int, passes: int,
                    prune: float, folder: Path, load: float) -> list[dict]:
    model = loaded.model
    full_file = folder / f"{config.name}.pt"
    torch.save(model.state_dict(), full_file)
    rows = []
    prunes = [0.0] + ([prune] if config.method == "soft" else [])
    for t, task in enumerate(loaded.tasks):
        split = task.test if task.test is not None else task.val
        x = split.x[:batch]
        if len(x) < batch:  # repeat rows up to the batch size
            x = x.repeat((batch + len(x) - 1) // len(x), *(1,) * (x.ndim - 1))[:batch]
        for p in prunes:
            path = fm.export_task(loaded, task.name, folder / f"{config.name}-{t}-{p}.pt2",
                                  x[:8], prune=p)
            program = torch.export.load(str(path)).module()
            diff = float((program(x) - model(x, t)).abs().max())
            ratios, full_s, export_s = [], [], []
            for _ in range(blocks):  # alternate, so that load changes hit both alike
                for fn in (lambda v: model(v, t), program):
                    fn(x)  # warm-up pass
                a = _time(lambda v: model(v, t), x, passes)
                b = _time(program, x, passes)
                full_s.append(a)
                export_s.append(b)
                ratios.append(a / b)
            rows.append({
                "config": config.name, "note": config.note, "task": task.name, "prune": p,
                "params_full": parameter_bytes(model),
                "params_task": parameter_bytes(task_module(loaded, t, prune=p)),
                "file_full": full_file.stat().st_size, "file_task": path.stat().st_size,
                "ms_full": 1e3 * statistics.median(full_s),
                "ms_task": 1e3 * statistics.median(export_s),
                "speedup": statistics.median(ratios), "max_abs_diff": diff,
                "batch": batch, "load_1min": load,
            })
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Exporting one task's path: size and inference speed",
        "",
        f"Measured by `python benchmarks/export.py` on {meta['machine']} ({meta['cores']} "
        f"cores, torch {meta['torch']}, {meta['threads']} thread(s)), {meta['date']}. "
        f"Batch of {meta['batch']} inputs; speed-up: median over {meta['blocks']} "
        "alternating blocks of the full model's time per pass over the exported program's; "
        "load: the 1-minute load average when the configuration started. Size: parameter "
        "bytes (and the saved file against the full model's state dict). Max diff: the "
        "largest absolute difference of the exported program's outputs from the model's "
        "(0 up to rounding unless branches were pruned).",
        "",
        "| config | task | prune | params task / full | file task / full | ms full | "
        "ms task | speed-up | max diff | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["params_task"] / r["params_full"]
        lines.append(
            f"| {r['config']} | {r['task']} | {r['prune']:g} | "
            f"{r['params_task']:,} / {r['params_full']:,} ({share:.0%})"
            f" | {r['file_task']:,} / {r['file_full']:,} | {r['ms_full']:.3f} | "
            f"{r['ms_task']:.3f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.2g} | "
            f"{r['load_1min']:.2f} |")
    notes = sorted({(r["config"], r["note"]) for r in rows})
    lines += ["", *[f"- {name}: {note}" for name, note in notes], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="configuration names")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--prune", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "export-cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [c for c in CONFIGS if not args.only or c.name in args.only]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in chosen:
            rows += measure(config, args.batch, args.blocks, args.passes, args.prune, Path(tmp))
            print(f"{config.name}: done", flush=True)
    meta = {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": args.threads, "batch": args.batch, "blocks": args.blocks,
            "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(render(rows, meta))
    print(render(rows, meta))


if __name__ == "__main__":
    main()
