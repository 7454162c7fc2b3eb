"""Learned parameter allocation: the Gumbel-Matrix (Maziarz et al., Sec. III) -- the
allocation strategies of a routed layer (:mod:`flexmtl.sharing.routed`).

For T tasks and C components a binary allocation matrix ``A[t, c]`` says which components
task ``t`` uses:

* :class:`GumbelMatrixAllocation` -- Sec. III-A/B: ``A`` is learned. Each entry is a
  Bernoulli variable held as two logits; one straight-through Gumbel-softmax sample is
  drawn per (task, batch). Evaluation uses the most likely pattern, ``p >= 0.5`` (III-C).
* :class:`FixedAllocation` -- the baselines: shared bottom (all ones, outputs *summed*) and
  no sharing (task ``i`` uses component ``i`` only), or any user pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError, UnknownNameError
from flexmtl.fusion.kernels import StraightThroughRow

__all__ = [
    "TemperatureSchedule",
    "Allocation",
    "GumbelMatrixAllocation",
    "FixedAllocation",
    "ALLOCATIONS",
    "make_allocation",
    "sample_gumbel",
    "Combine",
    "EvalMode",
]

#: allocation methods by the names configs use
ALLOCATIONS = ("gumbel", "shared-bottom", "no-sharing")
#: how a routed layer combines its active components
Combine = Literal["mean", "sum"]
COMBINES: tuple[Combine, ...] = get_args(Combine)
#: what the learned allocation uses at evaluation: the most likely pattern, or a sample
EvalMode = Literal["greedy", "sample"]
EVAL_MODES: tuple[EvalMode, ...] = get_args(EvalMode)


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
        self, num_tasks: int, num_components: int, p_init: float = 0.5,
        eval_mode: EvalMode = "greedy",
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

    matrix: torch.Tensor  # a buffer

    def __init__(
        self, pattern: torch.Tensor | Sequence[Sequence[float]], default_combine: Combine = "mean"
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
    eval_mode: EvalMode = "greedy",
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
