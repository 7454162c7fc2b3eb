"""The sharing methods by the names the CLI, configs and experiments use: one registry for
all of them, in the spirit of timm's ``register_model`` / ``create_model``.

A method is a :class:`Method`: a family, a builder of its :class:`~.base.SharingCore`, and
the config keys it reads. Two families are built in:

* ``"ordering"`` (soft ordering paper) -- the builder takes the shared blocks:
  ``single``, ``parallel``, ``permuted``, ``soft``;
* ``"allocation"`` (Gumbel-Matrix paper) -- the builder takes the core's layers, where a
  list of modules is a routed layer of those components and a module is applied to every
  task: ``gumbel``, ``gumbel-budget``, ``shared-bottom``, ``no-sharing``.

An experiment of a family accepts every method registered for that family, so a method of
your own runs in the papers' experiments as soon as it is registered::

    register_method(Method("my-method", "ordering", MyCore, options=("dropout",)))
    make_core("my-method", blocks, num_tasks)          # or: flexmtl run uci --methods my-method
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError
from flexmtl.registry import Registry
from flexmtl.sharing.allocation import Combine, EvalMode, TemperatureSchedule
from flexmtl.sharing.base import SharingCore
from flexmtl.sharing.ordering import (
    ParallelOrdering,
    PermutedOrdering,
    SingleTaskCore,
    SoftOrdering,
    infer_feature_shape,
    probe_shape,
)
from flexmtl.sharing.routed import RoutedCore, RoutedLayer

__all__ = ["ALLOCATION_DEFAULTS", "Method", "METHODS", "register_method", "make_core",
           "method_options", "methods_of", "routed_core"]

#: ``build(layers, num_tasks, *, seed=None, **options) -> core``
CoreBuilder = Callable[..., SharingCore]


@dataclass(frozen=True)
class Method:
    """A way of sharing, by name.

    Args:
        name: the name configs and the CLI use.
        family: which experiments can run it (``"ordering"``, ``"allocation"`` or your own).
        build: ``build(layers, num_tasks, *, seed=None, **options) -> SharingCore``;
            ``seed`` (the run's) is for what the method draws before training.
        options: the experiment config keys the builder reads (passed on when present; see
            :func:`method_options`).
        summary: one line for listings.
    """

    name: str
    family: str
    build: CoreBuilder
    options: tuple[str, ...] = ()
    summary: str = ""


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Add a method (built-in or your own) to :data:`METHODS`."""
    return METHODS.register(method.name, method, overwrite=overwrite)


def methods_of(family: str) -> tuple[str, ...]:
    """Names of the registered methods of ``family``, built-in ones in paper order first."""
    return tuple(name for name, method in METHODS.items() if method.family == family)


def make_core(method: str, layers: Sequence[Any], num_tasks: int, *,
              seed: int | None = None, **options: Any) -> SharingCore:
    """Build the core of ``method`` (any name in :data:`METHODS`) over ``layers``.

    Ordering methods take the shared blocks; allocation methods take the layers (a list of
    modules: a routed layer of those components; a module: applied to every task) and need
    ``feature_shape``. ``seed`` draws what a method fixes before training (the permutations
    of ``"permuted"``); ``options`` go to the method's builder (``dropout``, ``depth``,
    ``gate``, ``budget``, ``p_init``, ...).
    """
    spec = METHODS.get(method)
    if seed is not None:
        options["seed"] = seed
    return spec.build(layers, num_tasks, **options)


def method_options(method: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``method`` found in an experiment config ``cfg``."""
    return {key: cfg[key] for key in METHODS.get(method).options if key in cfg}


# ---------------------------------------------------------------------- orderings


def _ordering(cls: type[SharingCore]) -> CoreBuilder:
    def build(blocks: Sequence[nn.Module], num_tasks: int, *, seed: int | None = None,
              depth: int | None = None, **options: Any) -> SharingCore:
        if depth:  # 0 or None (the configs' "unset"): one depth per block
            options["depth"] = depth
        if cls is PermutedOrdering and seed is not None and "generator" not in options:
            options["generator"] = torch.Generator().manual_seed(seed)
        return cls(blocks, num_tasks, **options)

    return build


# ---------------------------------------------------------------------- allocations


def routed_core(layers: Sequence[nn.Module | Sequence[nn.Module]], num_tasks: int, *,
                feature_shape: Sequence[int] | None = None, allocation: Any = "gumbel",
                p_init: float = 0.5, eval_mode: EvalMode = "greedy",
                tau_scale: float = TemperatureSchedule.scale,
                tau_min: float = TemperatureSchedule.min_tau, combine: Combine | None = None,
                budget: float | None = None, budget_weight: float = 1.0,
                sharing_lr_multiplier: float | None = None, fused: bool = True,
                seed: int | None = None) -> RoutedCore:
    """A :class:`RoutedCore` over ``layers``: each list of modules becomes a
    :class:`RoutedLayer` of those components with ``allocation`` (its input shape is
    worked out from ``feature_shape``; by default the input size of the first layer's first
    dense module), each module is applied to every task.

    ``tau_scale`` and ``tau_min`` give the temperature ``max(tau_min, tau_scale /
    sqrt(step + 1))``; ``budget`` adds the penalty of Sec. III-D.
    """
    temperature = TemperatureSchedule(tau_scale, tau_min)
    built: list[nn.Module] = []
    if feature_shape is None:
        if not layers:
            raise ConfigError("a routed core needs at least one layer")
        first = layers[0]
        feature_shape = infer_feature_shape(
            first if isinstance(first, nn.Module) else next(iter(first), nn.Identity()))
    shape = tuple(feature_shape)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Module):
            built.append(layer)
            shape = probe_shape(layer, shape, f"layer {i} ({type(layer).__name__})")
            continue
        if not isinstance(layer, Sequence) or not layer:
            raise ShapeError(f"layer {i} must be a module or a non-empty list of components, "
                             f"got {type(layer).__name__}")
        routed = RoutedLayer(list(layer), num_tasks, shape, allocation, p_init=p_init,
                             combine=combine, temperature=temperature, eval_mode=eval_mode,
                             fused=fused)
        built.append(routed)
        shape = routed.output_shape
    return RoutedCore(built, num_tasks, feature_shape, budget=budget,
                      budget_weight=budget_weight, sharing_lr_multiplier=sharing_lr_multiplier)


#: the allocation methods' options and their defaults (those of :func:`routed_core`, and the
#: budget of Table I for ``gumbel-budget``): the table experiments start their configs from
ALLOCATION_DEFAULTS: dict[str, Any] = {
    **{key: inspect.signature(routed_core).parameters[key].default
       for key in ("p_init", "eval_mode", "tau_scale", "tau_min", "budget_weight")},
    "budget": 0.75,
}


def _allocation(name: str, allocation: str, budgeted: bool = False) -> CoreBuilder:
    def build(layers: Sequence[Any], num_tasks: int, **options: Any) -> SharingCore:
        if budgeted and options.get("budget") is None:
            raise ConfigError(f"method {name!r} needs a budget (a fraction in (0, 1])")
        options.setdefault("allocation", allocation)
        return routed_core(layers, num_tasks, **options)

    return build


_ORDERING_OPTIONS = ("dropout",)
_GUMBEL_OPTIONS = ("p_init", "eval_mode", "tau_scale", "tau_min")

for _method in (
    Method("single", "ordering", _ordering(SingleTaskCore), _ORDERING_OPTIONS,
           "each task trains its own copy of the blocks"),
    Method("parallel", "ordering", _ordering(ParallelOrdering), _ORDERING_OPTIONS,
           "Eq. 2: every task applies the shared blocks in one order"),
    Method("permuted", "ordering", _ordering(PermutedOrdering), _ORDERING_OPTIONS,
           "Eq. 3: a fixed random order of the shared blocks per task"),
    Method("soft", "ordering", _ordering(SoftOrdering),
           (*_ORDERING_OPTIONS, "gate", "depth", "scale_lr_multiplier"),
           "Eq. 7: each task learns a soft order of the shared blocks"),
    Method("gumbel", "allocation", _allocation("gumbel", "gumbel"), _GUMBEL_OPTIONS,
           "Gumbel-Matrix: learned binary allocation of components to tasks"),
    Method("gumbel-budget", "allocation", _allocation("gumbel-budget", "gumbel", budgeted=True),
           (*_GUMBEL_OPTIONS, "budget", "budget_weight"),
           "Gumbel-Matrix with the budget penalty (Sec. III-D)"),
    Method("shared-bottom", "allocation", _allocation("shared-bottom", "shared-bottom"), (),
           "every task uses every component, outputs summed"),
    Method("no-sharing", "allocation", _allocation("no-sharing", "no-sharing"), (),
           "task i uses component i only"),
):
    register_method(_method)
