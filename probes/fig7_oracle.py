"""Why does Gumbel-Matrix not beat no sharing on Fig. 7? A probe with the right allocation given.

Appendix A3 of the Gumbel-Matrix paper trains four synthetic regression tasks -- two pairs,
related within a pair, unrelated across -- on one routed layer of four components and no task
heads, and shows Gumbel-Matrix ending below no sharing. Our studies (gm-fig7 and its
readings) find it above no sharing. This probe separates the two things Gumbel-Matrix must do
there: *find* an allocation, and *profit* from it. It trains the experiment's own tasks,
network and training (``flexmtl run synthetic-pairs``: the same config, seeds and data) with
allocations fixed before training:

* ``no-sharing`` -- task i uses component i (the experiment's baseline);
* ``pairs-share-two`` -- each pair shares two components of its own, the pairs none (what
  the paper's Fig. 7 says Gumbel-Matrix converges to), outputs averaged as Gumbel-Matrix
  averages its active components;
* ``pairs-share-one`` -- each pair shares one component, two stay unused: the parameters per
  task of no sharing, with the related task's data added;
* ``pairs-share-two-summed`` -- as pairs-share-two, the two outputs summed (shared bottom's
  combine) instead of averaged: does averaging cost, or sharing two components?
* ``random-then-share-one`` -- what Gumbel-Matrix goes through before its allocation is fixed
  (gm-fig7 finds it fixed after a median of 300 of the 3000 steps): the first ``--warmup``
  steps with every connection sampled at probability 0.5 per batch (Gumbel-Matrix's start,
  its logits frozen), then pairs-share-one for the rest, the weights carried over (the
  optimiser restarts). Does that early phase cost the gain of the right allocation?
* ``share-one-shorter`` -- pairs-share-one trained only the steps left after ``--warmup``: the
  control for random-then-share-one (is it the random phase that costs, or the fewer steps
  under the right allocation?).

If a given right allocation beats no sharing, the architecture can profit from sharing here
and what fails is finding it; if it does not, no allocation Gumbel-Matrix could learn would
beat no sharing in this setup, whatever the reading. Results go to
``probes/results/fig7-oracle.md`` (``--out``); each variant's test loss is the sum over the
four tasks, per seed, and the paired difference to no sharing with its 95% interval::

    python probes/fig7_oracle.py --seeds 5
    python probes/fig7_oracle.py --seeds 5 --variants pairs-share-two-summed \\
        --out probes/results/fig7-oracle-summed.md
    python probes/fig7_oracle.py --seeds 5 --variants pairs-share-one random-then-share-one \\
        share-one-shorter --warmup 300 --out probes/results/fig7-oracle-warmup300.md
    python probes/fig7_oracle.py --seeds 5 --variants pairs-share-one random-then-share-one \\
        share-one-shorter --warmup 1000 --out probes/results/fig7-oracle-warmup1000.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from flexmtl.analysis.stats import summarize
from flexmtl.experiments import get_experiment
from flexmtl.sharing import RoutedLayer
from flexmtl.sharing.allocation import make_allocation
from flexmtl.training import Trainer, seed_everything

HERE = Path(__file__).resolve().parent

TWO = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
ONE = [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
#: variant -> (allocation pattern, how a task combines its components); None: the experiment's
PATTERNS = {
    "no-sharing": None,
    "pairs-share-two": (TWO, "mean"),
    "pairs-share-one": (ONE, "mean"),
    "pairs-share-two-summed": (TWO, "sum"),  # shared bottom's combine, within each pair
    "random-then-share-one": (ONE, "mean"),  # after --warmup steps of random allocations
    "share-one-shorter": (ONE, "mean"),  # its control: the --warmup steps not trained at all
}
WARMUP = {"random-then-share-one", "share-one-shorter"}


def train(variant: str, seed: int, warmup: int = 300) -> float:
    """The combined test loss of one run of ``variant`` (the experiment's seed ``seed``)."""
    exp = get_experiment("synthetic-pairs")
    cfg = exp.resolve_config(overrides={"threads": 1})
    seed_everything(seed)
    tasks = exp.build_tasks(cfg, seed)
    seed_everything(seed)
    if variant == "share-one-shorter":
        model = exp.build_model("no-sharing", tasks, cfg, seed)
        cfg = exp.resolve_config(overrides={"threads": 1, "steps": cfg["steps"] - warmup})
    elif variant == "random-then-share-one":  # Gumbel-Matrix's model, logits frozen at 0.5
        model = exp.build_model("gumbel", tasks, cfg, seed)
        for layer in model.modules():
            if isinstance(layer, RoutedLayer):
                layer.allocation.requires_grad_(False)
        first = exp.resolve_config(overrides={"threads": 1, "steps": warmup,
                                              "eval_every": warmup})
        Trainer(model, tasks, exp.train_config(first, seed, False)).fit()
        cfg = exp.resolve_config(overrides={"threads": 1, "steps": cfg["steps"] - warmup})
    else:
        model = exp.build_model("no-sharing", tasks, cfg, seed)
    given = PATTERNS[variant]
    if given is not None:
        pattern, combine = given
        for layer in model.modules():
            if isinstance(layer, RoutedLayer):
                layer.allocation = make_allocation(torch.tensor(pattern, dtype=torch.float32),
                                                   4, 4)
                layer.combine = combine
    result = Trainer(model, tasks, exp.train_config(cfg, seed, False)).fit()
    return float(result.test["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=list(PATTERNS), default=list(PATTERNS),
                        help="no-sharing always runs (the paired baseline)")
    parser.add_argument("--warmup", type=int, default=300,
                        help="random-then-share-one: steps of random allocations first")
    parser.add_argument("--out", default=str(HERE / "results" / "fig7-oracle.md"))
    args = parser.parse_args()
    variants = ["no-sharing", *(v for v in args.variants if v != "no-sharing")]
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    start = time.time()
    losses = {v: [train(v, s, args.warmup) for s in range(args.seeds)] for v in variants}
    base = losses["no-sharing"]
    lines = [
        "# Fig. 7 with the allocation given: can sharing beat no sharing here at all?",
        "",
        f"`python probes/fig7_oracle.py --seeds {args.seeds} --variants "
        f"{' '.join(variants)}"
        + (f" --warmup {args.warmup}" if WARMUP & set(variants) else "")
        + f"` on {platform.machine()}, torch "
        f"{torch.__version__}, one thread, {time.strftime('%Y-%m-%d')}; load average "
        f"{load:.2f} at the start; {time.time() - start:.0f} s. The experiment's tasks, "
        "network and training (`flexmtl run synthetic-pairs` defaults; seeds 0.."
        f"{args.seeds - 1}, the same data as the studies' seeds), allocations fixed before "
        "training"
        + (f" (random-then-share-one: after {args.warmup} steps with every connection sampled "
           "at probability 0.5, the weights carried over; share-one-shorter: trained only the "
           f"{get_experiment('synthetic-pairs').defaults['steps'] - args.warmup} steps left)"
           if WARMUP & set(variants) else "")
        + ". Test loss: sum over the four tasks; difference: paired with no sharing, "
        "mean and 95% Student-t interval over seeds (negative: lower than no sharing).",
        "",
        "| allocation | test loss | difference to no sharing | per seed |",
        "|---|---|---|---|",
    ]
    for variant, values in losses.items():
        s = summarize(values)
        d = summarize([a - b for a, b in zip(values, base)])
        diff = "-" if variant == "no-sharing" else f"{d['mean']:+.3f} ± {d['ci95']:.3f}"
        lines.append(f"| {variant} | {s['mean']:.3f} ± {s['ci95']:.3f} | {diff} | "
                     f"{', '.join(f'{v:.3f}' for v in values)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
