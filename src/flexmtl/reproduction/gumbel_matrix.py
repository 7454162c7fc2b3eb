"""Reproduction studies of the Gumbel-Matrix paper (Maziarz et al., learned allocation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from flexmtl.analysis.stats import summarize
from flexmtl.reproduction.studies import (
    GUMBEL_MATRIX,
    Assessment,
    Claim,
    ClaimResult,
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
    seed_results,
    sharing_summaries,
    snapshots,
    table,
    task_accuracies,
    validation_curves,
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


def _shared_per_seed(run: StudyRun, method: str,
                     point: tuple[str, Any] | None = None) -> list[int]:
    """:func:`_shared_components` of each finished seed of ``method`` that records its
    embeddings (at the sweep value ``point`` if given)."""
    return [_shared_components(s["embeddings"]) for s in sharing_summaries(run, method, point)
            if s.get("embeddings")]


LATE = 5 / 6  # "still falling": the last sixth of training (500 of Fig. 7's 3000 batches; ours)


def _late_drop(run: StudyRun, method: str, point: tuple[str, Any] | None = None
               ) -> tuple[int, int, dict] | None:
    """How much ``method``'s combined validation loss still fell over the last sixth of
    training: ``(from_step, last_step, summary of the per-seed drop)`` over the seeds whose
    evaluation logs share both steps (None if there are none)."""
    curves = validation_curves(run, method, point)
    if not curves:
        return None
    steps = set.intersection(*(set(c) for c in curves.values()))
    if len(steps) < 2:
        return None
    last = max(steps)
    start = min(steps, key=lambda k: abs(k - LATE * last))
    if start == last:
        return None
    return start, last, summarize([c[start] - c[last] for c in curves.values()])


def _late_drop_line(run: StudyRun, methods: Sequence[tuple[str, str]],
                    point: tuple[str, Any] | None = None, lead: str = "") -> list[str]:
    """A sentence: each method's drop of the combined validation loss over the last sixth of
    training, and whether it is still falling there (the drop's 95% interval above 0)."""
    parts = []
    for method, label in methods:
        got = _late_drop(run, method, point)
        if got is None:
            continue
        start, last, drop = got
        falling = not math.isnan(drop["ci95"]) and drop["mean"] - drop["ci95"] > 0
        parts.append(f"{label} {fmt(drop)} from step {start} to {last} "
                     f"({'still falling' if falling else 'no clear fall'})")
    if not parts:
        return []
    return ["", lead + "Drop of the combined validation loss over the last sixth of training "
                       "(mean ± 95% interval over seeds; still falling: the interval above 0): "
            + "; ".join(parts) + "."]


EARLY_FIXED = 0.3  # "decided early": the allocation final within this share of training (ours)


def _fixed_from(seed_dir: Path) -> tuple[int, int | None, int] | None:
    """``(fixed, settled, last)`` of a run's recorded allocation probabilities: the step from
    which its most likely allocation (probability >= 0.5) stays the one it ends with, the first
    step at which a share :data:`CONVERGED` of them lies within :data:`SETTLED` of 0 or 1 (None
    if never), and the last step (None without two snapshots)."""
    snaps = snapshots(seed_dir)
    if len(snaps) < 2:
        return None
    final = snaps[-1][1] >= 0.5
    fixed = snaps[-1][0]
    for step, probabilities in reversed(snaps):
        if not np.array_equal(probabilities >= 0.5, final):
            break
        fixed = step
    settled = next((step for step, p in snaps
                    if _settled_share(p) >= CONVERGED), None)
    return fixed, settled, snaps[-1][0]


def _fixed_from_line(run: StudyRun, method: str, point: tuple[str, Any] | None = None,
                     lead: str = "") -> list[str]:
    """A sentence: from which step on the learned allocations stop changing, and from which
    their probabilities have settled (so that the sampled allocations stop varying), over
    seeds."""
    folder = ExperimentFolder(run.run_dir).method_dir(method, point)
    got = [f for f in (_fixed_from(d) for d in seed_dirs(folder)) if f is not None]
    if not got:
        return []
    steps, last = sorted(f[0] for f in got), max(f[2] for f in got)
    early = steps[-1] <= EARLY_FIXED * last
    line = (f"The most likely allocation (probability >= 0.5) is the final one from step "
            f"{int(np.median(steps))} on (median over {len(steps)} seeds; {steps[0]} to "
            f"{steps[-1]}) of {last}"
            + (f": in every seed it is decided in the first {EARLY_FIXED:.0%} of training and "
               "never revisited" if early else ""))
    settled = sorted(f[1] for f in got if f[1] is not None)
    never = len(got) - len(settled)
    if settled:
        line += (f". Its probabilities settle ({CONVERGED:.0%} of them within {SETTLED} of 0 "
                 f"or 1, so that the sampled allocations stop varying) from step "
                 f"{int(np.median(settled))} (median over the {len(settled)} seeds that get "
                 f"there; {settled[0]} to {settled[-1]})"
                 + (f", never in {never} seed(s)" if never else ""))
    else:
        line += (f". In no seed do {CONVERGED:.0%} of the probabilities get within {SETTLED} "
                 "of 0 or 1: the sampled allocations vary to the end")
    return ["", lead + line + "."]


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
    shared = _shared_per_seed(run, "gumbel")
    if shared:
        counts = {c: shared.count(c) for c in sorted(set(shared))}
        ours.append("Components used by both pairs: " + ", ".join(
            f"{c} in {n} seed(s)" for c, n in counts.items()) + ".")
    ours += _late_drop_line(run, [("gumbel", "Gumbel-Matrix"), ("no-sharing", "no sharing")])
    ours += _fixed_from_line(run, "gumbel")
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


# ---------------------------------------------------------------------- Fig. 7: budget

#: budgets of the Fig. 7 reading: 0.5 leaves each task 2 of the 4 components (room for each
#: pair to own two), 0.25 one (no sharing's share)
FIG7_BUDGETS = (0.25, 0.5)

G7B_MAIN = Claim("with the budget penalty at 0.5 Gumbel-Matrix does what Fig. 7 shows: its loss "
                 "ends below no sharing, and in most seeds the two unrelated pairs share no "
                 "component", main=True)
G7B_LOW = Claim("with the budget at 0.25 too, its loss ends below no sharing and in most seeds "
                "the unrelated pairs share no component")
G7B_PAIRS = Claim("at budget 0.5 related tasks converge to the same components: in most seeds "
                  "both pairs' embeddings are more alike within than across pairs")
G7B_CLAIMS = (G7B_MAIN, G7B_LOW, G7B_PAIRS)


def _budget_point(run: StudyRun, budget: float) -> tuple[dict, dict, list[int], dict] | None:
    """At one budget: the Gumbel-Matrix and no-sharing losses, the components shared by the
    two pairs per seed and the pairs-recovered summary (None if the point did not run)."""
    methods = dict(points(run.results)).get(budget)
    if methods is None:
        return None
    shared = _shared_per_seed(run, "gumbel-budget", ("budget", budget))
    return (metric(methods, "gumbel-budget", "test_loss"),
            metric(methods, "no-sharing", "test_loss"), shared,
            metric(methods, "gumbel-budget", "pairs_recovered"))


def _assess_fig7_budget(run: StudyRun) -> Assessment:
    rows, claims, extra = [], [], {}
    pairs_claim = not_run(G7B_PAIRS, "budget 0.5 did not run")
    for budget, claim in ((0.5, G7B_MAIN), (0.25, G7B_LOW)):
        got = _budget_point(run, budget)
        if got is None:
            claims.append(not_run(claim, f"the runs lack budget {budget:g}"))
            continue
        g, ns, shared, recovered = got
        rows.append([f"{budget:g}", fmt(g), fmt(ns),
                     ", ".join(f"{c}: {shared.count(c)}" for c in sorted(set(shared))) or "-",
                     fmt(recovered, 2)])
        parts = [paired_claim(claim, "gumbel-budget", g, "no sharing", ns, True,
                              where=f"budget {budget:g}")]
        parts.append(count_claim(claim, shared.count(0), len(shared), "seeds") if shared
                     else not_run(claim, "no finished run records its embeddings"))
        claims.append(all_claim(claim, parts))
        extra[f"{budget:g}"] = {"gumbel": g["mean"], "no-sharing": ns["mean"],
                                "shared_components": shared}
        if budget == 0.5:
            found = [int(v) for v in recovered["values"]]
            pairs_claim = count_claim(G7B_PAIRS, sum(found), len(found), "seeds")
    claims.append(pairs_claim)
    ours = table(["budget", "Gumbel-Matrix: test loss", "no sharing: test loss",
                  "components both pairs use: seeds", "pairs recovered (share of seeds)"], rows)
    for budget in FIG7_BUDGETS:
        ours += _fixed_from_line(run, "gumbel-budget", ("budget", budget),
                                 lead=f"Budget {budget:g}. ")
    ours += _one_per_pair_reading(run)
    return Assessment(ours, claims, extra)


def _one_per_pair(embeddings: list[list[int]]) -> bool:
    """Each task uses one component, the same as its partner's, another than the other
    pair's: the allocation of probes/fig7_oracle.py's ``pairs-share-one``."""
    e = embeddings
    return (all(sum(row) == 1 for row in e) and e[0] == e[1] and e[2] == e[3]
            and e[0] != e[2])


def _one_per_pair_reading(run: StudyRun) -> list[str]:
    """At budget 0.25: the seeds whose learned allocation ends at one shared component per
    pair, and their loss against no sharing's on the same seeds (the allocation that, given
    before training, beats no sharing: probes/results/fig7-oracle.md)."""
    methods = dict(points(run.results)).get(0.25)
    if methods is None:
        return []
    summaries = sharing_summaries(run, "gumbel-budget", ("budget", 0.25))
    g = metric(methods, "gumbel-budget", "test_loss")["values"]
    ns = metric(methods, "no-sharing", "test_loss")["values"]
    if not summaries or len(summaries) != len(g) or len(g) != len(ns):
        return []
    hits = [i for i, s in enumerate(summaries) if _one_per_pair(s.get("embeddings") or [[]])]
    line = (f"At budget 0.25 the learned allocation ends at one shared component per pair (each "
            f"pair its own) in {len(hits)} of {len(g)} seeds")
    if hits:
        diffs = [g[i] - ns[i] for i in hits]
        line += (f"; in those seeds Gumbel-Matrix's test loss minus no sharing's is "
                 f"{fmt(summarize(diffs))} ({sum(d > 0 for d in diffs)} of {len(hits)} above "
                 "no sharing), while that allocation fixed before training ends below no "
                 "sharing (probes/results/fig7-oracle.md)")
    return ["", line + "."]


register_study(Study(
    key="gm-fig7-budget", paper=GUMBEL_MATRIX, figure="Fig. 7 (ablation: budget)",
    claim="two pairs of related synthetic tasks with the budget penalty (Sec. III-D), which the "
          "paper does not use here: does limiting each task's share of components make "
          "Gumbel-Matrix separate the unrelated pairs and beat no sharing?",
    published="(Ablation of Fig. 7: the paper describes no budget for this experiment.)",
    experiment="synthetic-pairs",
    full=Protocol(10, {}, ("budget", FIG7_BUDGETS), ("gumbel-budget", "no-sharing"),
                  note="10 seeds (the paper's Fig. 7 has 20); the paper's network and training; "
                       "budget penalty weight 1; no sharing beside it at every point (it has "
                       "no budget: the same runs)"),
    claims=G7B_CLAIMS,
    assess=_assess_fig7_budget,
    ablation_of="gm-fig7",
))


G7D_MAIN = Claim("with components three ReLU layers deep (the other reading of 'three dense "
                 "layers'), Gumbel-Matrix's loss ends below no sharing", main=True)
G7D_DISTINCT = Claim("with components three ReLU layers deep, in most seeds the unrelated pairs "
                     "share no component")
G7D_CLAIMS = (G7D_MAIN, G7D_DISTINCT)


def _fig7_reading(key: str, column: str, at: Any, where: str, main: Claim, distinct: Claim
                  ) -> Callable[[StudyRun], Assessment]:
    """Assess a Fig. 7 reading swept over ``key``: per sweep value, the Gumbel-Matrix and
    no-sharing losses and the components both pairs use; the claims are judged at ``at``."""

    def assess(run: StudyRun) -> Assessment:
        rows: list[list[str]] = []
        claims: list[ClaimResult] = []
        extra: dict = {}
        for value, methods in sorted(points(run.results), key=lambda p: p[0]):
            g = metric(methods, "gumbel", "test_loss")
            ns = metric(methods, "no-sharing", "test_loss")
            shared = _shared_per_seed(run, "gumbel", (key, value))
            rows.append([f"{value:g}", fmt(g), fmt(ns),
                         ", ".join(f"{c}: {shared.count(c)}" for c in sorted(set(shared))) or "-"])
            extra[f"{value:g}"] = {"gumbel": g["mean"], "no-sharing": ns["mean"],
                                   "shared_components": shared}
            if value == at:
                claims = [paired_claim(main, "gumbel", g, "no sharing", ns, True, where=where),
                          count_claim(distinct, shared.count(0), len(shared), "seeds") if shared
                          else not_run(distinct, "no finished run records its embeddings")]
        if not claims:
            claims = [not_run(main, f"the runs lack {key}={at:g}"),
                      not_run(distinct, f"the runs lack {key}={at:g}")]
        ours = table([column, "Gumbel-Matrix: test loss", "no sharing: test loss",
                      "components both pairs use: seeds"], rows)
        for value, _ in sorted(points(run.results), key=lambda p: p[0]):
            lead = f"{column} {value:g}. "
            ours += _late_drop_line(run, [("gumbel", "Gumbel-Matrix"),
                                          ("no-sharing", "no sharing")], (key, value), lead)
            ours += _fixed_from_line(run, "gumbel", (key, value), lead)
        return Assessment(ours, claims, extra)

    return assess


register_study(Study(
    key="gm-fig7-depth", paper=GUMBEL_MATRIX, figure="Fig. 7 (ablation: component depth)",
    claim="two pairs of related synthetic tasks with components read as three ReLU layers and "
          "an output rather than two ReLU layers and an output: does Gumbel-Matrix then beat "
          "no sharing and separate the pairs?",
    published="(Ablation of Fig. 7: appendix A3 says each component has 'three dense layers'.)",
    experiment="synthetic-pairs",
    full=Protocol(10, {}, ("hidden_layers", (2, 3)), ("gumbel", "no-sharing"),
                  note="10 seeds (the paper's Fig. 7 has 20); the paper's training"),
    claims=G7D_CLAIMS,
    assess=_fig7_reading("hidden_layers", "ReLU layers per component", 3, "3 ReLU layers",
                         *G7D_CLAIMS),
    ablation_of="gm-fig7",
))


#: the authors' rule of thumb for the logits' learning rate (REFERENCE.md): tasks x the
#: model's (4 x 0.01); the experiment trains them at the model's rate, as appendix A3 gives
FIG7_LOGIT_LRS = (0.01, 0.04)

G7L_MAIN = Claim("with the allocation logits at the authors' rule-of-thumb learning rate "
                 "(tasks x the model's: 0.04), Gumbel-Matrix's loss ends below no sharing",
                 main=True)
G7L_DISTINCT = Claim("at that logit learning rate, in most seeds the unrelated pairs share no "
                     "component")

register_study(Study(
    key="gm-fig7-logit-lr", paper=GUMBEL_MATRIX, figure="Fig. 7 (ablation: logit learning rate)",
    claim="two pairs of related synthetic tasks with the allocation logits trained at the "
          "authors' rule of thumb, tasks x the model's learning rate, rather than at the "
          "model's: does Gumbel-Matrix then beat no sharing and separate the pairs?",
    published="(Ablation of Fig. 7: appendix A3 gives one learning rate, 0.01.)",
    experiment="synthetic-pairs",
    full=Protocol(10, {}, ("sharing_lr", FIG7_LOGIT_LRS), ("gumbel", "no-sharing"),
                  note="10 seeds (the paper's Fig. 7 has 20); the paper's network and training; "
                       "no sharing (no logits) beside it at every point: the same runs"),
    claims=(G7L_MAIN, G7L_DISTINCT),
    assess=_fig7_reading("sharing_lr", "logit learning rate", 0.04, "logit lr 0.04",
                         G7L_MAIN, G7L_DISTINCT),
    ablation_of="gm-fig7",
))


#: initial allocation probabilities: 0.5, the authors' default and this experiment's, and
#: 0.97, their value for the deep Omniglot network (REFERENCE.md; App. C1)
FIG7_P_INITS = (0.5, 0.97)

G7P_MAIN = Claim("with every connection starting at probability 0.97 (the authors' value for "
                 "their deep network) rather than 0.5, Gumbel-Matrix's loss ends below no "
                 "sharing", main=True)
G7P_DISTINCT = Claim("at p_init 0.97, in most seeds the unrelated pairs share no component")

register_study(Study(
    key="gm-fig7-p-init", paper=GUMBEL_MATRIX, figure="Fig. 7 (ablation: p_init)",
    claim="two pairs of related synthetic tasks with every connection starting at probability "
          "0.97 rather than 0.5: does Gumbel-Matrix then beat no sharing and separate the "
          "pairs?",
    published="(Ablation of Fig. 7: the paper gives no p_init for this experiment; the "
              "authors' default is 0.5, 0.97 for their deep Omniglot network.)",
    experiment="synthetic-pairs",
    full=Protocol(10, {}, ("p_init", FIG7_P_INITS), ("gumbel", "no-sharing"),
                  note="10 seeds (the paper's Fig. 7 has 20); the paper's network and training; "
                       "no sharing (no allocation) beside it at every point: the same runs"),
    claims=(G7P_MAIN, G7P_DISTINCT),
    assess=_fig7_reading("p_init", "p_init", 0.97, "p_init 0.97", G7P_MAIN, G7P_DISTINCT),
    ablation_of="gm-fig7",
))


#: training length of the Fig. 7 reading: the paper's 3000 batches per task, and five times it
FIG7_STEPS = (3000, 15000)

G7S_MAIN = Claim("trained five times as long (15,000 batches per task), Gumbel-Matrix's loss "
                 "ends below no sharing", main=True)
G7S_DISTINCT = Claim("trained that long, in most seeds the unrelated pairs share no component")
G7S_CLAIMS = (G7S_MAIN, G7S_DISTINCT)


register_study(Study(
    key="gm-fig7-steps", paper=GUMBEL_MATRIX, figure="Fig. 7 (ablation: training length)",
    claim="two pairs of related synthetic tasks: are both methods still improving when the "
          "paper stops (3000 batches per task), and trained five times as long, does "
          "Gumbel-Matrix beat no sharing and separate the pairs?",
    published="(Ablation of Fig. 7: appendix A3 trains 3000 batches per task.)",
    experiment="synthetic-pairs",
    full=Protocol(10, {}, ("steps", FIG7_STEPS), ("gumbel", "no-sharing"),
                  note="10 seeds (the paper's Fig. 7 has 20); the paper's network, learning rate "
                       "and temperature schedule; the loss at the last step (as gm-fig7)"),
    claims=G7S_CLAIMS,
    assess=_fig7_reading("steps", "batches per task", FIG7_STEPS[-1],
                         f"{FIG7_STEPS[-1]} batches per task", *G7S_CLAIMS),
    ablation_of="gm-fig7",
    remark=("What the early phase costs, with the allocation given instead of learned: "
            "`python probes/fig7_oracle.py --variants pairs-share-one random-then-share-one "
            "share-one-shorter --warmup STEPS` trains the right allocation after STEPS steps of "
            "random allocations, and alone for the steps left (probes/results/"
            "fig7-oracle-warmup*.md)."),
))


# ---------------------------------------------------------------------- planted groups

PG_ARI = Claim("the Gumbel-Matrix task embeddings recover planted groups (tasks that share a "
               "teacher network): the adjusted Rand index of their clustering into as many "
               "clusters as groups lies above chance (0)", main=True)
PG_SIM = Claim("tasks of one group have more similar embeddings than tasks of different "
               "groups (mean cosine similarity within vs across groups, paired over seeds)")
PG_NS = Claim("Gumbel-Matrix fits the tasks better than no sharing: lower combined test loss")
PG_SB = Claim("Gumbel-Matrix fits the tasks better than shared bottom: lower combined test loss")
PG_CLAIMS = (PG_ARI, PG_SIM, PG_NS, PG_SB)


def _assess_planted_groups(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    loss = {m: metric(methods, m, "test_loss") for m in ("gumbel", "no-sharing", "shared-bottom")}
    ari = metric(methods, "gumbel", "group_ari")
    within = metric(methods, "gumbel", "within_group_similarity")
    across = metric(methods, "gumbel", "across_group_similarity")
    separated = metric(methods, "gumbel", "groups_separated")
    active = metric(methods, "gumbel", "active_connections")
    distinct = metric(methods, "gumbel", "distinct_embeddings")
    ours = table(["method", "test loss (sum over tasks)"], [[m, fmt(v)] for m, v in loss.items()])
    ours += ["", f"Gumbel-Matrix task embeddings: adjusted Rand index {fmt(ari)}; similarity "
                 f"within groups {fmt(within)}, across groups {fmt(across)}; every within-group "
                 f"pair above every across-group pair in a share {fmt(separated)} of the seeds; "
                 f"distinct embeddings among the tasks {fmt(distinct, 1)}; active connections "
                 f"{fmt(active, 1)} %."]
    claims = [bound_claim(PG_ARI, "adjusted Rand index", ari["values"], 0.0, True),
              paired_claim(PG_SIM, "within", within, "across", across, False),
              paired_claim(PG_NS, "gumbel", loss["gumbel"], "no sharing", loss["no-sharing"],
                           True),
              paired_claim(PG_SB, "gumbel", loss["gumbel"], "shared bottom",
                           loss["shared-bottom"], True)]
    return Assessment(ours, claims, {"group_ari": ari["mean"],
                                     "loss": {m: v["mean"] for m, v in loss.items()}})


register_study(Study(
    key="gm-planted-groups", paper=GUMBEL_MATRIX, figure="Sec. III-E (test bench: planted groups)",
    claim="three groups of three tasks, each group sharing a teacher network (`flexmtl run "
          "planted-groups`): do the task embeddings recover the groups, without giving up "
          "accuracy?",
    published="(Beyond the paper: Sec. III-E reads task embeddings as task relatedness; Fig. 7 "
              "and Figs. 5-6 test it on pairs and on clusters of image tasks.)",
    experiment="planted-groups",
    full=Protocol(10, {}, None, ("gumbel", "no-sharing", "shared-bottom"),
                  note="10 seeds of the model, one draw of the teachers; the library's "
                       "allocation defaults; 2 routed layers of 9 components"),
    claims=PG_CLAIMS,
    assess=_assess_planted_groups,
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


AT_CHANCE = 0.2  # ten classes: a task at most twice the chance rate never learned (ours)


def _tasks_at_chance(run: StudyRun, methods: Sequence[str]) -> list[str]:
    """A table: per method, how many (task, seed) pairs ended at chance (test accuracy at
    most :data:`AT_CHANCE`) and the mean test accuracy of the others -- a task that never
    learned weighs heavily in a method's mean and spread (the paper's no sharing: ± 5.1)."""
    rows = []
    for m in methods:
        values = [a for seed in task_accuracies(run, m) for a in seed.values()]
        if values:
            rest = [a for a in values if a > AT_CHANCE]
            rows.append([m, f"{len(values) - len(rest)} of {len(values)}",
                         f"{100 * np.mean(rest):.1f}" if rest else "-"])
    if not rows:
        return []
    return ["", f"Tasks that never learned: test accuracy at most {AT_CHANCE:g} (twice the "
                "chance rate of ten classes), counted over tasks and seeds; and the mean test "
                "accuracy of the other tasks:", ""] + table(
        ["method", "tasks at chance", "test accuracy % of the others"], rows)


def _table1_assessment(judge_active: bool) -> Callable[[StudyRun], Assessment]:
    """Table I's judgement: accuracy against shared bottom and no sharing, the budget's
    accuracy against none, and (``judge_active``) the active shares against the paper's."""

    def assess(run: StudyRun) -> Assessment:
        methods = run.results["methods"]
        acc = {m: metric(methods, m, "test_accuracy") for m in TABLE1}
        active = {m: metric(methods, m, "active_connections") for m in TABLE1}
        ours = table(["method", "test accuracy %", "active connections %"],
                     [[m, fmt(acc[m], 1, 100.0), fmt(active[m], 0)] for m in TABLE1])
        ours += _tasks_at_chance(run, list(TABLE1))
        claims = [
            paired_claim(GT1_SB, "gumbel", acc["gumbel"], "shared bottom", acc["shared-bottom"],
                         False, 2, 100.0),
            paired_claim(GT1_NS, "gumbel", acc["gumbel"], "no sharing", acc["no-sharing"],
                         False, 2, 100.0),
            margin_claim(GT1_BUDGET, "gumbel budget 0.75", acc["gumbel-budget"], "gumbel",
                         acc["gumbel"], BUDGET_MARGIN, 2, 100.0),
        ]
        if judge_active:
            claims.append(all_claim(GT1_ACTIVE, [
                within_claim(GT1_ACTIVE, f"{m} active %", active[m]["values"], TABLE1[m][2],
                             ACTIVE_MARGIN, 1) for m in ("gumbel", "gumbel-budget")]))
        return Assessment(ours, claims, {m: {"accuracy": acc[m]["mean"],
                                             "active": active[m]["mean"]} for m in TABLE1})

    return assess


_assess_table1 = _table1_assessment(judge_active=True)

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

GT1_FASHION_CLAIMS = (GT1_SB, GT1_NS, GT1_BUDGET)


_assess_table1_fashion = _table1_assessment(judge_active=False)  # shares: MNIST's

register_study(Study(
    key="gm-table1-fashion", paper=GUMBEL_MATRIX, figure="Table I (ablation: data-rich)",
    claim="four copies of full Fashion-MNIST (two as they are, two rotated 90 degrees), the "
          "paper's network, epochs and learning rates: with data enough, does Gumbel-Matrix "
          "match or beat shared bottom and no sharing?",
    published="(Ablation of Table I: the paper runs MNIST, of which only a 5,000-image subset "
              "is on these machines; Fashion-MNIST is here in full, 60,000 training images.)",
    experiment="four-mnists",
    full=Protocol(10, {"dataset": "fashion"}, None, tuple(TABLE1),
                  note="10 seeds (the paper's Table I has 30); 10 epochs per task of the 54,000 "
                       "training images left after the validation split; the paper's learning "
                       "rates; active connections reported but not judged (the paper's shares "
                       "are MNIST's)"),
    claims=GT1_FASHION_CLAIMS,
    assess=_assess_table1_fashion,
    figures=copy_plots(PlotNames.allocation("gumbel")),
    remark=("A long study on a CPU: its runs resume, so it may be run in several sittings "
            "(`flexmtl reproduce --only gm-table1-fashion` again continues where it stopped; "
            "on another machine, carry the runs with `flexmtl pack` / `flexmtl unpack`), "
            "or on a GPU machine (`--device cuda`)."),
    ablation_of="gm-table1",
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


# ---------------------------------------------------------------------- Sec. V-A patterns


GA_COPIES = Claim("the two copies of MNIST end up using the same allocation pattern, and so do "
                  "the two copies of MNIST-rot: in most seeds both pairs of copies have equal "
                  "task embeddings", main=True)
GA_DIFFER = Claim("the patterns used by the copies of MNIST are different from the ones used by "
                  "MNIST-rot: in most seeds the embeddings of MNIST and MNIST-rot differ")
GA_BUDGET = Claim("the same with budget 0.75: in most seeds the copies share a pattern and MNIST "
                  "and MNIST-rot differ")
GA_CLAIMS = (GA_COPIES, GA_DIFFER, GA_BUDGET)


def _patterns(run: StudyRun, method: str) -> list[tuple[bool, bool]]:
    """Per finished seed: (both pairs of copies share an embedding, MNIST's differs from
    MNIST-rot's). The tasks are in the experiment's order: MNIST, its copy, MNIST-rot, its
    copy."""
    out = []
    for sharing in sharing_summaries(run, method):
        emb = [tuple(e) for e in sharing.get("embeddings") or []]
        if len(emb) == 4:
            out.append((emb[0] == emb[1] and emb[2] == emb[3], emb[0] != emb[2]))
    return out


def _assess_patterns(run: StudyRun) -> Assessment:
    gumbel, budget = _patterns(run, "gumbel"), _patterns(run, "gumbel-budget")
    rows = [[m, f"{sum(c for c, _ in p)} of {len(p)}", f"{sum(d for _, d in p)} of {len(p)}"]
            for m, p in (("gumbel", gumbel), ("gumbel-budget", budget))]
    ours = table(["method", "seeds whose copies share an embedding",
                  "seeds where MNIST and MNIST-rot differ"], rows)
    if not gumbel:
        claims = [not_run(GA_COPIES, "no finished Gumbel-Matrix run records its embeddings"),
                  not_run(GA_DIFFER, "no finished Gumbel-Matrix run records its embeddings")]
    else:
        claims = [count_claim(GA_COPIES, sum(c for c, _ in gumbel), len(gumbel), "seeds"),
                  count_claim(GA_DIFFER, sum(d for _, d in gumbel), len(gumbel), "seeds")]
    claims.append(count_claim(GA_BUDGET, sum(c and d for c, d in budget), len(budget), "seeds")
                  if budget else not_run(GA_BUDGET, "no finished budget run records its "
                                                    "embeddings"))
    return Assessment(ours, claims, {"copies_share": sum(c for c, _ in gumbel),
                                     "rotated_differs": sum(d for _, d in gumbel)})


register_study(Study(
    key="gm-table1-patterns", paper=GUMBEL_MATRIX, figure="Sec. V-A (allocation patterns)",
    claim="4-MNISTs: the MNIST copies share one allocation pattern, the rotated copies another",
    published=("Sec. V-A: 'For the Gumbel-Matrix experiments, we found that the two copies of "
               "MNIST end up using the same allocation patterns, as well as the two copies of "
               "MNIST-rot. However, patterns used by the copies of MNIST are different from the "
               "ones used by MNIST-rot.' No numbers."),
    experiment="four-mnists",
    runs_with="gm-table1",
    claims=GA_CLAIMS,
    assess=_assess_patterns,
    remark=("Read on the Gumbel-Matrix runs of Table I: a task's embedding is its most likely "
            "allocation, concatenated over the routed layers (Sec. III-E)."),
))


# ---------------------------------------------------------------------- App. C1: p_init


REMOVED = 90.0  # "confidently removes many connections": active share below this % (ours)

GP_BETTER = Claim("p_init 0.97 trains much better than p_init 0.5 (stated for the deep Omniglot "
                  "network; here the 4-MNISTs network): higher test accuracy", main=True)
GP_MORE = Claim("increasing p_init slightly increases the share of active connections at "
                "convergence: more active connections from 0.97 than from 0.5")
GP_REMOVES = Claim("even from p_init 0.97 the model still confidently removes many connections: "
                   f"active connections below {REMOVED:g}% (the bound is ours)")
GP_OMNIGLOT = Claim("on the deep Omniglot network (where the paper states it) p_init 0.97 "
                    "trains much better than 0.5",
                    needs="flexmtl run omniglot --seeds 10 --methods gumbel --sweep "
                          "p_init=0.5,0.97  # needs the Omniglot data and a GPU")
GP_CLAIMS = (GP_BETTER, GP_MORE, GP_REMOVES, GP_OMNIGLOT)


def _sweep_metrics(run: StudyRun, method: str, keys: tuple[str, ...]) -> dict:
    """``{sweep value: {key: summary}}`` of one method."""
    return {value: {k: metric(ms, method, k) for k in keys} for value, ms in points(run.results)}


def _assess_p_init(run: StudyRun) -> Assessment:
    m = _sweep_metrics(run, "gumbel", ("test_accuracy", "active_connections"))
    low, high = min(m), max(m)
    ours = table(["p_init", "test accuracy %", "active connections %"],
                 [[f"{v:g}", fmt(m[v]["test_accuracy"], 1, 100.0),
                   fmt(m[v]["active_connections"], 1)] for v in sorted(m)])
    claims = [
        paired_claim(GP_BETTER, f"p_init {high:g}", m[high]["test_accuracy"], f"{low:g}",
                     m[low]["test_accuracy"], False, 2, 100.0),
        paired_claim(GP_MORE, f"p_init {high:g}", m[high]["active_connections"], f"{low:g}",
                     m[low]["active_connections"], False, 1),
        bound_claim(GP_REMOVES, f"active connections % from p_init {high:g}",
                    m[high]["active_connections"]["values"], REMOVED, above=False, digits=1),
        not_run(GP_OMNIGLOT),
    ]
    return Assessment(ours, claims, {f"{v:g}": {k: m[v][k]["mean"] for k in m[v]} for v in m})


register_study(Study(
    key="gm-p-init", paper=GUMBEL_MATRIX, figure="Sec. III-A, App. C1 (p_init)",
    claim="initial allocation probability: 0.97 trains better than 0.5, keeps slightly more "
          "connections, and still removes many",
    published=("Sec. III-A: p_init 0.5 is the default; 'in our experiments with large and deep "
               "networks, it is often beneficial to set p_init closer to 1.0'. App. C1 "
               "(Omniglot): 'increasing p_init does slightly increase the average number of "
               "active connections at convergence, however, even with initialization as high "
               "as 0.97, the model still confidently removes many connections. On the other "
               "hand, we found p_init = 0.97 trains much better than p_init = 0.5.' No numbers."),
    experiment="four-mnists",
    full=Protocol(10, {}, ("p_init", (0.5, 0.97)), ("gumbel",),
                  note="10 seeds; the 4-MNISTs network of Table I (10 epochs per task), not the "
                       "deep Omniglot network the paper's statement is about (a claim below "
                       "names the Omniglot command)"),
    quick=Protocol(3, {}, ("p_init", (0.5, 0.97)), ("gumbel",), note="3 seeds"),
    claims=GP_CLAIMS,
    assess=_assess_p_init,
    figures=copy_plots(PlotNames.SWEEP),
))


# ---------------------------------------------------------------------- Sec. V-B: logit lr


GL_BETTER = Claim("a learning rate for the allocation logits T times that of the other weights "
                  "is beneficial (Sec. V-B): higher test accuracy than the same learning rate "
                  "for both", main=True)
GL_OMNIGLOT = Claim("on Omniglot (T = 20, where the paper found it beneficial) the T-times "
                    "logit learning rate beats the same learning rate for both",
                    needs="flexmtl run omniglot --seeds 10 --methods gumbel --sweep "
                          "sharing_lr=0.0001,0.002  # lr 0.0001; needs the Omniglot data and a "
                          "GPU")
GL_CLAIMS = (GL_BETTER, GL_OMNIGLOT)


def _assess_logit_lr(run: StudyRun) -> Assessment:
    m = _sweep_metrics(run, "gumbel", ("test_accuracy", "active_connections"))
    same, times = min(m), max(m)
    ours = table(["allocation logits' learning rate", "test accuracy %",
                  "active connections %"],
                 [[f"{v:g}", fmt(m[v]["test_accuracy"], 1, 100.0),
                   fmt(m[v]["active_connections"], 1)] for v in sorted(m)])
    claims = [
        paired_claim(GL_BETTER, f"logit lr {times:g}", m[times]["test_accuracy"], f"{same:g}",
                     m[same]["test_accuracy"], False, 2, 100.0),
        not_run(GL_OMNIGLOT),
    ]
    return Assessment(ours, claims, {f"{v:g}": {k: m[v][k]["mean"] for k in m[v]} for v in m})


register_study(Study(
    key="gm-logit-lr", paper=GUMBEL_MATRIX, figure="Sec. V-B (logit learning rate)",
    claim="4-MNISTs: allocation logits trained at T times the model's learning rate (T = 4 "
          "tasks) against the same rate for both",
    published=("Sec. V-B: 'Since the allocation logits are updated only once every T steps ... "
               "we have found that for T = 20 it is beneficial to use a higher learning rate for "
               "updating the allocation logits ... we set the learning rate for the allocation "
               "logits to be T times larger ... and found this rule of thumb to work reasonably "
               "well in practice.' The 4-MNISTs runs (App. B) use 0.005 for both. No numbers."),
    experiment="four-mnists",
    full=Protocol(10, {}, ("sharing_lr", (0.005, 0.02)), ("gumbel",),
                  note="10 seeds; the 4-MNISTs network of Table I, model learning rate 0.005: "
                       "logits at 0.005 (the paper's 4-MNISTs setting) or 0.02 = T x 0.005 (the "
                       "rule, T = 4); the paper states the rule for Omniglot (a claim below "
                       "names the Omniglot command)"),
    quick=Protocol(3, {}, ("sharing_lr", (0.005, 0.02)), ("gumbel",), note="3 seeds"),
    claims=GL_CLAIMS,
    assess=_assess_logit_lr,
    figures=copy_plots(PlotNames.SWEEP),
))


# ---------------------------------------------------------------------- Sec. III-C: inference


SAMPLE_MARGIN = 0.005  # "works well": within half a point of accuracy (ours)

GE_SAMPLE = Claim("sampling the connection pattern for every test batch works well and does "
                  "not add much noise: test accuracy with sampled patterns is about that of the "
                  f"most likely pattern (within ±{100 * SAMPLE_MARGIN:g} points; the margin is "
                  "ours)", main=True)
GE_CLAIMS = (GE_SAMPLE,)


def _assess_eval_mode(run: StudyRun) -> Assessment:
    m = _sweep_metrics(run, "gumbel", ("test_accuracy",))
    ours = table(["evaluation pattern", "test accuracy %"],
                 [[str(v), fmt(m[v]["test_accuracy"], 1, 100.0)] for v in m])
    if "sample" not in m or "greedy" not in m:
        return Assessment(ours, [not_run(GE_SAMPLE, "the runs lack an evaluation mode")])
    return Assessment(ours, [margin_claim(GE_SAMPLE, "sampled", m["sample"]["test_accuracy"],
                                          "most likely", m["greedy"]["test_accuracy"],
                                          SAMPLE_MARGIN, 2, 100.0)],
                      {v: m[v]["test_accuracy"]["mean"] for v in m})


register_study(Study(
    key="gm-eval-mode", paper=GUMBEL_MATRIX, figure="Sec. III-C (sampled vs most likely)",
    claim="4-MNISTs: evaluating with a sampled allocation per test batch is about as accurate "
          "as with the most likely allocation",
    published=("Sec. III-C: 'At inference time, it is possible to follow the same procedure as "
               "at training time, i.e. sample the connection pattern for every test batch. In "
               "our experiments, we found that this works well and does not introduce a large "
               "amount of noise in the evaluation result, since the allocation probabilities "
               "naturally tend to converge to either 0.0 or 1.0.' The paper evaluates with the "
               "most likely pattern. No numbers."),
    experiment="four-mnists",
    full=Protocol(10, {}, ("eval_mode", ("greedy", "sample")), ("gumbel",),
                  note="10 seeds; the 4-MNISTs network of Table I (the paper names no "
                       "experiment); eval_mode also applies to the validation evaluations that "
                       "select the checkpoint"),
    quick=Protocol(3, {}, ("eval_mode", ("greedy", "sample")), ("gumbel",), note="3 seeds"),
    claims=GE_CLAIMS,
    assess=_assess_eval_mode,
    figures=copy_plots(PlotNames.SWEEP),
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
EARLY = 0.25  # "the beginning of training": this share of the steps (ours)
G8_EARLY = Claim("all-zero allocations happen mostly at the beginning of training: over half of "
                 f"the expected all-zero samples fall in the first {EARLY:.0%} of the steps "
                 "(the window is ours)")
G8_CLAIMS = (G8_CONVERGE, G8_ZERO, G8_EARLY)


def _all_zero(sharing: dict) -> float:
    """Mean over (task, routed layer) of the probability that every connection of the layer
    is sampled off."""
    return _zero_probability(np.asarray(sharing["probabilities"], dtype=float),
                             sharing.get("layer_sizes"))


def _zero_probability(probs: np.ndarray, sizes: list[int] | None) -> float:
    edges = np.cumsum([0, *(sizes or [probs.shape[1]])])
    return float(np.mean([np.prod(1 - probs[:, a:b], axis=1)
                          for a, b in zip(edges[:-1], edges[1:])]))


def _early_zero_share(seed_dir: Path, sizes: list[int] | None) -> float | None:
    """Share of a run's expected number of all-zero samples (the all-zero probability
    integrated over the steps, linear between the recorded snapshots) that falls in the first
    :data:`EARLY` of its steps; None when too few snapshots or none is ever likely."""
    snaps = snapshots(seed_dir)
    if len(snaps) < 3:
        return None
    steps = np.array([step for step, _ in snaps], dtype=float)
    zero = np.array([_zero_probability(p, sizes) for _, p in snaps])
    cut = steps[0] + EARLY * (steps[-1] - steps[0])
    head = np.concatenate([steps[steps < cut], [cut]])
    total = _area(steps, zero)
    if total <= 0:
        return None
    return _area(head, np.interp(head, steps, zero)) / total


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """The trapezoid rule (numpy's is named differently before and after numpy 2)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _assess_fig8(run: StudyRun) -> Assessment:
    seeds = _gumbel_runs(run)
    if not seeds:
        return Assessment([], [not_run(c, "no Gumbel-Matrix run to read") for c in G8_CLAIMS])
    settled, start = [], []
    for seed_dir in seeds:
        snaps = snapshots(seed_dir)
        first, last = snaps[0][1], snaps[-1][1]
        settled.append(_settled_share(last))
        start.append(_settled_share(first))
    end = summarize(settled)
    zero = [_all_zero(s) for s in sharing_summaries(run, "gumbel") if s.get("probabilities")]
    ours = [f"Share of connection probabilities within {SETTLED} of 0 or 1: "
            f"{fmt(summarize(start))} at step 0, {fmt(end)} at the end ({len(seeds)} seed(s), "
            "all tasks and layers)."]
    claims = [
        bound_claim(G8_CONVERGE, "share settled at the end", settled, CONVERGED, above=True),
        bound_claim(G8_ZERO, "probability of an all-zero allocation", zero, RARE, above=False,
                    digits=4) if zero else not_run(G8_ZERO, "no run records its probabilities"),
        _judge_early(run, seeds),
    ]
    return Assessment(ours, claims, {"settled": end["mean"]})


def _judge_early(run: StudyRun, seeds: list[Path]) -> ClaimResult:
    shares = []
    for seed_dir in seeds:
        sharing = (TrainingRun(seed_dir).read_result() or {}).get("sharing") or {}
        share = _early_zero_share(seed_dir, sharing.get("layer_sizes"))
        if share is not None:
            shares.append(share)
    if len(shares) < 2:
        return not_run(G8_EARLY, "fewer than two runs record their probabilities over training")
    return bound_claim(G8_EARLY, f"share of all-zero samples in the first {EARLY:.0%} of the "
                       "steps", shares, 0.5, above=True)


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


def _cluster_embeddings(run: StudyRun, method: str
                        ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per finished seed that records them: each task's cluster (its name up to the first
    '-'), its embedding and its allocation probabilities (empty where not recorded; tasks x
    connections)."""
    out = []
    for result in seed_results(run, method):
        sharing = result.get("sharing") or {}
        emb = np.asarray(sharing.get("embeddings") or [], dtype=float)
        names = [t.get("name", "") for t in result.get("tasks") or []]
        if emb.ndim != 2 or len(names) != len(emb):
            continue
        out.append((np.array([n.split("-")[0] for n in names]), emb,
                    np.asarray(sharing.get("probabilities") or [], dtype=float)))
    return out


def _separation(run: StudyRun, method: str) -> list[float]:
    """Per finished seed: mean cosine similarity of the task embeddings within clusters minus
    across clusters (a task's cluster: its name up to the first '-')."""
    out = []
    for group, emb, _ in _cluster_embeddings(run, method):
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit.T
        same = group[:, None] == group[None, :]
        off = ~np.eye(len(group), dtype=bool)
        if (same & off).any() and (~same).any():
            out.append(float(sim[same & off].mean() - sim[~same].mean()))
    return out


def _differences(run: StudyRun, method: str) -> list[str]:
    """A sentence: in how many connections the embeddings of two tasks of one cluster differ,
    and of two tasks of different clusters (per seed the mean over pairs, then over seeds),
    all of them and those where both tasks' probabilities have settled (within
    :data:`SETTLED` of 0 or 1): differences in connections already decided, which longer
    training is unlikely to undo."""
    rows: dict[str, list[list[float]]] = {"within": [], "across": []}
    size = 0
    for group, emb, p in _cluster_embeddings(run, method):
        if p.shape != emb.shape:
            continue
        settled = _settled_mask(p)
        pairs: dict[str, list[tuple[int, int]]] = {"within": [], "across": []}
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                pairs["within" if group[i] == group[j] else "across"].append((i, j))
        if not pairs["within"] or not pairs["across"]:
            continue
        size = emb.shape[1]
        for kind, ij in pairs.items():
            differ = np.array([emb[i] != emb[j] for i, j in ij])
            both = np.array([settled[i] & settled[j] for i, j in ij])
            rows[kind].append([float(differ.sum(1).mean()), float((differ & both).sum(1).mean())])
    if not rows["within"]:
        return []
    (w_all, w_set), (a_all, a_set) = ([fmt(summarize([r[k] for r in rows[kind]]))
                                        for k in (0, 1)] for kind in ("within", "across"))
    return ["", f"Two tasks of one cluster have embeddings that differ in {w_all} of the {size} "
                f"connections (mean over pairs and seeds), {w_set} of them where both tasks' "
                f"probabilities have settled; two tasks of different clusters in {a_all}, "
                f"{a_set} settled in both."]


def _settled_mask(probabilities: np.ndarray) -> np.ndarray:
    """Which allocation probabilities lie within :data:`SETTLED` of 0 or 1."""
    return np.minimum(probabilities, 1 - probabilities) <= SETTLED


def _settled_share(probabilities: list | np.ndarray) -> float:
    """Share of allocation probabilities (nested lists or an array: tasks x connections)
    within :data:`SETTLED` of 0 or 1."""
    flat = np.concatenate([np.ravel(np.asarray(p, dtype=float)) for p in probabilities])
    return float(np.mean(_settled_mask(flat)))


def _settled_by_step(run: StudyRun, method: str) -> list[str]:
    """A sentence: the share of allocation probabilities within :data:`SETTLED` of 0 or 1 at
    each recorded step (mean over the seeds that record it), to show whether it still rises
    where training stops."""
    folder = ExperimentFolder(run.run_dir).method_dir(method)
    by_step: dict[int, list[float]] = {}
    for seed_dir in seed_dirs(folder):
        for step, p in snapshots(seed_dir):
            by_step.setdefault(step, []).append(_settled_share(p))
    if len(by_step) < 2:
        return []
    shares = ", ".join(f"{step}: {np.mean(v):.2f}" for step, v in sorted(by_step.items()))
    return ["", f"Share of the allocation probabilities within {SETTLED} of 0 or 1 by step "
                f"(mean over seeds): {shares}."]


def _clusters_assessment(cifar_claim: Claim) -> Callable[[StudyRun], Assessment]:
    """The clusters' assessment; ``cifar_claim``: the study's own CIFAR-100 claim (its
    ``needs`` names the study to rerun once CIFAR-100 is in place)."""
    return lambda run: _assess_clusters(run, cifar_claim)


def _assess_clusters(run: StudyRun, cifar_claim: Claim) -> Assessment:
    methods = run.results["methods"]
    method = next(iter(methods))
    keys = [k for k in (methods[method].get("metrics") or {}) if k.endswith("_identical")]
    rows = [[k.removesuffix("_identical"), fmt(metric(methods, method, k), 2)] for k in keys]
    ari = metric(methods, method, "cluster_ari")
    active = metric(methods, method, "active_connections")
    ours = table(["cluster", "share of its tasks with the cluster's most common embedding"],
                 rows)
    ours += ["", f"Active connections {fmt(active, 0)}%."]
    settled = [_settled_share(s["probabilities"]) for s in sharing_summaries(run, method)
               if s.get("probabilities")]
    if settled:
        ours += [f"Allocation probabilities settled (within {SETTLED} of 0 or 1) at the selected "
                 f"checkpoint: a share {fmt(summarize(settled), 2)} of them; the embeddings "
                 "are judged as they are there."]
    ours += _settled_by_step(run, method) + _fixed_from_line(run, method) \
        + _differences(run, method)
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
    claims.append(bound_claim(cifar_claim, "share of CIFAR tasks with the most common "
                              "embedding", cifar["values"], 1.0, above=False, digits=2) if cifar
                  else not_run(cifar_claim, "the CIFAR-100 cluster is a stand-in here"))
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
    full=Protocol(3, {"select_on": "last"}, None, ("gumbel-budget",),
                  note="3 seeds (the paper shows one run); 1000 outer steps; the embeddings "
                       "judged at the last step (what the allocation converged to; the "
                       "experiment's default keeps the checkpoint of best validation "
                       "accuracy); offline the CIFAR cluster is a stated stand-in (8x8 "
                       "digits)"),
    quick=Protocol(1, {"steps": 300}, None, ("gumbel-budget",),
                   note="1 seed, 300 outer steps (each a batch of every task)"),
    claims=G5_CLAIMS,
    assess=_clusters_assessment(G5_CIFAR),
    figures=copy_plots(PlotNames.allocation("gumbel-budget"),
                       PlotNames.similarity("gumbel-budget")),
    remark="The paper gives no training length.",
))


G5_CIFAR_LONG = replace(G5_CIFAR, needs=G5_CIFAR.needs.replace("gm-fig5-6", "gm-fig5-6-long"))

register_study(Study(
    key="gm-fig5-6-long", paper=GUMBEL_MATRIX, figure="Figs. 5-6 (ablation: 3000 steps)",
    claim="the 40-task clusters trained three times as long, until the allocation "
          "probabilities settle: do the MNIST and Fashion tasks then share one embedding each?",
    published=("(Ablation of Figs. 5-6: the paper gives no training length; the authors' "
               "temperature schedule, max(0.5, 50 / sqrt(step + 1)), reaches its floor only at "
               "step 10,000; at the 1000 steps of Figs. 5-6 the probabilities are still "
               "settling, as that study's readings show.)"),
    experiment="clusters",
    full=Protocol(3, {"select_on": "last", "steps": 3000}, None, ("gumbel-budget",),
                  note="3 seeds, 3000 outer steps (temperature 0.91 at the end), judged at the "
                       "last step; offline the CIFAR cluster is a stated stand-in (8x8 digits)"),
    claims=G5_CLAIMS[:-1] + (G5_CIFAR_LONG,),
    assess=_clusters_assessment(G5_CIFAR_LONG),
    figures=copy_plots(PlotNames.allocation("gumbel-budget"),
                       PlotNames.similarity("gumbel-budget"),
                       PlotNames.allocation_trajectories("gumbel-budget")),
    remark=("A long study on a CPU (three times the steps of the study it extends, whose run "
            "time the report gives): it may be run in sittings (`flexmtl pack` / `flexmtl "
            "unpack` carry the runs between machines; see docs/sittings)."),
    ablation_of="gm-fig5-6",
))


# ---------------------------------------------------------------------- Table II


GT2 = Claim("Gumbel-Matrix has a lower test error than shared bottom", main=True)
GT2_VAL = Claim("Gumbel-Matrix has a lower validation error than shared bottom (published "
                "5.69 ± 0.22 vs 6.16 ± 0.50)")
EMBED_TARGET, EMBED_MARGIN = 10.1, 2.0  # distinct embeddings: the paper's mean; margin ours
GT2_EMBED = Claim(f"on average the model converges to about {EMBED_TARGET:g} different task "
                  f"embeddings among the 20 tasks (within ±{EMBED_MARGIN:g}; the margin is ours)")
ALMOST = 0.9  # "almost all", "always", "never": at least this share (ours)
OMNIGLOT_LAYERS, OMNIGLOT_COMPONENTS, AVG_POOL = 8, 7, 5  # omniglot_components' order
GT2_EARLY = Claim("most of the diversity in processing different tasks concentrates in layers "
                  "1-4: more distinct per-layer allocations among the tasks in layers 1-4 than "
                  "in layers 5-8 (per seed, mean over the layers)")
GT2_MIDDLE = Claim("in layers 5-7 almost all components are always used, the only difference "
                   "being average pooling: at least "
                   f"{ALMOST:.0%} of the other components' allocations are active (the bound is "
                   "ours)")
GT2_LAST = Claim("in layer 8 the average pooling component is never used and the other "
                 f"components always are: at least {ALMOST:.0%} of its allocations follow that "
                 "pattern (the bound is ours)")
GT2_CLAIMS = (GT2, GT2_VAL, GT2_EMBED, GT2_EARLY, GT2_MIDDLE, GT2_LAST)


def _error(acc: dict) -> dict:
    """An accuracy summary turned into an error summary (1 - accuracy, per seed)."""
    return {**acc, "mean": 1 - acc["mean"], "values": [1 - v for v in acc["values"]]}


def _layer_usage(sharing: dict) -> dict[str, float] | None:
    """Per-layer statistics of one seed's most likely allocation (p >= 0.5) on the paper's
    Omniglot network (8 routed layers x 7 components), or None for another shape."""
    probs = np.asarray(sharing.get("probabilities") or [], dtype=float)
    sizes = sharing.get("layer_sizes") or []
    if probs.ndim != 2 or list(sizes) != [OMNIGLOT_COMPONENTS] * OMNIGLOT_LAYERS:
        return None
    active = probs >= 0.5
    layers = [active[:, i * OMNIGLOT_COMPONENTS:(i + 1) * OMNIGLOT_COMPONENTS]
              for i in range(OMNIGLOT_LAYERS)]
    distinct = [len({tuple(row) for row in layer.tolist()}) for layer in layers]
    others = [c for c in range(OMNIGLOT_COMPONENTS) if c != AVG_POOL]
    last = layers[-1]
    return {
        "early_minus_late": float(np.mean(distinct[:4]) - np.mean(distinct[4:])),
        "middle_others_active": float(np.mean([layer[:, others].mean()
                                               for layer in layers[4:7]])),
        "last_pattern": float((np.sum(last[:, others]) + np.sum(~last[:, AVG_POOL]))
                              / last.size),
    }


def _assess_table2(run: StudyRun) -> Assessment:
    methods = run.results["methods"]
    acc = {m: metric(methods, m, "test_accuracy") for m in ("gumbel", "shared-bottom")}
    err = {m: _error(a) for m, a in acc.items()}
    val = {m: metric_or_none(methods, m, "val_accuracy") for m in acc}
    val_err = {m: _error(v) for m, v in val.items() if v is not None}
    ours = table(["method", "validation error %", "test error %"],
                 [[m, fmt(val_err.get(m), 2, 100.0), fmt(err[m], 2, 100.0)] for m in err])
    claims = [paired_claim(GT2, "gumbel", err["gumbel"], "shared bottom", err["shared-bottom"],
                           True, 2, 100.0)]
    claims.append(paired_claim(GT2_VAL, "gumbel", val_err["gumbel"], "shared bottom",
                               val_err["shared-bottom"], True, 2, 100.0)
                  if len(val_err) == 2 else not_run(GT2_VAL, "the runs record no validation "
                                                             "accuracy"))
    distinct = metric_or_none(methods, "gumbel", "distinct_embeddings")
    claims.append(within_claim(GT2_EMBED, "distinct embeddings", distinct["values"],
                               EMBED_TARGET, EMBED_MARGIN, 1) if distinct else
                  not_run(GT2_EMBED, "the runs record no distinct_embeddings"))
    usage = [u for u in (_layer_usage(s) for s in sharing_summaries(run, "gumbel")) if u]
    if usage:
        ours += ["", "Most likely allocations per layer (Gumbel-Matrix, mean over seeds): "
                     "distinct allocations in layers 1-4 minus 5-8 "
                     f"{fmt(summarize([u['early_minus_late'] for u in usage]), 2)}; layers 5-7 "
                     "share of non-average-pooling allocations active "
                     f"{fmt(summarize([u['middle_others_active'] for u in usage]), 2)}; layer 8 "
                     "share following 'average pooling off, the rest on' "
                     f"{fmt(summarize([u['last_pattern'] for u in usage]), 2)}."]
        claims += [
            bound_claim(GT2_EARLY, "distinct allocations, layers 1-4 minus 5-8",
                        [u["early_minus_late"] for u in usage], 0.0, above=True, digits=2),
            bound_claim(GT2_MIDDLE, "share active", [u["middle_others_active"] for u in usage],
                        ALMOST, above=True, digits=2),
            bound_claim(GT2_LAST, "share following the pattern",
                        [u["last_pattern"] for u in usage], ALMOST, above=True, digits=2),
        ]
    else:
        why = ("no finished Gumbel-Matrix run records an allocation of the paper's 8 layers x 7 "
               "components")
        claims += [not_run(c, why) for c in (GT2_EARLY, GT2_MIDDLE, GT2_LAST)]
    return Assessment(ours, claims)


register_study(Study(
    key="gm-table2", paper=GUMBEL_MATRIX, figure="Table II",
    claim="Omniglot, 20 alphabets: Gumbel-Matrix 6.48% test error vs shared bottom 6.75%",
    published=("Test error % (mean ± std, 10 runs): single task 39.19, soft ordering 33.41, "
               "CMTR 12.81, MoE 7.81, shared bottom 6.75 ± 0.33, Gumbel-Matrix 6.48 ± 0.28; "
               "validation error: shared bottom 6.16 ± 0.50, Gumbel-Matrix 5.69 ± 0.22. Sec. "
               "V-B: on average 10.1 different task embeddings; usage trends consistent across "
               "runs: in layers 1-4 all components are dropped at a similar rate and most of "
               "the diversity between tasks lies there; in layers 5-7 almost all components "
               "are always used, tasks differing only in average pooling; in layer 8 average "
               "pooling is never used and the others always are."),
    experiment="omniglot",
    full=Protocol(10, {}, None, ("gumbel", "shared-bottom"), note="10 seeds as the paper"),
    needs=("omniglot",), gpu=True, fixture_test="tests/test_gumbel_experiments.py",
    claims=GT2_CLAIMS,
    assess=_assess_table2,
    figures=copy_plots(PlotNames.allocation("gumbel")),
))
