"""Reproduction studies of the Gumbel-Matrix paper (Maziarz et al., learned allocation)."""

from __future__ import annotations

import numpy as np

from flexmtl.analysis.stats import summarize
from flexmtl.reproduction.studies import (
    GUMBEL_MATRIX,
    Assessment,
    Claim,
    Protocol,
    Study,
    StudyRun,
    all_claim,
    bound_claim,
    copy_plots,
    count_claim,
    data_notes,
    fmt,
    margin_claim,
    metric,
    metric_or_none,
    not_run,
    paired_claim,
    points,
    register_study,
    seed_dirs,
    sharing_summaries,
    snapshots,
    table,
    within_claim,
)
from flexmtl.run_folder import ExperimentFolder, PlotNames, TrainingRun

# ---------------------------------------------------------------------- Fig. 1


FLAT_SHARE = 0.05  # "behaves the same": within this share of its mean loss

G1_HURT = Claim("for unrelated tasks (rho=0) sharing everything hurts: shared bottom ends "
                "with a higher loss than no sharing", main=True)
G1_HELP = Claim("for almost equal tasks (rho=1) sharing everything helps: shared bottom ends "
                "with a lower loss than no sharing", main=True)
G1_FLAT = Claim("no sharing behaves the same irrespective of rho: its loss at rho=0 and rho=1 "
                f"agree within {FLAT_SHARE:.0%} of its mean (the margin is ours)")
G1_CLAIMS = (G1_HURT, G1_HELP, G1_FLAT)


def _assess_fig1(run: StudyRun) -> Assessment:
    rows, loss = [], {}
    for rho, methods in sorted(points(run.results), key=lambda p: p[0]):
        sb, ns = metric(methods, "shared-bottom", "test_loss"), metric(methods, "no-sharing",
                                                                       "test_loss")
        rows.append([f"{rho:g}", fmt(sb), fmt(ns)])
        loss[rho] = (sb, ns)
    ours = table(["rho", "shared bottom: test loss", "no sharing: test loss"], rows)
    claims = []
    for claim, rho, lower in ((G1_HURT, 0.0, False), (G1_HELP, 1.0, True)):
        if rho not in loss:
            claims.append(not_run(claim, f"the run lacks rho={rho:g}"))
            continue
        sb, ns = loss[rho]
        claims.append(paired_claim(claim, "shared bottom", sb, "no sharing", ns, lower,
                                   where=f"rho={rho:g}"))
    if 0.0 in loss and 1.0 in loss:
        a, b = loss[0.0][1], loss[1.0][1]
        claims.append(margin_claim(G1_FLAT, "no sharing at rho=0", a, "at rho=1", b,
                                   FLAT_SHARE * (a["mean"] + b["mean"]) / 2))
    else:
        claims.append(not_run(G1_FLAT, "the run lacks rho=0 or rho=1"))
    return Assessment(ours, claims, {f"{rho:g}": {"shared-bottom": sb["mean"],
                                                  "no-sharing": ns["mean"]}
                                     for rho, (sb, ns) in loss.items()})


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
    claims=G1_CLAIMS,
    assess=_assess_fig1,
    figures=copy_plots(PlotNames.SWEEP),
    data=lambda run: data_notes(run).replace(f"rho={run.results['config'].get('rho')}",
                                             "rho per sweep point"),
))


# ---------------------------------------------------------------------- Fig. 7


G7_BEAT = Claim("the Gumbel-Matrix loss ends below no sharing", main=True)
G7_PAIRS = Claim("related tasks converge to the same components: in most seeds both pairs' "
                 "embeddings are more alike within than across pairs")
G7_DISTINCT = Claim("unrelated tasks converge to distinct subsets of components: in most "
                    "seeds the two pairs share no component")
G7_SB = Claim("shared bottom works very poorly: its loss ends above no sharing",
              needs="flexmtl reproduce --only gm-fig7  # adds shared-bottom runs")
G7_CLAIMS = (G7_BEAT, G7_PAIRS, G7_DISTINCT, G7_SB)


def _shared_components(embeddings: list[list[int]]) -> int:
    """Components used by both pairs (tasks 0, 1 and tasks 2, 3)."""
    used = [{c for t in pair for c, on in enumerate(embeddings[t]) if on}
            for pair in ((0, 1), (2, 3))]
    return len(used[0] & used[1])


