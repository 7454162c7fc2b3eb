"""Hook introspection: a fused path skips the ``forward`` of the modules it fuses, so it
must not run where hooks expect those calls."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

__all__ = ["ModuleSequence", "has_hooks", "any_hooks", "global_hooks", "blocks_state"]

#: the modules a fusion plan is made for: a list, or a core's own ``nn.ModuleList`` (which
#: torch does not declare a ``Sequence``)
ModuleSequence = Sequence[nn.Module] | nn.ModuleList


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) has forward or backward hooks: a fused
    path that skips its ``forward`` would skip them."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def any_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or any of its submodules has hooks (:func:`has_hooks`)."""
    return any(map(has_hooks, module.modules()))


def global_hooks() -> bool:
    """Whether forward or backward hooks are registered for every module
    (``register_module_forward_hook``, ``register_module_full_backward_hook``, ...)."""
    module = nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks
                or module._global_backward_hooks or module._global_backward_pre_hooks)


def blocks_state(blocks: ModuleSequence) -> tuple:
    """What a fusion plan (:func:`~flexmtl.fusion.planning.plan_blocks`,
    :func:`~flexmtl.fusion.components.plan_fusion`) depends on beyond the blocks' classes:
    identity, training mode and hooks of every module (a cheap key to cache plans by; it is
    computed at every fused call, so it walks ``_modules`` directly instead of
    ``Module.modules()``). The key holds the modules themselves: they compare by identity
    and stay alive while cached."""
    return (global_hooks(),
            *[(m, m.training, has_hooks(m)) for m in _all_modules(blocks, [], set())])


def _all_modules(modules: Iterable[nn.Module | None], out: list[nn.Module],
                 seen: set[int]) -> list[nn.Module]:
    """``modules`` and all their submodules, depth first, each once (as
    ``Module.modules()``), appended to ``out``."""
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
            if m._modules:
                _all_modules(m._modules.values(), out, seen)
    return out
