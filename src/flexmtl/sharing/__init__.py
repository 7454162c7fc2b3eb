"""How tasks share layers: orderings of shared blocks (soft layer ordering paper) and
learned allocation of components to tasks (Gumbel-Matrix paper)."""

from __future__ import annotations

from torch import nn

from flexmtl.sharing.allocation import (
    FixedAllocation,
    GumbelMatrixAllocation,
    TemperatureSchedule,
)
from flexmtl.sharing.base import SharingCore, find_cores
from flexmtl.sharing.methods import (
    ALLOCATION_DEFAULTS,
    METHODS,
    Method,
    make_core,
    method_options,
    methods_of,
    register_method,
    routed_core,
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
from flexmtl.sharing.routed import RoutedCore, RoutedLayer


def may_leave_unused_parameters(model: nn.Module) -> bool:
    """Whether a training step of ``model`` may leave some of its sharing parameters
    without a gradient: a core says so, or routed layers sit outside any routed core."""
    cores = find_cores(model)
    if any(core.may_leave_unused_parameters() for core in cores):
        return True
    in_cores = {id(m) for core in cores for m in core.modules()}
    return any(isinstance(m, RoutedLayer) and id(m) not in in_cores for m in model.modules())


def shared_random_modules(model: nn.Module) -> list[GumbelMatrixAllocation]:
    """The modules of ``model`` whose random draws must be the same on every rank of
    data-parallel training (the Gumbel-Matrix allocation samples, one per task and batch):
    each draws from its ``generator`` attribute, which the trainer sets to one shared
    stream (None: torch's default generator)."""
    return [m for m in model.modules() if isinstance(m, GumbelMatrixAllocation)]


__all__ = [
    "SharingCore",
    "find_cores",
    "may_leave_unused_parameters",
    "shared_random_modules",
    "ALLOCATION_DEFAULTS",
    "Method",
    "METHODS",
    "register_method",
    "make_core",
    "method_options",
    "methods_of",
    "routed_core",
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
]