def _assess_fig7(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    g, ns = metric(methods, "gumbel", "test_loss"), metric(methods, "no-sharing", "test_loss")
    sb = metric_or_none(methods, "shared-bottom", "test_loss")
    recovered = metric(methods, "gumbel", "pairs_recovered")
    within = metric(methods, "gumbel", "within_pair_similarity")
    across = metric(methods, "gumbel", "across_pair_similarity")
    rows = [["gumbel", fmt(g)], ["no sharing", fmt(ns)]] + (
        [["shared bottom", fmt(sb)]] if sb else [])
    ours = table(["method", "test loss (sum of 4 tasks)"], rows)
    ours += ["", f"Gumbel-Matrix task embeddings: similarity within pairs {fmt(within)}, "
                 f"across pairs {fmt(across)}."]
    shared = [_shared_components(s["embeddings"]) for s in sharing_summaries(run, "gumbel")
              if s.get("embeddings")]
    if shared:
        counts = {c: shared.count(c) for c in sorted(set(shared))}
        ours.append("Components used by both pairs: " + ", ".join(
            f"{c} in {n} seed(s)" for c, n in counts.items()) + ".")
    found = [int(v) for v in recovered["values"]]
    claims = [
        paired_claim(G7_BEAT, "gumbel", g, "no sharing", ns, lower_is_better=True),
        count_claim(G7_PAIRS, sum(found), len(found), "seeds"),
        count_claim(G7_DISTINCT, shared.count(0), len(shared), "seeds") if shared else
        not_run(G7_DISTINCT, "no finished Gumbel-Matrix run records its embeddings"),
        paired_claim(G7_SB, "shared bottom", sb, "no sharing", ns, lower_is_better=False)
        if sb else not_run(G7_SB, "the runs have no shared-bottom method"),
    ]
    return Assessment(ours, claims, {"loss": {"gumbel": g["mean"], "no-sharing": ns["mean"]},
                                     "pairs_recovered": recovered["mean"],
                                     "shared_components": shared})


register_study(Study(
    key="gm-fig7", paper=GUMBEL_MATRIX, figure="Fig. 7 (appendix A3)",
    claim="two pairs of related synthetic tasks: Gumbel-Matrix finds the pairs and beats "
          "no sharing",
    published=("4 components of 3 dense layers (16 units), no heads, batch 64, lr 0.01, "
               "gradient norm clipped to 1, 3000 batches per task, 20 runs: related tasks "
               "converge to the same components, unrelated ones to distinct ones, and the "
               "Gumbel-Matrix loss ends below no sharing. Read off the plot."),
    experiment="synthetic-pairs",
    full=Protocol(20, {}, None, ("gumbel", "no-sharing", "shared-bottom"),
                  note="20 seeds as the paper"),
    quick=Protocol(3, {}, None, ("gumbel", "no-sharing", "shared-bottom"),
                   note="3 seeds of the paper's 20"),
    claims=G7_CLAIMS,
    assess=_assess_fig7,
    figures=copy_plots(PlotNames.LEARNING_CURVES, PlotNames.similarity("gumbel")),
    remark=("With no task heads, a component used by both unrelated pairs has to serve two "
            "unrelated functions. The paper describes no budget for this experiment."),
))


# ---------------------------------------------------------------------- Table I

TABLE1 = {  # test accuracy % (mean, std over 30 runs), active connections %
    "no-sharing": (93.5, 5.1, 25), "shared-bottom": (95.7, 0.5, 100),
    "gumbel": (96.8, 0.2, 96), "gumbel-budget": (96.7, 0.3, 75),
}


BUDGET_MARGIN = 0.005  # "about as good": within half a point of accuracy
ACTIVE_MARGIN = 5.0  # "about N% of the connections": within 5 points

GT1_SB = Claim("Gumbel-Matrix is more accurate than shared bottom", main=True)
GT1_NS = Claim("Gumbel-Matrix is more accurate than no sharing")
GT1_BUDGET = Claim("Gumbel-Matrix with budget 0.75 is about as accurate as without "
                   f"(within ±{100 * BUDGET_MARGIN:g} points; the margin is ours)")
GT1_ACTIVE = Claim("Gumbel-Matrix keeps about the published share of connections active, and "
                   f"the budget about the published share (within ±{ACTIVE_MARGIN:g} points; "
                   "the margin is ours)")
GT1_CLAIMS = (GT1_SB, GT1_NS, GT1_BUDGET, GT1_ACTIVE)


def _assess_table1(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    acc = {m: metric(methods, m, "test_accuracy") for m in TABLE1}
    active = {m: metric(methods, m, "active_connections") for m in TABLE1}
    ours = table(["method", "test accuracy %", "active connections %"],
                 [[m, fmt(acc[m], 1, 100.0), fmt(active[m], 0)] for m in TABLE1])
    claims = [
        paired_claim(GT1_SB, "gumbel", acc["gumbel"], "shared bottom", acc["shared-bottom"],
                     False, 2, 100.0),
        paired_claim(GT1_NS, "gumbel", acc["gumbel"], "no sharing", acc["no-sharing"], False, 2,
                     100.0),
        margin_claim(GT1_BUDGET, "gumbel budget 0.75", acc["gumbel-budget"], "gumbel",
                     acc["gumbel"], BUDGET_MARGIN, 2, 100.0),
        all_claim(GT1_ACTIVE, [within_claim(GT1_ACTIVE, f"{m} active %", active[m]["values"],
                                            TABLE1[m][2], ACTIVE_MARGIN, 1)
                               for m in ("gumbel", "gumbel-budget")]),
    ]
    return Assessment(ours, claims, {m: {"accuracy": acc[m]["mean"],
                                         "active": active[m]["mean"]} for m in TABLE1})


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
    claims=GT1_CLAIMS,
    assess=_assess_table1,
    figures=copy_plots(PlotNames.allocation("gumbel")),
    remark=("Offline, MNIST is the small subset named under Data: the paper's epochs are far "
            "fewer updates per task there than on full MNIST. The ablation gm-table1-epochs50 "
            "trains Gumbel-Matrix and shared bottom five times as long."),
))

