"""Reproduction studies of the Gumbel-Matrix paper (Maziarz et al., learned allocation)."""

from __future__ import annotations

import numpy as np

from flexmtl.analysis.stats import summarize
from flexmtl.reproduction.studies import (
    GUMBEL_MATRIX,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
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
    points,
    register_study,
    seed_dirs,
    snapshots,
    table,
    verdict_of,
)
from flexmtl.run_folder import ExperimentFolder, PlotNames

# ---------------------------------------------------------------------- Fig. 1


def _assess_fig1(run: StudyRun) -> Assessment:
    rows, signs, texts = [], {}, []
    for rho, methods in sorted(points(run.results), key=lambda p: p[0]):
        sb, ns = metric(methods, "shared-bottom", "test_loss"), metric(methods, "no-sharing",
                                                                       "test_loss")
        rows.append([f"{rho:g}", fmt(sb), fmt(ns)])
        sign, text = compare("shared bottom", sb, "no sharing", ns, lower_is_better=True)
        signs[rho] = (sign, sb["mean"] < ns["mean"])
        texts.append(f"rho={rho:g}: {text}")
    ours = table(["rho", "shared bottom: test loss", "no sharing: test loss"], rows)
    hurt, helps = signs.get(0.0), signs.get(1.0)
    if hurt is None or helps is None:
        return Assessment(ours, NOT_REPRODUCED, "the run lacks rho=0 or rho=1", {})
    directions = [not hurt[1], helps[1]]  # unrelated: sharing worse; equal tasks: better
    significant_ = [hurt[0] < 0, helps[0] > 0]
    verdict = REPRODUCED if all(significant_) else PARTLY if any(directions) else NOT_REPRODUCED
    return Assessment(ours, verdict, "; ".join(texts),
                      {"direction_right": directions, "significant": significant_})


register_study(Study(
    key="gm-fig1", paper=GUMBEL_MATRIX, figure="Fig. 1",
    claim="synthetic task pairs: sharing everything hurts unrelated tasks (rho=0) and helps "
          "almost equal ones (rho=1)",
    published=("Loss over time of 'shared bottom' vs 'no sharing', 30 runs, 90% interval: for "
               "unrelated tasks no sharing ends lower; for almost equal tasks shared bottom "
               "ends lower. Read off the plot."),
    experiment="synthetic-transfer",
    full=Protocol(30, {}, ("rho", (0.0, 1.0)), ("shared-bottom", "no-sharing"),
                  note="30 seeds as the paper; summed test loss of the selected checkpoint "
                       "instead of the smoothed training curve"),
    quick=Protocol(5, {}, ("rho", (0.0, 1.0)), ("shared-bottom", "no-sharing"),
                   note="5 seeds of the paper's 30"),
    assess=_assess_fig1,
    figures=copy_plots(PlotNames.SWEEP),
    data=lambda run: data_notes(run).replace(f"rho={run.results['config'].get('rho')}",
                                             "rho per sweep point"),
))


# ---------------------------------------------------------------------- Fig. 7


