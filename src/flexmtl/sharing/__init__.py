"""How tasks share layers: orderings of shared blocks (soft layer ordering paper) and
learned allocation of components to tasks (Gumbel-Matrix paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flexmtl.registry import Registry
from flexmtl.sharing.allocation import (
    FixedAllocation,
    GumbelMatrixAllocation,
    RoutedCore,
    RoutedLayer,
    TemperatureSchedule,
    cosine_similarity,
    group_tasks,
)
from flexmtl.sharing.ordering import (
    ParallelOrdering,
    PermutedOrdering,
    SharedCore,
    SingleTaskCore,
    SoftOrdering,
    infer_feature_shape,
    random_permutations,
)

#: Methods of sharing a core, by the names the CLI and configs use.
CORES: Registry[type[SharedCore]] = Registry("method")
CORES.register("single", SingleTaskCore)
CORES.register("parallel", ParallelOrdering)
CORES.register("permuted", PermutedOrdering)
CORES.register("soft", SoftOrdering)


def make_core(
    method: str,
    blocks: Sequence[nn.Module],
    num_tasks: int,
    *,
    seed: int | None = None,
    **kwargs,
) -> SharedCore:
    """Build the shared core of ``method`` (see :data:`CORES`) over ``blocks``.

    ``seed`` draws the permutations of ``"permuted"``; other keyword arguments go to the
    core's constructor (``depth``, ``dropout``, ``feature_shape``, ``gate``, ...).
    """
    cls = CORES.get(method)
    if cls is PermutedOrdering and "generator" not in kwargs and seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return cls(blocks, num_tasks, **kwargs)


__all__ = [
    "CORES",
    "make_core",
    "SharedCore",
    "ParallelOrdering",
    "PermutedOrdering",
    "SoftOrdering",
    "SingleTaskCore",
    "infer_feature_shape",
    "random_permutations",
    "FixedAllocation",
    "GumbelMatrixAllocation",
    "RoutedCore",
    "RoutedLayer",
    "TemperatureSchedule",
    "cosine_similarity",
    "group_tasks",
]
