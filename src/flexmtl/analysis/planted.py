"""Did a learned-sharing method find planted structure? (:mod:`flexmtl.data.planted`)

:func:`order_recovery` scores soft-order scales against the true layer orders, beside a
Monte-Carlo chance level of the same statistic.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from flexmtl.errors import ConfigError, ShapeError

__all__ = ["order_recovery"]

#: relabellings are enumerated up to this many layers (8! = 40,320), assigned beyond it
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
