"""The one switch between the fused paths and the per-task reference paths."""

from __future__ import annotations

from torch import nn

__all__ = ["Fusable", "set_fused", "is_fused"]


class Fusable:
    """Mixin of modules with a fused path beside their reference path (the shared cores,
    routed layers, :class:`~flexmtl.models.MultiTaskModel`).

    ``fused`` (set by the module's constructor argument ``fused=...``, or by
    :func:`set_fused`) chooses the path: True runs the fused one, False the reference.
    Both give the same outputs and gradients up to float rounding.
    """

    fused: bool = True


def set_fused(module: nn.Module, enabled: bool) -> bool:
    """Switch the fused paths of ``module`` and of every fusable submodule on or off
    (False: everything runs the per-task reference, including the trainer's losses);
    returns whether there was any fusable module."""
    found = False
    for m in module.modules():
        if isinstance(m, Fusable):
            m.fused = enabled
            found = True
    return found


def is_fused(module: nn.Module) -> bool:
    """Whether ``module`` runs its fused paths: its own switch when it is :class:`Fusable`
    (a :class:`~flexmtl.models.MultiTaskModel`'s also covers the trainer's stacked
    losses), else whether none of its fusable submodules is switched off."""
    if isinstance(module, Fusable):
        return module.fused
    return all(m.fused for m in module.modules() if isinstance(m, Fusable))