GT1_LONG = Claim("trained five times as long on the subset, Gumbel-Matrix is more accurate "
                 "than shared bottom", main=True)


def _assess_table1_long(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    acc = {m: metric(methods, m, "test_accuracy") for m in ("gumbel", "shared-bottom")}
    active = metric(methods, "gumbel", "active_connections")
    ours = table(["method", "test accuracy %"], [[m, fmt(acc[m], 1, 100.0)] for m in acc])
    ours += ["", f"Gumbel-Matrix active connections: {fmt(active, 1)}%."]
    return Assessment(ours, [paired_claim(GT1_LONG, "gumbel", acc["gumbel"], "shared bottom",
                                          acc["shared-bottom"], False, 2, 100.0)])


register_study(Study(
    key="gm-table1-epochs50", paper=GUMBEL_MATRIX, figure="Table I (ablation: 50 epochs)",
    claim="4-MNISTs on the MNIST subset, 50 epochs instead of 10: does Gumbel-Matrix catch up?",
    published="(Ablation of Table I; the paper trains 10 epochs on full MNIST.)",
    experiment="four-mnists",
    full=Protocol(3, {"epochs": 50}, None, ("gumbel", "shared-bottom"),
                  note="3 seeds, 50 epochs per task"),
    claims=(GT1_LONG,),
    assess=_assess_table1_long,
    ablation_of="gm-table1",
))


# ---------------------------------------------------------------------- Fig. 8


def _gumbel_runs(run: StudyRun) -> list:
    return seed_dirs(ExperimentFolder(run.run_dir).method_dir("gumbel"))


SETTLED = 0.1  # a probability within this of 0 or 1 has converged
CONVERGED = 0.9  # "converge": this share of the probabilities has settled (ours)
RARE = 0.01  # "very rarely": all-zero sampled with at most this probability (ours)

G8_CONVERGE = Claim(f"the allocation probabilities converge to 0 or 1: at the end over "
                    f"{CONVERGED:.0%} of them are within {SETTLED} of 0 or 1 (the bounds are "
                    "ours)", main=True)
G8_ZERO = Claim("an all-zero allocation (no component of a layer for a task) is sampled very "
                f"rarely: below {RARE:.0%} per (task, layer) at the end, on average (the bound "
                "is ours)")
G8_CLAIMS = (G8_CONVERGE, G8_ZERO)


def _all_zero(sharing: dict) -> float:
    """Mean over (task, routed layer) of the probability that every connection of the layer
    is sampled off."""
    probs = np.asarray(sharing["probabilities"], dtype=float)
    sizes = sharing.get("layer_sizes") or [probs.shape[1]]
    edges = np.cumsum([0, *sizes])
    return float(np.mean([np.prod(1 - probs[:, a:b], axis=1)
                          for a, b in zip(edges[:-1], edges[1:])]))


def _assess_fig8(run: StudyRun) -> Assessment:
    seeds = _gumbel_runs(run)
    if not seeds:
        return Assessment([], [not_run(c, "no Gumbel-Matrix run to read") for c in G8_CLAIMS])
    settled, start = [], []
    for seed_dir in seeds:
        snaps = snapshots(seed_dir)
        first, last = snaps[0][1], snaps[-1][1]
        settled.append(float(np.mean(np.minimum(last, 1 - last) <= SETTLED)))
        start.append(float(np.mean(np.minimum(first, 1 - first) <= SETTLED)))
    end = summarize(settled)
    zero = [_all_zero(s) for s in sharing_summaries(run, "gumbel") if s.get("probabilities")]
    ours = [f"Share of connection probabilities within {SETTLED} of 0 or 1: "
            f"{fmt(summarize(start))} at step 0, {fmt(end)} at the end ({len(seeds)} seed(s), "
            "all tasks and layers)."]
    claims = [
        bound_claim(G8_CONVERGE, "share settled at the end", settled, CONVERGED, above=True),
        bound_claim(G8_ZERO, "probability of an all-zero allocation", zero, RARE, above=False,
                    digits=4) if zero else not_run(G8_ZERO, "no run records its probabilities"),
    ]
    return Assessment(ours, claims, {"settled": end["mean"]})


register_study(Study(
    key="gm-fig8", paper=GUMBEL_MATRIX, figure="Fig. 8",
    claim="allocation probabilities converge to 0 or 1 during training",
    published=("Allocation probabilities over time for one run and one task (Omniglot): they "
               "move from p_init to 0 or 1 (also stated in Sec. III: 'the allocation "
               "probabilities naturally tend to converge to either 0.0 or 1.0')."),
    experiment="four-mnists",
    runs_with="gm-table1",
    claims=G8_CLAIMS,
    assess=_assess_fig8,
    figures=copy_plots(PlotNames.allocation_trajectories("gumbel")),
    remark="Measured on the Gumbel-Matrix runs of Table I; the paper's figure is from Omniglot.",
))


# ---------------------------------------------------------------------- Figs. 5-6


ARI_BOUND = 0.5

G5_MNIST = Claim("the MNIST tasks all use one embedding: most of them (pooled over seeds) "
                 "have their cluster's most common embedding", main=True)
G5_FASHION = Claim("the Fashion-MNIST tasks all use one embedding: most of them (pooled over "
                   "seeds) have their cluster's most common embedding", main=True)
G5_BLOCKS = Claim("the three clusters stay distinct (Fig. 6): an average-linkage clustering of "
                  f"the embeddings matches the true clusters with adjusted Rand index above "
                  f"{ARI_BOUND} (a check of ours, not the paper's)")
G5_SEPARATE = Claim("the clusters are distinct in the similarity of the embeddings (Fig. 6): "
                    "tasks of one cluster are more alike than tasks of different clusters "
                    "(per seed: mean cosine similarity within clusters minus across, above 0)")
G5_CIFAR = Claim("the CIFAR-100 tasks vary: their cluster's most common embedding is not "
                 "shared by all of them", needs="flexmtl reproduce --only gm-fig5-6  # with "
                 "CIFAR-100 in place (see `flexmtl data`)")
G5_CLAIMS = (G5_MNIST, G5_FASHION, G5_SEPARATE, G5_BLOCKS, G5_CIFAR)


def _separation(run: StudyRun, method: str) -> list[float]:
    """Per finished seed: mean cosine similarity of the task embeddings within clusters minus
    across clusters (a task's cluster: its name up to the first '-')."""
    out = []
    for seed_dir in seed_dirs(ExperimentFolder(run.run_dir).method_dir(method)):
        result = TrainingRun(seed_dir).read_result() or {}
        emb = np.asarray((result.get("sharing") or {}).get("embeddings") or [], dtype=float)
        names = [t.get("name", "") for t in result.get("tasks") or []]
        if emb.ndim != 2 or len(names) != len(emb):
            continue
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit.T
        group = np.array([n.split("-")[0] for n in names])
        same = group[:, None] == group[None, :]
        off = ~np.eye(len(names), dtype=bool)
        if (same & off).any() and (~same).any():
            out.append(float(sim[same & off].mean() - sim[~same].mean()))
    return out


def _assess_clusters(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    method = next(iter(methods))
    keys = [k for k in (methods[method].get("metrics") or {}) if k.endswith("_identical")]
    rows = [[k.removesuffix("_identical"), fmt(metric(methods, method, k), 2)] for k in keys]
    ari = metric(methods, method, "cluster_ari")
    active = metric(methods, method, "active_connections")
    ours = table(["cluster", "share of its tasks with the cluster's most common embedding"],
                 rows)
    ours += ["", f"Active connections {fmt(active, 0)}%."]
    tasks = list(run.results.get("data") or {})
    claims = []
    for claim, group in ((G5_MNIST, "mnist"), (G5_FASHION, "fashion")):
        share = metric_or_none(methods, method, f"{group}_identical")
        size = sum(t.startswith(f"{group}-") for t in tasks)
        if share is None or not size:
            claims.append(not_run(claim, f"the runs have no {group} cluster"))
            continue
        same = sum(round(v * size) for v in share["values"])
        claims.append(count_claim(claim, same, size * len(share["values"]),
                                  "tasks with the most common embedding"))
    separation = _separation(run, method)
    claims.append(bound_claim(G5_SEPARATE, "within minus across similarity", separation, 0.0,
                              above=True) if separation else
                  not_run(G5_SEPARATE, "no finished run records its embeddings and tasks"))
    claims.append(bound_claim(G5_BLOCKS, "adjusted Rand index", ari["values"], ARI_BOUND,
                              above=True, digits=2))
    cifar = metric_or_none(methods, method, "cifar_identical")
    claims.append(bound_claim(G5_CIFAR, "share of CIFAR tasks with the most common embedding",
                              cifar["values"], 1.0, above=False, digits=2) if cifar else
                  not_run(G5_CIFAR, "the CIFAR-100 cluster is a stand-in here"))
    return Assessment(ours, claims, {"identical": {k: metric(methods, method, k)["mean"]
                                                   for k in keys}, "ari": ari["mean"]})


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
    claims=G5_CLAIMS,
    assess=_assess_clusters,
    figures=copy_plots(PlotNames.allocation("gumbel-budget"),
                       PlotNames.similarity("gumbel-budget")),
    remark="The paper gives no training length.",
))


