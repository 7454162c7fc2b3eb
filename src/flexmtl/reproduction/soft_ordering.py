"""Reproduction studies of the soft layer ordering paper (Meyerson & Miikkulainen, ICLR 2018)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from flexmtl.analysis.stats import summarize
from flexmtl.reproduction.studies import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    SOFT_ORDERING,
    Assessment,
    Protocol,
    Study,
    StudyRun,
    capped,
    compare,
    copy_plots,
    data_notes,
    fmt,
    metric,
    metric_or_none,
    points,
    register_study,
    seed_dirs,
    significant,
    snapshots,
    table,
    verdict_of,
)
from flexmtl.run_folder import ExperimentFolder, PlotNames, TrainingRun

ORDERINGS = ("single", "parallel", "permuted", "soft")


# ---------------------------------------------------------------------- Fig. 2


def _assess_fig2(run: StudyRun, half_claim: bool = True) -> Assessment:
    """Fig. 2: permuted ahead of parallel wherever parallel does not fit everything; with
    ``half_claim`` (the linear case) also permuted at n within 0.05 of parallel at n/2."""
    acc = {value: {m: metric(ms, m, "test_accuracy") for m in ("parallel", "permuted")}
           for value, ms in points(run.results)}
    ns = sorted(acc)
    rows = [[str(n), fmt(acc[n]["parallel"]), fmt(acc[n]["permuted"])] for n in ns]
    ours = table(["samples per task n", "parallel: fit accuracy", "permuted: fit accuracy"], rows)
    unsaturated = [n for n in ns if acc[n]["parallel"]["mean"] < 0.99]
    ahead = [n for n in unsaturated if acc[n]["permuted"]["mean"] > acc[n]["parallel"]["mean"]]
    halves = [(n, acc[n]["permuted"]["mean"], acc[n // 2]["parallel"]["mean"])
              for n in ns if n // 2 in acc and n % 2 == 0]
    as_half = [n for n, perm, par_half in halves if perm >= par_half - 0.05]
    claims = [bool(unsaturated) and len(ahead) == len(unsaturated)]
    if half_claim:
        claims.append(bool(halves) and len(as_half) == len(halves))
    reason = (
        f"permuted fits better than parallel at {len(ahead)} of the {len(unsaturated)} sizes "
        f"where parallel is below 0.99; permuted at n fits within 0.05 of (or better than) "
        f"parallel at n/2 for {len(as_half)} of {len(halves)} sizes ("
        + ", ".join(f"n={n}: {perm:.3f} vs {half:.3f}" for n, perm, half in halves) + ")")
    if not half_claim:
        reason += ("; the paper claims the n/2 equivalence for the linear case only, for ReLU "
                   "'a similar advantage', so only the first claim is judged")
    return Assessment(ours, verdict_of(claims), reason,
                      {"accuracy": {str(n): {m: acc[n][m]["mean"] for m in acc[n]} for n in ns}})


def _random_data(run: StudyRun) -> str:
    cfg = run.results.get("config") or {}
    return (f"generated: two tasks of n random binary labels, x ~ U[0,1]^{cfg.get('m', 'm')} "
            "(n per sweep point); the fit of the training samples is measured")


_FIG2_PUBLISHED = (
    "Two tasks of n random binary labels on x ~ U[0,1]^m, two shared affine layers and a "
    "shared output layer. Permuted ordering fits n samples as well as parallel ordering fits "
    "n/2 (the paper's dotted lines); in the linear case permuted loses no accuracy against "
    "the single-task case. Read off the plot, no table of numbers."
)

_FIG2_CLAIMS = {
    "linear": "permuted ordering fits n samples as well as parallel fits n/2",
    "relu": "permuted ordering fits better than parallel wherever parallel does not fit "
            "everything",
}

for key, fig, act, m in (("so-fig2a", "Fig. 2a", "linear", 128),
                         ("so-fig2b", "Fig. 2b", "relu", 16)):
    protocol = dict(activation=act, m=m)
    register_study(Study(
        key=key, paper=SOFT_ORDERING, figure=fig,
        claim=f"random tasks ({act}, m={m}): {_FIG2_CLAIMS[act]}",
        published=_FIG2_PUBLISHED,
        experiment="random-tasks",
        full=Protocol(10, protocol, ("n", (64, 128, 256, 512, 1024)), ("parallel", "permuted"),
                      note="10 seeds (the paper: 'several trials'); 2000 full-batch Adam steps "
                           "(the paper gives no length)"),
        quick=Protocol(3, protocol, ("n", (64, 128, 256, 512, 1024)), ("parallel", "permuted"),
                       note="3 seeds"),
        assess=functools.partial(_assess_fig2, half_claim=act == "linear"),
        figures=copy_plots(PlotNames.SWEEP),
        data=_random_data,
    ))


# ---------------------------------------------------------------------- Fig. 4a


def _assess_fig4a(run: StudyRun) -> Assessment:
    rows, soft_best, rel = [], [], []
    pts = sorted(points(run.results), key=lambda p: p[0])
    for k, methods in pts:
        acc = {m: metric(methods, m, "test_accuracy") for m in ORDERINGS}
        rows.append([str(k)] + [fmt(acc[m]) for m in ORDERINGS])
        best = max(ORDERINGS, key=lambda m: acc[m]["mean"])
        if best == "soft":
            soft_best.append(k)
        rel.append(acc["permuted"]["mean"] - acc["parallel"]["mean"])
    ks = np.array([k for k, _ in pts], dtype=float)
    slope = float(np.polyfit(ks, rel, 1)[0]) if len(ks) > 1 else float("nan")
    # the same slope per seed (seeds paired across task counts), for its interval
    per_seed = np.array([[metric(ms, "permuted", "test_accuracy")["values"][i]
                          - metric(ms, "parallel", "test_accuracy")["values"][i]
                          for _, ms in pts] for i in range(len(run.results["seeds"]))])
    slopes = summarize([float(np.polyfit(ks, r, 1)[0]) for r in per_seed]) if len(ks) > 1 else (
        None)
    last = pts[-1][1]
    _, vs_single = compare("soft", metric(last, "soft", "test_accuracy"), "single",
                           metric(last, "single", "test_accuracy"), lower_is_better=False)
    grows = slopes is not None and significant(slopes) and slopes["mean"] > 0
    claims = [grows, len(soft_best) == len(pts)]
    reason = (
        f"permuted minus parallel accuracy changes by {fmt(slopes, 4)} per added task "
        f"({'significant' if grows else 'not a significant growth'}; the paper: it grows); "
        f"soft ordering has the best mean accuracy at {len(soft_best)} of {len(pts)} "
        f"task counts ({', '.join(map(str, soft_best)) or 'none'}); at {int(ks[-1])} tasks: "
        f"{vs_single}")
    ours = table(["tasks", *(f"{m}: test accuracy" for m in ORDERINGS)], rows)
    return Assessment(ours, verdict_of(claims), reason,
                      {"permuted_minus_parallel_slope": slope, "soft_best_at": soft_best})


def _mnist_data(run: StudyRun) -> str:
    notes = {n.split("; ", 1)[-1] for n in (run.results.get("data") or {}).values()}
    return "; ".join(sorted(notes)) or "-"


_PAIRS_PROTOCOL = {"steps": 5000, "eval_every": 250}
_PAIRS_INVESTIGATION = (
    "A first quick run with 1000 steps (3 seeds; 1, 2, 4, 7, 10 tasks) had soft ordering "
    "last at every task count (0.951-0.960 test accuracy against single-task 0.962-0.972) "
    "and its scales had hardly moved (largest scale per task and depth 0.31-0.34 at 10 "
    "tasks, from 0.25 uniform): each depth still applied close to the average of the four "
    "layers. At 10 tasks, 3 seeds: 5000 steps gave soft 0.964 ± 0.017, single 0.961 ± 0.014, "
    "parallel 0.960 ± 0.008 (largest scale 0.38-0.42); a 10x larger learning rate for the "
    "scales (0.01) at 1000 steps moved them further (0.57-0.63) without helping accuracy "
    "(0.958 ± 0.023). So the training length, not the scales' learning rate, held soft "
    "ordering back, and the protocol uses 5000 steps. With 5000 steps soft ordering is no "
    "longer last but is not first either: it sits within about 0.012 of the best method at every "
    "task count, with intervals that overlap all others. All methods stay within about one "
    "point of each other: with the 5,000-image MNIST subset (about 800 training images per "
    "digit pair, against about 12,000 in full MNIST) and a frozen random encoder the "
    "accuracies sit close to a common ceiling, and the seed-to-seed spread (which digit "
    "pairs are drawn) is as large as the differences between methods.")

register_study(Study(
    key="so-fig4a", paper=SOFT_ORDERING, figure="Fig. 4a",
    claim="MNIST digit pairs: permuted gains on parallel as tasks are added; soft ordering "
          "beats the others for every number of tasks",
    published=("Binary digit1-vs-digit2 tasks, 1 to 10 trained jointly, frozen random ReLU "
               "encoders to 64, 4 core dense ReLU layers of 64, dropout 0.5. The relative "
               "performance of permuted against parallel ordering improves with the number "
               "of tasks; soft ordering outperforms the other methods for all numbers of tasks "
               "(and single-task learning even at 10 tasks). Read off the plot."),
    experiment="mnist-pairs",
    full=Protocol(10, _PAIRS_PROTOCOL, ("num_tasks", tuple(range(1, 11))), ORDERINGS,
                  note="10 seeds; 5000 joint steps of batch 32 per task (the paper gives no "
                       "length; 1000 proved too short, see the investigation); validation = "
                       "10% of each pair's training images"),
    quick=Protocol(3, _PAIRS_PROTOCOL, ("num_tasks", (1, 2, 4, 7, 10)), ORDERINGS,
                   note="3 seeds; 5 of the 10 task counts"),
    assess=_assess_fig4a,
    figures=copy_plots(PlotNames.SWEEP),
    data=_mnist_data,
    investigation=_PAIRS_INVESTIGATION,
))


# ---------------------------------------------------------------------- Fig. 4b-d


def _pair_distance(s: np.ndarray) -> float:
    """Layer-wise distance between the scalings of tasks 0 and 1: mean over depths of the L1
    distance of their scale vectors over layers (Fig. 4b)."""
    return float(np.abs(s[0] - s[1]).sum(axis=0).mean())


def _hardness(s: np.ndarray) -> float:
    """How close the scalings are to a hard order: mean over (task, depth) of the largest
    scale (1 / layers at the start, 1 for a hard order; Fig. 4c)."""
    return float(s.max(axis=1).mean())


def _two_task_soft_runs(run: StudyRun) -> list[Path]:
    return seed_dirs(ExperimentFolder(run.run_dir).method_dir("soft", ("num_tasks", 2)))


def _assess_fig4bcd(run: StudyRun) -> Assessment:
    seeds = _two_task_soft_runs(run)
    if not seeds:
        return Assessment([], NOT_REPRODUCED, "the Fig. 4a runs hold no two-task soft run")
    dist, hard, distinct = [], [], 0
    for seed_dir in seeds:
        snaps = snapshots(seed_dir)
        first, last = snaps[0][1], snaps[-1][1]
        dist.append((_pair_distance(first), _pair_distance(last)))
        hard.append((_hardness(first), _hardness(last)))
        paths = [tuple(int(j) for j in last[t].argmax(axis=0)) for t in range(2)]
        distinct += paths[0] != paths[1]
    d_gain = summarize([b - a for a, b in dist])
    h_gain = summarize([b - a for a, b in hard])
    rows = [
        ["distance between the two tasks' scalings", fmt(summarize([a for a, _ in dist])),
         fmt(summarize([b for _, b in dist])), fmt(d_gain)],
        ["largest scale per (task, depth)", fmt(summarize([a for a, _ in hard])),
         fmt(summarize([b for _, b in hard])), fmt(h_gain)],
    ]
    ours = table(["soft ordering, 2 tasks", "at step 0", "at the end", "change"], rows)
    ours.append("")
    ours.append(f"The two tasks' strongest paths differ in {distinct} of {len(seeds)} seeds.")
    # "towards a hard ordering": at least a quarter of the way from uniform (1 / layers,
    # the start) to hard (1), in every seed
    start = hard[0][0]
    way = [(b - a) / (1.0 - start) for a, b in hard]
    claims = [d_gain["mean"] > 0 and all(b > a for a, b in dist),
              all(w >= 0.25 for w in way),
              distinct > 0]
    reason = (f"distance grows in {sum(b > a for a, b in dist)} of {len(seeds)} seeds; the "
              f"largest scale moves {100 * min(way):.0f}-{100 * max(way):.0f}% of the way from "
              f"uniform ({start:.2f}) to a hard order (1.0), the criterion is 25%; distinct "
              f"strongest paths in {distinct} of {len(seeds)} seeds")
    return Assessment(ours, verdict_of(claims), reason,
                      {"distance_gain": d_gain["mean"], "hardness_gain": h_gain["mean"],
                       "hardness_end": float(np.mean([b for _, b in hard])),
                       "distinct_orders": distinct})


def _figures_fig4bcd(run: StudyRun, dest: Path) -> list[Path]:
    from flexmtl.analysis.plots import plot_scale_trajectories, plot_soft_order

    seeds = _two_task_soft_runs(run)
    if not seeds:
        return []
    snaps = snapshots(seeds[0])
    step, final = snaps[-1]
    return [
        plot_scale_trajectories(snaps, dest / PlotNames.scale_trajectories("soft"),
                                ["task 0", "task 1"]),
        plot_soft_order(final, dest / PlotNames.soft_order("soft"), ["task 0", "task 1"],
                        title=f"learned soft order, 2 MNIST pair tasks, {seeds[0].name}, step "
                              f"{step}; red: strongest path"),
    ]


register_study(Study(
    key="so-fig4bcd", paper=SOFT_ORDERING, figure="Fig. 4b-d",
    claim="two-task soft ordering: the tasks' scalings diverge, move towards a hard order, "
          "and each task learns its own order",
    published=("For a representative two-task run: (b) the layer-wise distance between the "
               "tasks' scalings increases by iteration; (c) the scalings move towards a hard "
               "ordering; (d) a distinct soft order is learned for each task. One run shown, "
               "no numbers."),
    experiment="mnist-pairs",
    runs_with="so-fig4a",
    assess=_assess_fig4bcd,
    figures=_figures_fig4bcd,
    data=_mnist_data,
))


# ---------------------------------------------------------------------- Fig. 5b


def _assess_fig5b(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    val = {m: metric(methods, m, "val_loss") for m in ORDERINGS}
    test = {m: metric(methods, m, "test_accuracy") for m in ORDERINGS}
    rows = [[m, fmt(val[m]), fmt(test[m])] for m in ORDERINGS]
    ours = table(["method", "lowest combined validation loss", "test accuracy (mean of tasks)"],
                 rows)
    results = {m: compare("soft", val["soft"], m, val[m], lower_is_better=True)
               for m in ORDERINGS if m != "soft"}
    soft_wins = all(r[0] > 0 for r in results.values())
    soft_lowest = all(val["soft"]["mean"] < val[m]["mean"] for m in results)
    fixed = [compare(m, val[m], "single", val["single"], True)[1] for m in ("parallel", "permuted")]
    exact = all(t.get("exact", True) for t in _tasks(run))
    verdict = REPRODUCED if soft_wins else PARTLY if soft_lowest else NOT_REPRODUCED
    reason = "; ".join(r[1] for r in results.values()) + "; " + "; ".join(fixed)
    if not exact:
        reason += "; some of the ten sets are stand-ins, so at most partly"
    return Assessment(ours, capped(verdict, exact), reason,
                      {"val_loss": {m: val[m]["mean"] for m in ORDERINGS}})


def _tasks(run: StudyRun) -> list[dict]:
    """The tasks (names, notes, data info) recorded by the first finished soft run."""
    seeds = seed_dirs(ExperimentFolder(run.run_dir).method_dir("soft"))
    if not seeds:
        return []
    return (TrainingRun(seeds[0]).read_result() or {}).get("tasks") or []


def _uci_data(run: StudyRun) -> str:
    parts = []
    for t in _tasks(run):
        if t.get("exact"):
            parts.append(f"{t['name']} (exact)")
            continue
        # the loader's note without the machine's paths and the "not found" explanation
        note = re.sub(r"/\S*/([^/\s]+)", r"\1", t.get("note", "")).split(", because")[0]
        note = note.split(" because")[0].removeprefix("stand-in: ")
        parts.append(f"{t['name']} ({'STAND-IN: ' if t.get('stand_in_for') else ''}{note})")
    return "; ".join(parts) or data_notes(run)


register_study(Study(
    key="so-fig5b", paper=SOFT_ORDERING, figure="Fig. 5b",
    claim="ten UCI tasks: soft ordering decisively lowers the combined validation loss; "
          "parallel and permuted only marginally beat single-task",
    published=("Ten UCI classification sets trained jointly (learned dense ReLU encoders to "
               "32, 4 core dense ReLU layers of 32, softmax heads, dropout rate 0.8). Combined "
               "validation loss over iterations: parallel and permuted marginally below "
               "single-task, soft ordering decisively below all. Read off the plot."),
    experiment="uci",
    full=Protocol(10, {}, None, ORDERINGS,
                  note="10 seeds; 1500 joint steps, batch 32 (the paper gives no length); a "
                       "test split is held out first, then the fixed 80/20 train/validation "
                       "split"),
    quick=Protocol(3, {}, None, ORDERINGS, note="3 seeds"),
    assess=_assess_fig5b,
    figures=copy_plots(PlotNames.LEARNING_CURVES),
    data=_uci_data,
    investigation=(
        "The combined validation loss of every method reaches its minimum after ~300-500 "
        "steps and then rises: dropout rate 0.8 is read in Keras semantics (80% of units "
        "dropped), and the smallest sets (labor stand-in, 57 rows; iris, 150) become "
        "over-confident. The comparison therefore uses each run's lowest validation loss (the "
        "selected checkpoint). With dropout 0.2 (measured earlier, 3 seeds) all four methods "
        "reach ~0.80 test accuracy with no clear winner. The five absent sets (australian, "
        "ecoli, heart, hepatitis, yeast) and the 24-feature German file are not on this "
        "machine: `flexmtl data fetch uci --allow-unverified` (six of the files have no "
        "published checksum) puts the originals where the loader looks, and then `flexmtl "
        "reproduce --only so-fig5b` runs on the paper's ten sets."),
))


# ---------------------------------------------------------------------- Sec. 5, Table 1


def _assess_table1(run: StudyRun) -> Assessment:
    entry = run.results["methods"]
    ms = entry[next(iter(entry))]["metrics"]
    depths = sorted(k for k in ms if k.startswith("effect_depth"))
    ours = table(["depth d", "mean |pixel change| as s[t, l, d] goes 0 -> 1 (over tasks t "
                  "and layers l)"],
                 [[k.removeprefix("effect_depth"), fmt(ms[k], 4)] for k in depths])
    trend, same, other = ms["depth_trend"], ms["primitive_similarity"], ms[
        "other_layer_similarity"]
    left = next((ms[k] for k in ms if k.startswith("left_share_layer")), None)
    shapes = sorted(k for k in ms if k.startswith("shape_change_depth"))
    last_shape = ms[shapes[-1]] if shapes else None
    ours += ["", f"Rank correlation of depth and effect size (over tasks x layers; -1 = always "
                 f"shrinks with depth): {fmt(trend)}; strictly decreasing in "
                 f"{fmt(ms['decreasing_fraction'], 2, 100.0)}% of (task, layer).",
             f"Correlation of one layer's change images across (task, depth) contexts: "
             f"{fmt(same)}, against {fmt(other)} between different layers.",
             f"Share of the brightness layer 1 adds left of the digit's centre: {fmt(left, 2)}, "
             f"against {fmt(ms.get('left_share_digit'), 2)} for the digits' own ink.",
             "Change of shape (1 - correlation of the images with the scale at 0 and at 1, "
             "blind to a global brightness gain) by depth: "
             + ", ".join(fmt(ms[k], 3) for k in shapes) + "."]
    shrinks = trend["mean"] < 0 and (significant(trend) or trend["n"] == 1)
    sign, text = compare("same-layer similarity", same, "different-layer similarity", other,
                         lower_is_better=False)
    if same["n"] == 1:  # one seed: no interval, the sign of the difference decides
        sign = 1 if same["mean"] > other["mean"] else -1
    flat_last = last_shape is not None and last_shape["mean"] < 0.01
    digit = ms.get("left_share_digit")
    left_side = left is not None and digit is not None and left["mean"] > digit["mean"] + 0.05
    claims = [shrinks, sign > 0, flat_last, left_side]
    reason = (f"effect vs depth rank correlation {fmt(trend)} (the paper: the effect decreases "
              f"with depth); {text} (the paper: similar function in each context); shape "
              f"change at the last depth {fmt(last_shape, 4)} (the paper: no observable effect "
              "at depth 4; the criterion is below 0.01); layer 1 adds "
              f"{fmt(left, 2)} of its brightness left of the digit's centre against "
              f"{fmt(digit, 2)} for the digits' own ink (the paper: it expands the left side "
              "of the 4; the criterion is 5 points above the ink). Which layer learns which "
              "primitive can differ between runs, so layer 1 here need not be the paper's "
              "layer 1; the figure shows what ours does")
    return Assessment(ours, verdict_of(claims), reason,
                      {"depth_trend": trend["mean"], "primitive_similarity": same["mean"],
                       "other_layer_similarity": other["mean"]})


register_study(Study(
    key="so-table1", paper=SOFT_ORDERING, figure="Sec. 5, Table 1",
    claim="layer visualisation: a layer has a similar effect (expanding the left side of the "
          "4) in every (task, depth) context, shrinking with depth, to none at depth 4",
    published=("Ten tasks, each one MNIST '4' as (x, y) -> brightness, 4 shared dense ReLU "
               "layers of 100, sigmoid scales, shared linear encoder, global-average-pooling "
               "decoder, MSE, no dropout. Sweeping s[t, l, d] of the first layer for the first "
               "two tasks expands the left side of the 4 in all six contexts, with an effect "
               "that decreases with depth (none is observable at depth 4). Images only."),
    experiment="layer-vis",
    full=Protocol(3, {}, None, ("soft",), note="3 seeds (the paper shows one model); 20,000 "
                  "joint steps of 32 pixels per task (the paper gives no length)"),
    quick=Protocol(1, {"steps": 6000}, None, ("soft",),
                   note="1 seed, 6,000 of the 20,000 steps"),
    assess=_assess_table1,
    figures=copy_plots(PlotNames.layer_sweep(0)),
    data=data_notes,
))


# ---------------------------------------------------------------------- not runnable here


def _assess_celeba(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    acc = {m: metric(methods, m, "test_accuracy") for m in ("parallel", "soft")}
    ours = table(["method", "test accuracy % (mean of 40 attributes)"],
                 [[m, fmt(acc[m], 2, 100.0)] for m in acc])
    sign, text = compare("soft", acc["soft"], "parallel", acc["parallel"], False, 2, 100.0)
    verdict = REPRODUCED if sign > 0 else PARTLY if acc["soft"]["mean"] > acc["parallel"][
        "mean"] else NOT_REPRODUCED
    return Assessment(ours, verdict, text, {m: acc[m]["mean"] for m in acc})


def _assess_omniglot_ordering(run: StudyRun) -> Assessment:
    rows, soft_best = [], 0
    pts = sorted(points(run.results), key=lambda p: (p[0] is None, p[0]))
    for k, methods in pts:
        err = {m: metric_or_none(methods, m, "test_accuracy") for m in ORDERINGS}
        rows.append([str(k)] + [fmt(err[m], 2, 100.0) if err[m] else "-" for m in ORDERINGS])
        found = {m: e for m, e in err.items() if e}
        soft_best += bool(err.get("soft")) and max(found, key=lambda m: found[m]["mean"]) == "soft"
    ours = table(["tasks", *(f"{m}: test accuracy %" for m in ORDERINGS)], rows)
    verdict = REPRODUCED if soft_best == len(pts) else PARTLY if soft_best else NOT_REPRODUCED
    return Assessment(ours, verdict, f"soft ordering best at {soft_best} of {len(pts)} task counts")


register_study(Study(
    key="so-fig6", paper=SOFT_ORDERING, figure="Fig. 6a",
    claim="Omniglot, 50 alphabets as tasks: soft ordering has the lowest error for every "
          "number of tasks",
    published=("Four core conv 3x3 layers (53 filters) + 2x2 max-pool, identity encoder (input "
               "zero-padded to 53 channels), softmax heads, dropout 0.5. Soft ordering "
               "significantly outperforms single-task and both fixed orderings at every number "
               "of tasks; with all 50 tasks it beats the tensor-factorisation methods (Fig. 6b)."),
    experiment="omniglot-ordering",
    full=Protocol(10, {}, ("num_tasks", (10, 20, 30, 40, 50)), ORDERINGS,
                  note="10 seeds; 5000 steps of batch 16 and the 10-50 task counts are "
                       "flexmtl's choice (the paper gives neither)"),
    needs=("omniglot",), gpu=True, fixture_test="tests/test_image_pipelines.py",
    assess=_assess_omniglot_ordering,
    figures=copy_plots(PlotNames.SWEEP),
))

register_study(Study(
    key="so-celeba", paper=SOFT_ORDERING, figure="Sec. 4.4 (CelebA)",
    claim="CelebA, 40 attributes on a shared ResNet-50: soft ordering beats parallel ordering",
    published="Test accuracy (mean of the 40 attributes): parallel 89.79, soft ordering 91.21.",
    experiment="celeba",
    full=Protocol(3, {}, None, ("parallel", "soft"), note="3 seeds (the paper: one run each)"),
    needs=("celeba",), gpu=True, fixture_test="tests/test_image_pipelines.py",
    assess=_assess_celeba,
))