def _assess_fig7(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    g, ns = metric(methods, "gumbel", "test_loss"), metric(methods, "no-sharing", "test_loss")
    recovered = metric(methods, "gumbel", "pairs_recovered")
    within = metric(methods, "gumbel", "within_pair_similarity")
    across = metric(methods, "gumbel", "across_pair_similarity")
    ours = table(["method", "test loss (sum of 4 tasks)"], [["gumbel", fmt(g)],
                                                           ["no sharing", fmt(ns)]])
    ours += ["", f"Gumbel-Matrix task embeddings: pairs recovered in "
                 f"{recovered['mean'] * recovered['n']:.0f} of {recovered['n']} seeds; "
                 f"similarity within pairs {fmt(within)}, across pairs {fmt(across)}."]
    sign, text = compare("gumbel", g, "no sharing", ns, lower_is_better=True)
    claims = [sign > 0, recovered["mean"] >= 0.5]
    return Assessment(ours, verdict_of(claims), text + f"; pairs recovered in "
                      f"{recovered['mean']:.0%} of seeds",
                      {"loss": {"gumbel": g["mean"], "no-sharing": ns["mean"]},
                       "pairs_recovered": recovered["mean"]})


register_study(Study(
    key="gm-fig7", paper=GUMBEL_MATRIX, figure="Fig. 7 (appendix A3)",
    claim="two pairs of related synthetic tasks: Gumbel-Matrix finds the pairs and beats "
          "no sharing",
    published=("4 components of 3 dense layers (16 units), no heads, batch 64, lr 0.01, "
               "gradient norm clipped to 1, 3000 batches per task, 20 runs: related tasks "
               "converge to the same components, unrelated ones to distinct ones, and the "
               "Gumbel-Matrix loss ends below no sharing. Read off the plot."),
    experiment="synthetic-pairs",
    full=Protocol(20, {}, None, ("gumbel", "no-sharing"), note="20 seeds as the paper"),
    quick=Protocol(3, {}, None, ("gumbel", "no-sharing"), note="3 seeds of the paper's 20"),
    assess=_assess_fig7,
    figures=copy_plots(PlotNames.LEARNING_CURVES, PlotNames.similarity("gumbel")),
    investigation=(
        "In all 20 seeds of the paper-protocol run the two tasks of each pair end with identical "
        "allocations (the pairs are found), but every task keeps about 3 of the 4 components "
        "(2.95 on average), so the two unrelated pairs share components in every seed (one in "
        "3 seeds, two in 16, three in 1); the paper reports distinct subsets. A component used "
        "by both pairs has to serve two unrelated functions, and with no task heads nothing "
        "downstream can separate them, so the loss ends above no sharing. How many components "
        "are shared does not explain the spread between seeds (mean test loss 5.49 with one "
        "shared, 5.47 with two). The paper describes no budget for this experiment; a budget "
        "penalty pushing towards two components per task would favour distinct subsets, but "
        "was not tried here."),
))


# ---------------------------------------------------------------------- Table I

TABLE1 = {  # test accuracy % (mean, std over 30 runs), active connections %
    "no-sharing": (93.5, 5.1, 25), "shared-bottom": (95.7, 0.5, 100),
    "gumbel": (96.8, 0.2, 96), "gumbel-budget": (96.7, 0.3, 75),
}


def _assess_table1(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    rows, active_ok = [], []
    acc = {m: metric(methods, m, "test_accuracy") for m in TABLE1}
    for m, (p_acc, p_std, p_active) in TABLE1.items():
        active = metric(methods, m, "active_connections")
        rows.append([m, f"{p_acc} ± {p_std} (std)", fmt(acc[m], 1, 100.0), f"{p_active}%",
                     fmt(active, 0) + "%"])
        active_ok.append(abs(active["mean"] - p_active) <= 5)
    ours = table(["method", "paper: test accuracy %", "ours: test accuracy %",
                  "paper: active", "ours: active"], rows)
    best = max(acc, key=lambda m: acc[m]["mean"])
    vs = {other: compare("gumbel", acc["gumbel"], label, acc[other], False, 2, 100.0)
          for other, label in (("shared-bottom", "shared bottom"), ("no-sharing", "no sharing"))}
    budget = compare("gumbel budget 0.75", acc["gumbel-budget"], "gumbel", acc["gumbel"], False,
                     2, 100.0)
    # the paper: Gumbel-Matrix above both baselines, the budget variant about as good
    claims = [all(active_ok),
              vs["shared-bottom"][0] >= 0 and acc["gumbel"]["mean"] >= acc["shared-bottom"][
                  "mean"],
              vs["no-sharing"][0] >= 0 and acc["gumbel"]["mean"] >= acc["no-sharing"]["mean"],
              acc["gumbel-budget"]["mean"] >= acc["gumbel"]["mean"] - 0.005]
    reason = (f"active connections within 5 points of the paper for {sum(active_ok)} of 4 "
              f"methods; highest mean accuracy: {best}; {vs['shared-bottom'][1]}; "
              f"{vs['no-sharing'][1]}; {budget[1]} (criterion: at most 0.5 points lower)")
    data = " ".join(str(v) for v in (run.results.get("data") or {}).values())
    exact = "subset" not in data.lower()
    if not exact:
        reason += "; MNIST here is the 5,000-image subset, so at most partly"
    return Assessment(ours, capped(verdict_of(claims), exact), reason,
                      {m: {"accuracy": acc[m]["mean"],
                           "active": metric(methods, m, "active_connections")["mean"]}
                       for m in TABLE1})


register_study(Study(
    key="gm-table1", paper=GUMBEL_MATRIX, figure="Table I",
    claim="4-MNISTs: Gumbel-Matrix matches or beats shared bottom and no sharing (budget 0.75 "
          "about as good), using ~96% of the connections (75% with the budget)",
    published=("Test accuracy % (mean ± std, 30 runs) and active connections: no sharing 93.5 "
               "± 5.1 (25%), shared bottom 95.7 ± 0.5 (100%), Gumbel-Matrix 96.8 ± 0.2 (96%), "
               "Gumbel-Matrix budget 0.75: 96.7 ± 0.3 (75%)."),
    experiment="four-mnists",
    full=Protocol(30, {}, None, tuple(TABLE1), note="30 seeds as the paper; 10 epochs per task"),
    quick=Protocol(3, {}, None, tuple(TABLE1), note="3 seeds of the paper's 30"),
    assess=_assess_table1,
    figures=copy_plots(PlotNames.allocation("gumbel")),
    investigation=(
        "Offline, MNIST is the 5,000-image subset: each task trains on 3,600 images, so the "
        "paper's 10 epochs are about 2,250 updates per task here against about 34,000 on full "
        "MNIST, and every method ends 1-4 points below the paper. Trained for 50 epochs "
        "instead (2 seeds, about 11,000 updates per task, `flexmtl run four-mnists --methods "
        "gumbel,shared-bottom --seeds 2 epochs=50`): Gumbel-Matrix 95.8 ± 0.6% (91.7% "
        "active), shared bottom 95.6 ± 0.5%, so Gumbel-Matrix catches up and leads by a trend, "
        "as in the paper (96.8 vs 95.7; with 2 seeds the difference is within noise). This "
        "is consistent with the 10-epoch gap coming from how few updates the subset allows "
        "rather than from the method."),
))


# ---------------------------------------------------------------------- Fig. 8


def _gumbel_runs(run: StudyRun) -> list:
    return seed_dirs(ExperimentFolder(run.run_dir).method_dir("gumbel"))


def _assess_fig8(run: StudyRun) -> Assessment:
    seeds = _gumbel_runs(run)
    if not seeds:
        return Assessment([], NOT_REPRODUCED, "no Gumbel-Matrix run to read")
    settled, start = [], []
    for seed_dir in seeds:
        snaps = snapshots(seed_dir)
        first, last = snaps[0][1], snaps[-1][1]
        settled.append(float(np.mean(np.minimum(last, 1 - last) <= 0.1)))
        start.append(float(np.mean(np.minimum(first, 1 - first) <= 0.1)))
    end = summarize(settled)
    ours = [f"Share of connection probabilities within 0.1 of 0 or 1: {fmt(summarize(start))} "
            f"at step 0, {fmt(end)} at the end ({len(seeds)} seed(s), all tasks and layers)."]
    verdict = REPRODUCED if end["mean"] >= 0.9 else PARTLY if end["mean"] >= 0.5 else (
        NOT_REPRODUCED)
    return Assessment(ours, capped(verdict, False),
                      f"{end['mean']:.0%} of the probabilities end within 0.1 of 0 or 1 (the "
                      "paper: they converge to 0 or 1); measured on 4-MNISTs, not on the "
                      "paper's Omniglot, so at most partly", {"settled": end["mean"]})


register_study(Study(
    key="gm-fig8", paper=GUMBEL_MATRIX, figure="Fig. 8",
    claim="allocation probabilities converge to 0 or 1 during training",
    published=("Allocation probabilities over time for one run and one task (Omniglot): they "
               "move from p_init to 0 or 1 (also stated in Sec. III: 'the allocation "
               "probabilities naturally tend to converge to either 0.0 or 1.0')."),
    experiment="four-mnists",
    runs_with="gm-table1",
    assess=_assess_fig8,
    figures=copy_plots(PlotNames.allocation_trajectories("gumbel")),
    investigation="Measured on the 4-MNISTs Gumbel-Matrix runs, since Omniglot is not on "
                  "this machine (the paper's figure is from Omniglot).",
))


# ---------------------------------------------------------------------- Figs. 5-6


def _assess_clusters(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    method = next(iter(methods))
    keys = [k for k in (methods[method].get("metrics") or {}) if k.endswith("_identical")]
    rows = [[k.removesuffix("_identical"), fmt(metric(methods, method, k), 2)] for k in keys]
    ari = metric(methods, method, "cluster_ari")
    active = metric(methods, method, "active_connections")
    ours = table(["cluster", "share of its tasks with the cluster's most common embedding"],
                 rows)
    ours += ["", f"Adjusted Rand index of an average-linkage clustering of the embeddings "
                 f"against the true clusters: {fmt(ari, 2)}; active connections "
                 f"{fmt(active, 0)}%."]
    same = {k: metric(methods, method, k)["mean"] for k in keys}
    # the paper: one embedding for all MNIST tasks, one for all Fashion tasks, and the three
    # clusters distinct in the similarity matrix (Fig. 6), here: ARI >= 0.5
    claims = [same.get("mnist_identical", 0) >= 0.9, same.get("fashion_identical", 0) >= 0.9,
              ari["mean"] >= 0.5]
    cifar = any(k.startswith("cifar") for k in keys)
    verdict = verdict_of(claims)
    reason = (f"MNIST tasks share one embedding: {same.get('mnist_identical', 0):.0%}, Fashion "
              f"tasks: {same.get('fashion_identical', 0):.0%} (the paper: 100% each); the "
              f"clusters are recovered with ARI {ari['mean']:.2f} (criterion 0.5; the paper: "
              "the three clusters stay distinct)")
    if not cifar:
        reason += "; CIFAR-100 is absent: its cluster is a stand-in, so at most partly"
    return Assessment(ours, capped(verdict, cifar), reason,
                      {"identical": same, "ari": ari["mean"]})


register_study(Study(
    key="gm-fig5-6", paper=GUMBEL_MATRIX, figure="Figs. 5-6",
    claim="40 tasks in 3 latent clusters: all MNIST tasks share one embedding, all Fashion "
          "tasks another, CIFAR tasks vary",
    published=("Binary allocation vectors of the 40 tasks (20 CIFAR-100 superclass tasks, 10 "
               "MNIST and 10 Fashion-MNIST leave-one-class-out tasks), 3 routed layers x 16 "
               "components, budget 0.5: the MNIST tasks all use one embedding, the Fashion "
               "tasks another, the CIFAR tasks vary (one run shown)."),
    experiment="clusters",
    full=Protocol(3, {}, None, ("gumbel-budget",),
                  note="3 seeds (the paper shows one run); 1000 outer steps; offline the "
                       "CIFAR cluster is a stated stand-in (8x8 digits)"),
    quick=Protocol(1, {"steps": 300}, None, ("gumbel-budget",),
                   note="1 seed, 300 outer steps (each a batch of every task)"),
    assess=_assess_clusters,
    figures=copy_plots(PlotNames.allocation("gumbel-budget"),
                       PlotNames.similarity("gumbel-budget")),
    investigation=(
        "The paper gives no training length. One seed at 300 outer steps (the quick run) and one "
        "at 1000 (`flexmtl run clusters --seeds 1`, 20 minutes here) both recover the three "
        "clusters as blocks (ARI 0.90 both times, 48% active connections), but no two tasks end "
        "with exactly the same embedding (30 distinct). The embeddings are still converging: "
        "two MNIST tasks differ in 12.2 of the 48 components on average after 300 steps and in "
        "4.0 after 1000, and the share of connection probabilities within 0.1 of 0 or 1 grows "
        "from 70% to 87%. Identical embeddings within the MNIST and Fashion clusters look like "
        "a matter of the longer training the paper presumably used (on a GPU); not verified "
        "here."),
))


# ---------------------------------------------------------------------- Table II


def _assess_table2(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    err = {m: metric(methods, m, "test_accuracy") for m in ("gumbel", "shared-bottom")}
    ours = table(["method", "paper: test error %", "ours: test error %"], [
        ["gumbel", "6.48 ± 0.28 (std)", fmt({**err["gumbel"], "mean": 1 - err["gumbel"]["mean"]},
                                            2, 100.0)],
        ["shared bottom", "6.75 ± 0.33 (std)",
         fmt({**err["shared-bottom"], "mean": 1 - err["shared-bottom"]["mean"]}, 2, 100.0)]])
    sign, text = compare("gumbel", err["gumbel"], "shared bottom", err["shared-bottom"], False,
                         2, 100.0)
    close = abs((1 - err["gumbel"]["mean"]) * 100 - 6.48) <= 1.0
    return Assessment(ours, verdict_of([sign >= 0, close]), text)


register_study(Study(
    key="gm-table2", paper=GUMBEL_MATRIX, figure="Table II",
    claim="Omniglot, 20 alphabets: Gumbel-Matrix 6.48% test error vs shared bottom 6.75%",
    published=("Test error % (mean ± std, 10 runs): single task 39.19, soft ordering 33.41, "
               "CMTR 12.81, MoE 7.81, shared bottom 6.75 ± 0.33, Gumbel-Matrix 6.48 ± 0.28."),
    experiment="omniglot",
    full=Protocol(10, {}, None, ("gumbel", "shared-bottom"), note="10 seeds as the paper"),
    needs=("omniglot",), gpu=True, fixture_test="tests/test_gumbel_experiments.py",
    assess=_assess_table2,
    figures=copy_plots(PlotNames.allocation("gumbel")),
))