# ---------------------------------------------------------------------- Table II


GT2 = Claim("Gumbel-Matrix has a lower test error than shared bottom", main=True)


def _assess_table2(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    acc = {m: metric(methods, m, "test_accuracy") for m in ("gumbel", "shared-bottom")}
    err = {m: {**a, "mean": 1 - a["mean"], "values": [1 - v for v in a["values"]]}
           for m, a in acc.items()}
    ours = table(["method", "test error %"], [[m, fmt(err[m], 2, 100.0)] for m in err])
    return Assessment(ours, [paired_claim(GT2, "gumbel", err["gumbel"], "shared bottom",
                                          err["shared-bottom"], True, 2, 100.0)])


register_study(Study(
    key="gm-table2", paper=GUMBEL_MATRIX, figure="Table II",
    claim="Omniglot, 20 alphabets: Gumbel-Matrix 6.48% test error vs shared bottom 6.75%",
    published=("Test error % (mean ± std, 10 runs): single task 39.19, soft ordering 33.41, "
               "CMTR 12.81, MoE 7.81, shared bottom 6.75 ± 0.33, Gumbel-Matrix 6.48 ± 0.28."),
    experiment="omniglot",
    full=Protocol(10, {}, None, ("gumbel", "shared-bottom"), note="10 seeds as the paper"),
    needs=("omniglot",), gpu=True, fixture_test="tests/test_gumbel_experiments.py",
    claims=(GT2,),
    assess=_assess_table2,
    figures=copy_plots(PlotNames.allocation("gumbel")),
))
