"""Learned parameter allocation: the Gumbel-Matrix (Maziarz et al., Sec. III).

A *routed layer* holds C components (any modules whose outputs have one shape). For T
tasks a binary allocation matrix ``A[t, c]`` says which components task ``t`` uses; the
layer outputs the mean of the active components (zero when none is active):

    y = sum_c A[t, c] * f_c(h) / max(sum_c A[t, c], 1)

* :class:`GumbelMatrixAllocation` -- Sec. III-A/B: ``A`` is learned. Each entry is a
  Bernoulli variable held as two logits; one straight-through Gumbel-softmax sample is
  drawn per (task, batch). Evaluation uses the most likely pattern, ``p >= 0.5`` (III-C).
* :class:`FixedAllocation` -- the baselines: shared bottom (all ones, outputs *summed*) and
  no sharing (task ``i`` uses component ``i`` only), or any user pattern.
* :class:`RoutedCore` -- routed layers and plain shared layers in sequence, with the
  ``core(h, task)`` interface of the other shared cores, the budget penalty (III-D) and
  the task embeddings (III-E).

A routed layer runs its components of the same kind as one op (one convolution with
stacked weights, a grouped convolution, a batched matmul:
:mod:`flexmtl.fusion.components`); ``fused=False`` keeps the per-component reference path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError, UnknownNameError
from flexmtl.fusion import Fusable
from flexmtl.fusion.components import FusionPlan, combine_components, plan_fusion
from flexmtl.fusion.hooks import blocks_state, global_hooks, has_hooks
from flexmtl.fusion.kernels import StraightThroughRow
from flexmtl.sharing.base import SharingCore
from flexmtl.sharing.ordering import probe_shape

__all__ = [
    "TemperatureSchedule",
    "Allocation",
    "GumbelMatrixAllocation",
    "FixedAllocation",
    "ALLOCATIONS",
    "make_allocation",
    "sample_gumbel",
    "RoutedLayer",
    "RoutedCore",
    "cosine_similarity",
    "group_tasks",
]

#: allocation methods by the names configs use
ALLOCATIONS = ("gumbel", "shared-bottom", "no-sharing")
COMBINES = ("mean", "sum")
EVAL_MODES = ("greedy", "sample")


@dataclass(frozen=True)
class TemperatureSchedule:
    """Gumbel-softmax temperature ``tau(step) = max(min_tau, scale / sqrt(step + 1))``.

    The defaults are the authors' code (scale 50, floor 0.5); ``step`` counts per-task
    batches. :meth:`constant` gives a fixed temperature.
    """

    scale: float = 50.0
    min_tau: float = 0.5

    def __post_init__(self) -> None:
        if self.min_tau <= 0 or self.scale < 0:
            raise ConfigError(
                f"temperature needs min_tau > 0 and scale >= 0, got min_tau={self.min_tau}, "
                f"scale={self.scale}"
            )

    @classmethod
    def constant(cls, tau: float) -> TemperatureSchedule:
        return cls(scale=0.0, min_tau=tau)

    def __call__(self, step: int) -> float:
        return max(self.min_tau, self.scale / math.sqrt(step + 1))


def sample_gumbel(shape: Sequence[int], like: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise ``g = -log(-log(u))``, ``u ~ U(0, 1)`` (Sec. III-B), drawn from
    ``generator`` (torch's default generator when None)."""
    u = torch.rand(tuple(shape), dtype=like.dtype, device=like.device, generator=generator)
    return u.clamp_min_(torch.finfo(like.dtype).tiny).log_().neg_().log_().neg_()


class Allocation(nn.Module):
    """Which components each task uses in one routed layer (a ``[T, C]`` 0/1 matrix).

    Subclasses give ``probs()`` (``[T, C]`` probability of each connection), ``pattern(task)``
    (the binary row used at evaluation) and ``forward(task, tau)`` (the row used for one
    batch; values exactly 0 or 1). ``learned`` says whether the row carries a gradient, in
    which case a routed layer runs every component in training.
    """

    learned = False
    default_combine = "mean"

    def __init__(self, num_tasks: int, num_components: int):
        super().__init__()
        if num_tasks < 1 or num_components < 1:
            raise ConfigError(
                f"an allocation needs >= 1 task and >= 1 component, got {num_tasks} tasks and "
                f"{num_components} components"
            )
        self.num_tasks = num_tasks
        self.num_components = num_components

    def probs(self) -> torch.Tensor:
        raise NotImplementedError

    def pattern(self, task: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, task: int, tau: float) -> torch.Tensor:
        raise NotImplementedError


