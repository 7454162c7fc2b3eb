"""Did a learned-sharing method find planted structure? (:mod:`flexmtl.data.planted`)

:func:`order_recovery` scores soft-order scales against the true layer orders, beside a
Monte-Carlo chance level of the same statistic; :func:`group_recovery` scores task
embeddings against the true groups of tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from flexmtl.errors import ConfigError, ShapeError

__all__ = ["adjusted_rand_index", "group_recovery", "order_recovery"]

#: relabellings are enumerated up to this many layers (7! = 5,040 of them), found by linear
#: assignment beyond it (both exact: the tests check they agree)
_ENUMERATE = 7


def order_recovery(scales: np.ndarray, orders: Sequence[Sequence[int]], *,
                   relabel: bool = False, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """How many (task, depth) positions put the most weight on the true layer.

    Args:
        scales: ``[tasks, layers, depths]`` (``SoftOrdering.scales()``).
        orders: ``orders[t][d]``, the layer task ``t`` truly applies at depth ``d``.
        relabel: the blocks were learned, so layer ``l`` of the model may play any true
            layer: count matches under the relabelling of layers that matches most (one
            for all tasks and depths).
        draws: Monte-Carlo draws of the chance level: the same statistic for a layer drawn
            uniformly at every position.

    Returns:
        ``order_match`` (fraction of positions matched), ``order_chance`` (its mean under
        chance), ``order_chance_p95`` (95th percentile under chance) and ``scale_max`` (mean
        over positions of the largest scale; 1/layers when the scales are uniform).
    """
    scales = np.asarray(scales, dtype=np.float64)
    truth = np.asarray(orders, dtype=np.int64)
    if scales.ndim != 3 or truth.shape != (scales.shape[0], scales.shape[2]):
        raise ShapeError(f"scales must be [tasks, layers, depths] and orders [tasks, depths]; "
                         f"got {scales.shape} and {truth.shape}")
    layers = scales.shape[1]
    if truth.size and (truth.min() < 0 or truth.max() >= layers):
        raise ConfigError(f"orders name layers outside 0..{layers - 1}")
    picked = scales.argmax(axis=1)  # [tasks, depths]
    rng = np.random.default_rng(seed)
    chance_picks = rng.integers(0, layers, size=(draws, *truth.shape))
    score = _relabelled_matches if relabel else _matches
    chance = score(chance_picks, truth, layers)
    return {"order_match": float(score(picked[None], truth, layers)[0]),
            "order_chance": float(chance.mean()),
            "order_chance_p95": float(np.quantile(chance, 0.95)),
            "scale_max": float(scales.max(axis=1).mean())}


def _matches(picks: np.ndarray, truth: np.ndarray, layers: int) -> np.ndarray:
    """Fraction of positions where ``picks[k] == truth``, per draw ``k``."""
    result: np.ndarray = (picks == truth[None]).mean(axis=(1, 2))
    return result


def _relabelled_matches(picks: np.ndarray, truth: np.ndarray, layers: int) -> np.ndarray:
    """:func:`_matches` under the best relabelling of layers, per draw."""
    # counts[k, a, b]: positions where draw k picked a and the truth is b
    counts = np.zeros((len(picks), layers, layers))
    flat = picks.reshape(len(picks), -1)
    np.add.at(counts, (np.arange(len(picks))[:, None], flat, truth.reshape(1, -1)), 1.0)
    if layers <= _ENUMERATE:
        perms = np.array(list(itertools.permutations(range(layers))))  # [P, layers]
        best = counts[:, np.arange(layers)[None, :], perms].sum(axis=2).max(axis=1)
    else:
        from scipy.optimize import linear_sum_assignment

        best = np.array([c[linear_sum_assignment(c, maximize=True)].sum() for c in counts])
    result: np.ndarray = best / truth.size
    return result


def adjusted_rand_index(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings (1: the same partition; about
    0: as alike as chance). Two partitions into one cluster each score 1, and so do
    labelings of fewer than two items (there is no pair to disagree on)."""
    la, lb = np.asarray(a), np.asarray(b)
    if la.shape != lb.shape or la.ndim != 1:
        raise ShapeError(f"labelings must be two equal 1-d sequences, got {la.shape}, "
                         f"{lb.shape}")
    if len(la) < 2:
        return 1.0
    _, ai = np.unique(la, return_inverse=True)
    _, bi = np.unique(lb, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1.0)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(la)]))
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def group_recovery(embeddings: np.ndarray, groups: Sequence[int]) -> dict[str, float]:
    """How well task embeddings (``[tasks, components]``) reveal the true ``groups``.

    Returns ``group_ari`` (adjusted Rand index of an average-linkage clustering of the
    embeddings by cosine distance into as many clusters as there are groups),
    ``within_group_similarity`` and ``across_group_similarity`` (mean cosine similarity of
    the task pairs of one group, of different groups) and ``groups_separated`` (1 when every
    within-group pair is more similar than every across-group pair).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    e = np.asarray(embeddings, dtype=np.float64)
    truth = np.asarray(groups)
    if e.ndim != 2 or len(e) != len(truth):
        raise ShapeError(f"embeddings must be [tasks, components] for {len(truth)} tasks, "
                         f"got {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    sim = (e @ e.T) / np.maximum(norms[:, None] * norms[None, :], np.finfo(float).tiny)
    zero = norms == 0
    sim[zero[:, None] & zero[None, :]] = 1.0  # two unused tasks: identical
    np.fill_diagonal(sim, 1.0)
    same = truth[:, None] == truth[None, :]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    within, across = sim[same & upper], sim[~same & upper]
    k = len(np.unique(truth))
    if k in (1, len(truth)):
        labels = truth
    else:
        distance = squareform(np.clip(1.0 - sim, 0.0, None), checks=False)
        labels = fcluster(linkage(distance, method="average"), k, criterion="maxclust")
    return {"group_ari": adjusted_rand_index(truth, labels),
            "within_group_similarity": float(within.mean()) if within.size else float("nan"),
            "across_group_similarity": float(across.mean()) if across.size else float("nan"),
            "groups_separated": float(bool(within.size and across.size)
                                      and within.min() > across.max())}
