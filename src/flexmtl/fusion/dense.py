"""Alike per-task encoders and heads run as one batched product.

Tasks whose encoders (or decoders) are alike dense layers -- ``[Flatten ->] Linear [->
ReLU]`` of one signature (:func:`~flexmtl.fusion.planning.layer_signature`), as
:func:`flexmtl.models.dense_encoder` and :func:`flexmtl.models.make_decoder` build them --
on inputs of one shape, and small enough to stack
(:func:`~flexmtl.fusion.planning.stack_pays_off`), run as ONE batched matrix product per
group (:func:`stacked_groups`, used by :meth:`flexmtl.models.MultiTaskModel.forward_tasks`).
The weights are stacked at every call (``torch.stack`` is differentiable: each module's own
parameters get their gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from flexmtl.fusion.hooks import global_hooks, has_hooks
from flexmtl.fusion.planning import (
    known_class,
    layer_signature,
    module_signature,
    stack_pays_off,
    stackable_class,
)

__all__ = ["DenseParts", "dense_parts", "dense_signature", "stacked_dense", "stacked_groups"]

#: ``(flatten, linear, tail)`` of a dense module, see :func:`dense_parts`
DenseParts = tuple[bool, nn.Linear, tuple[nn.Module, ...]]


def dense_parts(module: nn.Module) -> DenseParts | None:
    """``(flatten, linear, tail)`` when ``module`` is ``[Flatten ->] Linear [-> ReLU]`` of
    these torch classes exactly (a subclass may change ``forward``), without hooks."""
    parts = list(module) if type(module) is nn.Sequential else [module]
    if any(map(has_hooks, (module, *parts))):
        return None
    flatten = bool(parts) and known_class(parts[0], (nn.Flatten,), exact=True) is not None
    if flatten:
        flat = cast(nn.Flatten, parts[0])  # known_class: exactly nn.Flatten
        if (flat.start_dim, flat.end_dim) != (1, -1):
            return None
        parts = parts[1:]
    if not parts or stackable_class(parts[0], exact=True) is not nn.Linear:
        return None
    tail = tuple(parts[1:])
    if len(tail) > 1 or any(known_class(m, (nn.ReLU,), exact=True) is None for m in tail):
        return None
    return flatten, cast(nn.Linear, parts[0]), tail  # stackable_class: exactly nn.Linear


def dense_signature(parts: DenseParts | None, x: torch.Tensor) -> tuple | None:
    """What a dense module (``parts``) on input ``x`` needs equal to others to join a
    batched product with them; None when it cannot (not a dense layer, or too large to
    stack even with one other)."""
    if parts is None:
        return None
    flatten, layer, tail = parts
    if not stack_pays_off(layer.weight, 2):
        return None
    return (flatten, layer_signature(layer), tuple(map(module_signature, tail)), x.shape,
            x.dtype, x.device)


def stacked_dense(modules: Sequence[nn.Module], xs: Sequence[torch.Tensor]
                  ) -> torch.Tensor | None:
    """``torch.stack([m(x) for m, x in zip(modules, xs)])`` as ONE batched matrix product,
    or None when the modules or inputs do not allow it (then call them one by one).

    It applies when there are several modules, each ``[Flatten ->] Linear [-> ReLU]`` (see
    :func:`dense_parts`) of one signature (:func:`dense_signature`), the inputs have one
    shape that the layers accept and the weights are small enough to stack.
    """
    if len(modules) < 2 or len(xs) != len(modules) or global_hooks():
        return None
    parts = [dense_parts(m) for m in modules]
    keys = {dense_signature(p, x) for p, x in zip(parts, xs)}
    if None in keys or len(keys) != 1:
        return None
    # no part is None (its signature would be None)
    return _stacked_parts(cast("list[DenseParts]", parts), xs)


def stacked_groups(modules: Sequence[nn.Module], xs: Sequence[torch.Tensor]
                   ) -> list[torch.Tensor | None]:
    """``modules[i](xs[i])`` for the modules and inputs that are alike, one batched product
    per group (:func:`stacked_dense`); None where a module runs alone."""
    outs: list[torch.Tensor | None] = [None] * len(xs)
    if len(xs) < 2 or global_hooks():
        return outs
    parts = [dense_parts(m) for m in modules]
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(xs):
        key = dense_signature(parts[i], x)
        if key is not None:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        # the members' parts are not None: they have a signature
        y = _stacked_parts(cast("list[DenseParts]", [parts[i] for i in members]),
                           [xs[i] for i in members])
        for i, out in zip(members, () if y is None else y.unbind(0)):
            outs[i] = out
    return outs


def _stacked_parts(parts: Sequence[DenseParts], xs: Sequence[torch.Tensor]
                   ) -> torch.Tensor | None:
    """The batched product of modules of one :func:`dense_signature`, already split by
    :func:`dense_parts`; None when the weights are too large to stack or the inputs do
    not suit the layers."""
    flatten, layer, tail = parts[0]
    w = layer.weight
    if not stack_pays_off(w, len(parts)) or xs[0].dtype != w.dtype or xs[0].device != w.device:
        return None
    x = torch.stack(list(xs))  # [T, B, *shape]
    if flatten:
        x = x.flatten(2)
    if x.ndim != 3 or x.shape[2] != w.shape[1]:
        return None  # the reference raises its own error
    layers = [p[1] for p in parts]
    weight = torch.stack([m.weight for m in layers]).transpose(1, 2)  # [T, in, out]
    if layer.bias is not None:
        y = torch.baddbmm(torch.stack([m.bias for m in layers]).unsqueeze(1), x, weight)
    else:
        y = torch.bmm(x, weight)
    return y.relu_() if tail else y  # in place: the product's backward does not need y
