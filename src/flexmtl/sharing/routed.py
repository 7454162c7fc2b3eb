"""Routed layers and the routed core of the Gumbel-Matrix paper (Maziarz et al., Sec. III).

A *routed layer* holds C components (any modules whose outputs have one shape); an
allocation (:mod:`flexmtl.sharing.allocation`) says which components each task uses, and
the layer outputs the mean of the active components (zero when none is active):

    y = sum_c A[t, c] * f_c(h) / max(sum_c A[t, c], 1)

:class:`RoutedCore` -- routed layers and plain shared layers in sequence: a
:class:`~flexmtl.sharing.base.SharingCore` with the budget penalty (III-D) and the task
embeddings (III-E).

A routed layer runs its components of the same kind as one op (one convolution with
stacked weights, a grouped convolution, a batched matmul:
:mod:`flexmtl.fusion.components`); ``fused=False`` keeps the per-component reference path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError
from flexmtl.fusion import Fusable
from flexmtl.fusion.components import FusionPlan, combine_components, plan_fusion
from flexmtl.fusion.hooks import blocks_state, global_hooks, has_hooks
from flexmtl.fusion.kernels import active_count
from flexmtl.sharing.allocation import (
    COMBINES,
    Allocation,
    Combine,
    EvalMode,
    GumbelMatrixAllocation,
    TemperatureSchedule,
    make_allocation,
)
from flexmtl.sharing.base import SharingCore
from flexmtl.sharing.ordering import infer_feature_shape, probe_shape

__all__ = ["RoutedLayer", "RoutedCore"]


class RoutedLayer(Fusable, nn.Module):
    """One modular layer: components combined per task by an allocation (Sec. III).

    Args:
        components: the layer's modules; their outputs must have one shape for inputs of
            ``input_shape`` (checked here by a probe forward).
        num_tasks: number of tasks T.
        input_shape: per-example input shape.
        allocation: ``"gumbel"``, ``"shared-bottom"``, ``"no-sharing"``, a ``[T, C]`` 0/1
            pattern, or an :class:`Allocation`.
        p_init: initial connection probability of ``"gumbel"`` (0.5; 0.97 for deep nets).
        combine: ``"mean"`` of the active components (zero if none) or their ``"sum"``; by
            default ``"sum"`` for shared bottom and ``"mean"`` otherwise.
        temperature: ``tau(step)``; default :class:`TemperatureSchedule`.
        eval_mode: ``"greedy"`` (most likely pattern) or ``"sample"`` (Sec. III-C).
        fused: run components of the same kind as one op (see
            :mod:`flexmtl.fusion.components`); False runs them one by one (the
            reference). Same outputs and gradients up to rounding; may be switched later.

    In training every component runs when the allocation is learned, so that inactive
    connections get a gradient (Sec. III-B); otherwise inactive components are skipped.
    The buffer ``num_steps`` counts training forwards (per-task batches) and sets ``tau``.
    The fusion plan (:attr:`plan`) follows the components: it is made again when one is
    replaced or gets a hook (components with hooks run their own ``forward``). Alike
    components that cannot be fused run one by one, with a warning (once).
    """

    num_steps: torch.Tensor  # a buffer

    def __init__(
        self,
        components: Sequence[nn.Module],
        num_tasks: int,
        input_shape: Sequence[int],
        allocation: str | Allocation | torch.Tensor | Sequence[Sequence[float]] = "gumbel",
        *,
        p_init: float = 0.5,
        combine: Combine | None = None,
        temperature: Callable[[int], float] | None = None,
        eval_mode: EvalMode = "greedy",
        fused: bool = True,
    ):
        super().__init__()
        components = list(components)
        if not components:
            raise ConfigError("a routed layer needs at least one component")
        if not all(isinstance(c, nn.Module) for c in components):
            raise ConfigError("every component must be a torch.nn.Module")
        self.input_shape = tuple(input_shape)
        shapes = [
            probe_shape(c, self.input_shape, f"component {j} ({type(c).__name__})")
            for j, c in enumerate(components)
        ]
        for j, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ShapeError(
                    f"component {j} ({type(components[j]).__name__}) maps per-example shape "
                    f"{self.input_shape} to {shape}, but component 0 "
                    f"({type(components[0]).__name__}) gives {shapes[0]}; the components of a "
                    "routed layer must have one output shape"
                )
        self.output_shape = shapes[0]
        self.components = nn.ModuleList(components)
        self.num_tasks = num_tasks
        self.allocation = make_allocation(allocation, num_tasks, len(components), p_init, eval_mode)
        self.combine = combine or self.allocation.default_combine
        if self.combine not in COMBINES:
            raise ConfigError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        self.temperature = temperature or TemperatureSchedule()
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.fused = fused
        self._plan: tuple[tuple, FusionPlan] | None = None
        self._warned_unfused = False

    @property
    def plan(self) -> FusionPlan:
        """:func:`plan_fusion` of the components, cached until a component, a mode or a
        hook changes."""
        key = blocks_state(self.components)
        cached = getattr(self, "_plan", None)  # absent in layers pickled by older versions
        if cached is None or cached[0] != key:
            cached = self._plan = (key, plan_fusion(self.components, self.input_shape))
            self._warn_unfused(cached[1])
        return cached[1]

    def _warn_unfused(self, plan: FusionPlan) -> None:
        alike = plan.alike_unrecognised(self.components)
        if not alike or getattr(self, "_warned_unfused", False):
            return
        self._warned_unfused = True
        names = sorted({type(self.components[c]).__name__ for c in alike})
        warnings.warn(
            f"RoutedLayer runs components {alike} ({', '.join(names)}) one by one: only "
            "chains of Conv2d, Linear, GroupNorm and parameter-free activations without "
            "hooks run as one op (see flexmtl.fusion.components)", stacklevel=3)

    @property
    def num_components(self) -> int:
        return len(self.components)

    def probs(self) -> torch.Tensor:
        """``[T, C]`` connection probabilities (a fixed pattern's are 0/1), differentiable."""
        return self.allocation.probs()

    def probabilities(self) -> torch.Tensor:
        """:meth:`probs` as plain numbers (no autograd graph), to read or plot."""
        return self.allocation.probs().detach()

    def pattern(self, task: int) -> torch.Tensor:
        """The binary pattern ``[C]`` of ``task`` used at evaluation."""
        return self.allocation.pattern(task)

    def expected_active(self, task: int) -> torch.Tensor:
        """Expected fraction of this layer's components that ``task`` uses."""
        return self.probs()[task].mean()

    def forward(self, h: torch.Tensor, task: int) -> torch.Tensor:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task index {task} out of range for {self.num_tasks} tasks")
        if tuple(h.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"routed layer expects inputs of per-example shape {self.input_shape}, got "
                f"{tuple(h.shape)}"
            )
        tau = self.temperature(int(self.num_steps))
        if self.training:
            self.num_steps.add_(1)
        mean = self.combine == "mean"
        allocation = self.allocation
        if (self.fused and self.training and type(allocation) is GumbelMatrixAllocation
                and allocation.training and not has_hooks(allocation)
                and not global_hooks()):
            # one autograd node for the sample and the mean (the same values and noise)
            weights = allocation.sample_combined(task, tau, mean)
            return combine_components(self.plan, self.components, h, weights,
                                      list(range(self.num_components)), False,
                                      self.output_shape)
        weights = self.allocation(task, tau)  # [C], one row per (task, batch)
        if self.training and self.allocation.learned:
            active = list(range(self.num_components))
        else:
            active = weights.nonzero().flatten().tolist()
        if not active:
            return h.new_zeros(h.shape[0], *self.output_shape)
        if self.fused:
            return combine_components(self.plan, self.components, h, weights, active, mean,
                                      self.output_shape)
        outs = torch.stack([self.components[c](h) for c in active])  # [A, B, ...]
        w = weights[active].reshape(-1, *(1,) * (outs.dim() - 1))
        out = (w * outs).sum(dim=0)
        if self.combine == "mean":
            out = out / active_count(weights)  # mean of the active ones; 0 if none
        return out


class RoutedCore(SharingCore):
    """Routed layers and plain shared modules in sequence: a
    :class:`~flexmtl.sharing.base.SharingCore` of kind ``"allocation"``.

    Args:
        layers: :class:`RoutedLayer` s and plain modules; a plain module (stem conv,
            GroupNorm + ReLU, pooling, flatten, dropout) is applied to every task.
        num_tasks: number of tasks T.
        feature_shape: per-example input shape; by default the first layer's (a routed
            layer's ``input_shape``, or a dense module's input size).
        budget: maximum expected fraction of active allocations per task, in (0, 1]; the
            penalty of Sec. III-D is added by :meth:`regularization` (None: no penalty).
        budget_weight: lambda of the budget penalty.
        sharing_lr_multiplier: allocation learning rate / model learning rate
            (:meth:`sharing_lr`); default the number of tasks, the rule of thumb of Sec. V-B
            (the logits of a task are updated once every T steps). 1 for the 4-MNISTs setup.
    """

    kind = "allocation"
    output_shape: tuple[int, ...]  # an attribute (SharingCore only reads it)

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_tasks: int,
        feature_shape: Sequence[int] | None = None,
        budget: float | None = None,
        budget_weight: float = 1.0,
        sharing_lr_multiplier: float | None = None,
    ):
        super().__init__()
        layers = list(layers)
        if not any(isinstance(layer, RoutedLayer) for layer in layers):
            raise ConfigError("a routed core needs at least one RoutedLayer")
        if budget is not None:
            _check_budget(budget, budget_weight)
        if feature_shape is None:
            first = layers[0]
            feature_shape = (first.input_shape if isinstance(first, RoutedLayer)
                             else infer_feature_shape(first))
        self.feature_shape = tuple(feature_shape)
        shape = self.feature_shape
        for i, layer in enumerate(layers):
            if isinstance(layer, RoutedLayer):
                if layer.num_tasks != num_tasks:
                    raise ConfigError(
                        f"layer {i} is routed for {layer.num_tasks} tasks, the core has {num_tasks}"
                    )
                if layer.input_shape != shape:
                    raise ShapeError(
                        f"layer {i} (RoutedLayer) expects per-example shape {layer.input_shape} "
                        f"but receives {shape}"
                    )
                shape = layer.output_shape
            else:
                shape = probe_shape(layer, shape, f"layer {i} ({type(layer).__name__})")
        self.output_shape = shape
        self.layers = nn.ModuleList(layers)
        self.num_tasks = num_tasks
        self.budget = budget
        self.budget_weight = budget_weight
        if sharing_lr_multiplier is not None and sharing_lr_multiplier <= 0:
            raise ConfigError(f"sharing_lr_multiplier must be > 0, got {sharing_lr_multiplier}")
        self.sharing_lr_multiplier = float(sharing_lr_multiplier or num_tasks)

    @property
    def routed_layers(self) -> list[RoutedLayer]:
        return [layer for layer in self.layers if isinstance(layer, RoutedLayer)]

    def forward(self, h: torch.Tensor, task: int) -> torch.Tensor:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task index {task} out of range for {self.num_tasks} tasks")
        if tuple(h.shape[1:]) != self.feature_shape:
            raise ShapeError(
                f"routed core expects inputs of shape (batch, "
                f"{', '.join(map(str, self.feature_shape))}), got {tuple(h.shape)}; check the "
                "encoder output size"
            )
        for layer in self.layers:
            h = layer(h, task) if isinstance(layer, RoutedLayer) else layer(h)
        return h

    def sharing_parameters(self) -> list[nn.Parameter]:
        """The allocation logits (own optimiser group, no weight decay)."""
        return [p for layer in self.routed_layers for p in layer.allocation.parameters()]

    def sharing_lr(self, lr: float) -> float:
        """``lr`` times :attr:`sharing_lr_multiplier`."""
        return lr * self.sharing_lr_multiplier

    def sharing_snapshot(self) -> torch.Tensor:
        """Connection probabilities ``[T, total components]`` over the routed layers
        (differentiable: the budget penalty is computed from them)."""
        return torch.cat([layer.probs() for layer in self.routed_layers], dim=1)

    def probabilities(self) -> torch.Tensor:
        """:meth:`sharing_snapshot` as plain numbers (no autograd graph), to read or plot."""
        return self.sharing_snapshot().detach()

    @torch.no_grad()
    def summary(self) -> dict:
        """Components per routed layer, connection probabilities ``[T][components]`` and the
        binary task embeddings (Sec. III-E)."""
        return {"kind": self.kind,
                "layer_sizes": [layer.num_components for layer in self.routed_layers],
                "probabilities": self.sharing_snapshot().tolist(),
                "embeddings": self.embeddings().int().tolist()}

    def may_leave_unused_parameters(self) -> bool:
        """A fixed pattern skips components, and a round of one task skips the others'."""
        return True

    def expected_active(self, task: int) -> torch.Tensor:
        """``e_c``: expected fraction of active allocations of ``task`` (Sec. III-D)."""
        return self.sharing_snapshot()[task].mean()

    def budget_penalty(self, task: int, budget: float, weight: float = 1.0) -> torch.Tensor:
        """Sec. III-D: ``lambda * max(0, e_c - b)`` for the current task, from probabilities."""
        _check_budget(budget, weight)
        return weight * torch.relu(self.expected_active(task) - budget)

    def regularization(self, task: int) -> torch.Tensor | None:
        """The budget penalty with this core's ``budget``/``budget_weight`` (None without)."""
        if self.budget is None:
            return None
        return self.budget_penalty(task, self.budget, self.budget_weight)

    @torch.no_grad()
    def embeddings(self) -> torch.Tensor:
        """Sec. III-E: ``[T, total components]`` binary evaluation patterns, concatenated."""
        return torch.stack(
            [
                torch.cat([layer.pattern(t) for layer in self.routed_layers])
                for t in range(self.num_tasks)
            ]
        )

    def active_connections(self) -> float:
        """Fraction of (task, component) pairs active at evaluation (Table I)."""
        return float(self.embeddings().mean())


def _check_budget(budget: float, weight: float) -> None:
    if not 0.0 < budget <= 1.0:
        raise ConfigError(f"budget must be in (0, 1], got {budget}")
    if weight < 0:
        raise ConfigError(f"budget weight must be >= 0, got {weight}")