class GumbelMatrixAllocation(Allocation):
    """Sec. III-A/B: a learned Bernoulli variable per (task, component).

    ``logits[t, c] = (log p, log(1 - p))`` start at ``p = p_init``; ``P(connected) =
    softmax(logits)[..., 0]``. In training (and at evaluation with ``eval_mode="sample"``)
    the row is a straight-through Gumbel-softmax sample; otherwise the greedy pattern.

    ``generator``: where the training samples' noise comes from (None: torch's default
    generator); data-parallel training sets one stream shared by all ranks.
    """

    learned = True

    def __init__(
        self, num_tasks: int, num_components: int, p_init: float = 0.5, eval_mode: str = "greedy"
    ):
        super().__init__(num_tasks, num_components)
        if not 0.0 < p_init < 1.0:
            raise ConfigError(f"p_init must be in (0, 1), got {p_init}")
        if eval_mode not in EVAL_MODES:
            raise ConfigError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        self.eval_mode = eval_mode
        init = torch.tensor([math.log(p_init), math.log(1.0 - p_init)])
        self.logits = nn.Parameter(init.repeat(num_tasks, num_components, 1))  # [T, C, 2]
        self.generator: torch.Generator | None = None

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)[..., 0]

    def sample(self, task: int, tau: float, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One straight-through sample ``[C]`` for a whole batch of ``task`` (Sec. III-B).

        Forward: the hard ``argmax(logits + g)``, exactly 0 or 1. Backward: the gradient of
        the soft ``softmax((logits + g) / tau)[0]``. ``noise`` ``[C, 2]`` replaces the draw;
        otherwise it comes from ``generator`` (torch's default when None).
        """
        logits = self.logits[task]
        g = sample_gumbel(logits.shape, logits, generator) if noise is None else noise
        v = logits + g
        soft = torch.softmax(v / tau, dim=-1)[:, 0]
        hard = (v[:, 0] >= v[:, 1]).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly `hard` forward, d soft backward

    def sample_combined(self, task: int, tau: float, mean: bool) -> torch.Tensor:
        """:meth:`sample` for ``task`` (the same noise, drawn the same way), divided by the
        number of active components when ``mean`` (at least 1: zero when none is active),
        as ONE autograd node (:class:`~flexmtl.fusion.kernels.StraightThroughRow`) instead
        of a dozen: the weights a fused routed layer combines its components with."""
        noise = sample_gumbel(self.logits.shape[1:], self.logits, self.generator)
        return StraightThroughRow.apply(self.logits, task, noise, tau, mean)

    def greedy(self, task: int) -> torch.Tensor:
        """The most likely pattern (Sec. III-C): connected when ``p >= 0.5``."""
        p = self.probs()[task]
        return (p >= 0.5).to(p.dtype)

    def pattern(self, task: int) -> torch.Tensor:
        return self.greedy(task)

    def forward(self, task: int, tau: float) -> torch.Tensor:
        if self.training:
            return self.sample(task, tau, generator=self.generator)
        if self.eval_mode == "sample":
            return self.sample(task, tau)
        return self.greedy(task)


class FixedAllocation(Allocation):
    """A fixed ``[T, C]`` 0/1 pattern: the shared-bottom and no-sharing baselines (Sec. V-A)."""

    def __init__(
        self, pattern: torch.Tensor | Sequence[Sequence[float]], default_combine: str = "mean"
    ):
        matrix = torch.as_tensor(pattern, dtype=torch.float32).clone()
        if matrix.dim() != 2:
            raise ShapeError(
                f"an allocation pattern must be a [tasks, components] matrix, got shape "
                f"{tuple(matrix.shape)}"
            )
        super().__init__(*matrix.shape)
        if not torch.all((matrix == 0) | (matrix == 1)):
            raise ConfigError(f"an allocation pattern must be binary (0/1), got {matrix.tolist()}")
        if default_combine not in COMBINES:
            raise ConfigError(f"combine must be one of {COMBINES}, got {default_combine!r}")
        self.default_combine = default_combine
        self.register_buffer("matrix", matrix)

    @classmethod
    def shared_bottom(cls, num_tasks: int, num_components: int) -> FixedAllocation:
        """Every task uses every component; the outputs are summed."""
        return cls(torch.ones(num_tasks, num_components), default_combine="sum")

    @classmethod
    def no_sharing(cls, num_tasks: int, num_components: int) -> FixedAllocation:
        """Task ``i`` uses component ``i`` only; needs as many components as tasks."""
        if num_components != num_tasks:
            raise ConfigError(
                f"no sharing gives task i component i, so it needs as many components as "
                f"tasks; got {num_components} components for {num_tasks} tasks"
            )
        return cls(torch.eye(num_tasks))

    def probs(self) -> torch.Tensor:
        return self.matrix

    def pattern(self, task: int) -> torch.Tensor:
        return self.matrix[task]

    def forward(self, task: int, tau: float) -> torch.Tensor:
        return self.matrix[task]


def make_allocation(
    allocation: str | Allocation | torch.Tensor | Sequence[Sequence[float]],
    num_tasks: int,
    num_components: int,
    p_init: float = 0.5,
    eval_mode: str = "greedy",
) -> Allocation:
    """An allocation by name (:data:`ALLOCATIONS`), a ``[T, C]`` 0/1 pattern, or a module."""
    if isinstance(allocation, str):
        if allocation == "gumbel":
            return GumbelMatrixAllocation(num_tasks, num_components, p_init, eval_mode)
        if allocation == "shared-bottom":
            return FixedAllocation.shared_bottom(num_tasks, num_components)
        if allocation == "no-sharing":
            return FixedAllocation.no_sharing(num_tasks, num_components)
        raise UnknownNameError("allocation", allocation, ALLOCATIONS)
    if not isinstance(allocation, Allocation):
        allocation = FixedAllocation(allocation)
    if (allocation.num_tasks, allocation.num_components) != (num_tasks, num_components):
        raise ShapeError(
            f"the allocation is [{allocation.num_tasks}, {allocation.num_components}] but the "
            f"layer has {num_tasks} tasks and {num_components} components"
        )
    return allocation


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

    def __init__(
        self,
        components: Sequence[nn.Module],
        num_tasks: int,
        input_shape: Sequence[int],
        allocation: str | Allocation | torch.Tensor | Sequence[Sequence[float]] = "gumbel",
        *,
        p_init: float = 0.5,
        combine: str | None = None,
        temperature: Callable[[int], float] | None = None,
        eval_mode: str = "greedy",
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
        """``[T, C]`` connection probabilities (a fixed pattern's are 0/1)."""
        return self.allocation.probs()

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
            weights = self.allocation.sample_combined(task, tau, mean)
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
            out = out / weights.sum().clamp(min=1.0)  # mean of the active ones; 0 if none
        return out


class RoutedCore(SharingCore):
    """Routed layers and plain shared modules in sequence: a
    :class:`~flexmtl.sharing.base.SharingCore` of kind ``"allocation"``.

    Args:
        layers: :class:`RoutedLayer` s and plain modules; a plain module (stem conv,
            GroupNorm + ReLU, pooling, flatten, dropout) is applied to every task.
        num_tasks: number of tasks T.
        feature_shape: per-example input shape.
        budget: maximum expected fraction of active allocations per task, in (0, 1]; the
            penalty of Sec. III-D is added by :meth:`regularization` (None: no penalty).
        budget_weight: lambda of the budget penalty.
        sharing_lr_multiplier: allocation learning rate / model learning rate
            (:meth:`sharing_lr`); default the number of tasks, the rule of thumb of Sec. V-B
            (the logits of a task are updated once every T steps). 1 for the 4-MNISTs setup.
    """

    kind = "allocation"

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_tasks: int,
        feature_shape: Sequence[int],
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
        """Connection probabilities ``[T, total components]`` over the routed layers."""
        return torch.cat([layer.probs() for layer in self.routed_layers], dim=1)

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


def cosine_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity ``[T, T]`` of task embeddings (Sec. V-C, Fig. 6).

    Two all-zero embeddings (tasks that use no component) count as identical (1), an
    all-zero and a non-zero one as orthogonal (0).
    """
    if embeddings.dim() != 2:
        raise ShapeError(f"embeddings must be [tasks, components], got {tuple(embeddings.shape)}")
    e = embeddings if embeddings.is_floating_point() else embeddings.float()
    norms = e.norm(dim=1)
    sim = (e @ e.T) / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(e.dtype).tiny)
    zero = norms == 0
    return sim.masked_fill(zero[:, None] & zero[None, :], 1.0)


def group_tasks(
    embeddings: torch.Tensor, names: Sequence[str], threshold: float = 1.0
) -> list[list[str]]:
    """Groups of tasks linked by cosine similarity ``>= threshold`` (Sec. III-E).

    With the default threshold 1 the groups are the tasks with identical embeddings, which
    the network processes identically up to their heads. For lower thresholds a group is a
    connected component of the "similar" relation. Groups are ordered by their first task,
    tasks within a group by index.
    """
    if len(names) != embeddings.shape[0]:
        raise ConfigError(f"got {len(names)} names for {embeddings.shape[0]} task embeddings")
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [-1, 1], got {threshold}")
    similar = (cosine_similarity(embeddings.double()) >= threshold - 1e-9).tolist()
    groups: list[list[str]] = []
    seen: set[int] = set()
    for first in range(len(names)):
        if first in seen:
            continue
        members, frontier = [], [first]
        seen.add(first)
        while frontier:
            i = frontier.pop()
            members.append(i)
            for j, linked in enumerate(similar[i]):
                if linked and j not in seen:
                    seen.add(j)
                    frontier.append(j)
        groups.append([names[i] for i in sorted(members)])
    return groups
