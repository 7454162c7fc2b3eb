"""The contract every shared core implements: what the model, trainer, data-parallel
wrapper, runner and plots may ask of a way of sharing layers.

A *sharing core* sits between the task encoders and decoders (``y_i = D_i(core(E_i(x_i),
i))``) and decides how tasks share its layers: the orderings of the soft ordering paper
(:mod:`flexmtl.sharing.ordering`), the routed layers of the Gumbel-Matrix paper
(:mod:`flexmtl.sharing.routed`), or a method of your own. Everything outside
:mod:`flexmtl.sharing` talks to a core through this class only -- never through its
concrete type -- so that a new method is one file plus one registration
(:func:`flexmtl.sharing.register_method`).

What a core must give (abstract): :meth:`forward` (one task) and the shapes
``num_tasks``, ``feature_shape`` and ``output_shape``. Everything else has a default that
suits a core without learned sharing; override what your method has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from flexmtl.errors import ShapeError

__all__ = ["SharingCore", "find_cores"]


class SharingCore(nn.Module, ABC):
    """Base class of shared cores (see the module docstring).

    Attributes every core sets in its constructor:
        num_tasks: the number of tasks T.
        feature_shape: per-example shape of the core's input (what the encoders produce).
        output_shape: per-example shape of its output (what the decoders read); an
            attribute or a read-only property.
    """

    #: what the core learns about sharing, the ``kind`` of :meth:`summary` (plots and
    #: reports dispatch on it): e.g. ``"soft-order"``, ``"allocation"``, ``"fixed"``
    kind: ClassVar[str] = "fixed"

    num_tasks: int
    feature_shape: tuple[int, ...]
    if TYPE_CHECKING:  # for mypy only: at run time a subclass's attribute or property

        @property
        def output_shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def forward(self, h: torch.Tensor, task: int) -> torch.Tensor:
        """The core applied to a batch ``h`` of one task (the reference implementation)."""

    def forward_tasks(self, hs: Sequence[torch.Tensor], tasks: Sequence[int]
                      ) -> list[torch.Tensor]:
        """``[self(h, t) for h, t in zip(hs, tasks)]``: one training step's tasks at once.

        Override to fuse the work of several tasks; the result must equal the loop up to
        float rounding (and, in training, other draws of the same random masks)."""
        if len(hs) != len(tasks):
            raise ShapeError(f"got {len(hs)} inputs for {len(tasks)} tasks")
        return [self(h, int(t)) for h, t in zip(hs, tasks)]

    def sharing_parameters(self) -> list[nn.Parameter]:
        """Parameters that decide the sharing (soft-order scales, allocation logits): the
        trainer gives them their own optimiser group, with :meth:`sharing_lr` and no L2."""
        return []

    def sharing_lr(self, lr: float) -> float:
        """Learning rate of :meth:`sharing_parameters` when the model's is ``lr`` (used
        unless the training config sets ``sharing_lr``)."""
        return lr

    def regularization(self, task: int) -> torch.Tensor | None:
        """A term added to ``task``'s training loss (e.g. a budget penalty); None: none."""
        return None

    def sharing_snapshot(self) -> torch.Tensor | None:
        """What was learned about sharing, as one tensor the trainer logs over training
        (``sharing.pt``) and the plots draw; None when nothing is learned."""
        return None

    def summary(self) -> dict[str, Any]:
        """What was learned, as plain data for ``result.json``: ``{"kind": ..., ...}``."""
        return {"kind": self.kind}

    def may_leave_unused_parameters(self) -> bool:
        """Whether one training step may leave some of the core's parameters without a
        gradient (e.g. components a fixed allocation never uses); data-parallel training
        then has to look for them."""
        return False


def find_cores(model: nn.Module) -> list[SharingCore]:
    """The sharing cores of ``model`` (outermost first; a core inside a core is its part)."""
    cores: list[SharingCore] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, SharingCore):
            cores.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return cores
