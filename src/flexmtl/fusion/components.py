"""Same-kind components of a routed layer (Gumbel-Matrix, Sec. III) run as one op.

All components of a routed layer read the same input, so G components of one structure
(e.g. eight ``Conv2d(8, 8, 3) -> GroupNorm(4, 8) -> ReLU``) can run together:

* the first convolution or linear layer is ONE ordinary op whose weights are the
  components' weights stacked along the output dimension (``[G * out, in, ...]``);
* a later convolution is a grouped convolution (``groups=G``) and a later linear layer a
  batched matmul, so component ``g`` still only sees its own channels;
* GroupNorm with ``n`` groups per component is one GroupNorm with ``G * n`` groups (its
  groups are runs of contiguous channels, so none straddles two components); the affine
  parameters are concatenated;
* elementwise activations are applied once to the stacked tensor.

The weights are concatenated from the component modules on every call (``torch.cat`` is
differentiable), so parameters, ``state_dict``, optimisers and the per-component
reference path are unchanged. :func:`plan_fusion` finds the groups, by the signatures of
:mod:`flexmtl.fusion.planning`; components it does not recognise (pools, identity, custom
modules, anything with dropout or batch norm) run one by one as before.
:func:`combine_components` is a routed layer's forward with its groups run this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from flexmtl.fusion.hooks import ModuleSequence, any_hooks, global_hooks
from flexmtl.fusion.kernels import active_count
from flexmtl.fusion.planning import (
    known_class,
    layer_signature,
    module_signature,
    stackable_class,
)

__all__ = ["FusedGroup", "FusionPlan", "plan_fusion", "op_signature", "combine_components"]

#: activations applied elementwise with no parameters: safe on the stacked tensor
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Softplus, nn.Identity)


def op_signature(module: nn.Module) -> tuple[str, tuple] | None:
    """What must match for two ops to run as one; None for ops that cannot be fused.

    A ``Conv2d`` or ``Linear`` is keyed by :func:`~flexmtl.fusion.planning.layer_signature`,
    a GroupNorm or an elementwise activation by
    :func:`~flexmtl.fusion.planning.module_signature`. Exact types only: a subclass may
    change ``forward``.
    """
    kind = stackable_class(module, exact=True)
    if kind is nn.Conv2d:
        return ("conv", layer_signature(module))
    if kind is nn.Linear:
        return ("linear", layer_signature(module))
    if known_class(module, (nn.GroupNorm,), exact=True) is not None:
        return ("groupnorm", module_signature(module))
    if known_class(module, ELEMENTWISE, exact=True) is not None:
        return ("elementwise", module_signature(module))
    return None


def _ops(component: nn.Module) -> list[nn.Module]:
    """A component as a list of ops: a Sequential's children (flattened), or itself."""
    if type(component) is nn.Sequential:
        return [op for child in component for op in _ops(child)]
    return [component]


def _component_signature(component: nn.Module, input_shape: tuple[int, ...]) -> tuple | None:
    """The signatures of a component's ops if it can be fused, else None.

    Fusable: a convolution chain (Conv2d, GroupNorm, activations) on ``[C, H, W]`` inputs or
    a dense chain (Linear, activations) on ``[F]`` inputs, starting with a Conv2d/Linear.
    """
    signature = []
    for op in _ops(component):
        s = op_signature(op)
        if s is None:
            return None
        signature.append(s)
    first = signature[0][0]
    allowed = {"conv": {"conv", "groupnorm", "elementwise"}, "linear": {"linear", "elementwise"}}
    rank = {"conv": 3, "linear": 1}
    if first not in allowed or len(input_shape) != rank[first]:
        return None
    if any(s[0] not in allowed[first] for s in signature):
        return None
    return tuple(signature)


#: CPU convolutions with fewer multiply-adds than this run as im2col + matmul (_conv2d)
SMALL_CONV_MACS = 8_000_000
_im2col_conv2d = getattr(torch._C._nn, "thnn_conv2d", None)


def _conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d,
            groups: int) -> torch.Tensor:
    """``F.conv2d`` with ``conv``'s stride, padding and dilation.

    Small CPU convolutions (the four-mnists layers) use PyTorch's im2col kernel instead of
    oneDNN: same result, and its backward is 2-3x faster for a few channels.
    """
    if (_im2col_conv2d is not None and x.device.type == "cpu" and groups == 1
            and x.dtype in (torch.float32, torch.float64) and conv.dilation == (1, 1)
            and isinstance(conv.padding, tuple)):
        out_h, out_w = (
            (size + 2 * pad - k) // s + 1
            for size, pad, k, s in zip(x.shape[-2:], conv.padding, conv.kernel_size, conv.stride)
        )
        if x.shape[0] * out_h * out_w * math.prod(weight.shape) < SMALL_CONV_MACS:
            return _im2col_conv2d(x, weight, conv.kernel_size, bias, conv.stride, conv.padding)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


@dataclass
class FusedGroup:
    """Components ``indices`` of one structure; ``ops[c]`` are component ``c``'s ops."""

    indices: tuple[int, ...]
    ops: dict[int, list[nn.Module]]

    def __call__(self, h: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
        """Outputs ``[B, G, N]`` of components ``members`` (some of ``indices``) on ``h``.

        ``outputs[:, g]`` is the flattened output of component ``members[g]``.
        """
        rows = [self.ops[c] for c in members]
        g = len(rows)
        y, dense, fresh = h, False, False
        for depth, first in enumerate(rows[0]):
            # the ops at a depth have one signature: the first's class (and a bias if it has)
            mods = [row[depth] for row in rows]
            if isinstance(first, nn.Conv2d):
                convs = cast("list[nn.Conv2d]", mods)
                weight = torch.cat([m.weight for m in convs])  # [G * out, in, kh, kw]
                bias = (torch.cat(cast("list[torch.Tensor]", [m.bias for m in convs]))
                        if first.bias is not None else None)
                y = _conv2d(y, weight, bias, first, groups=1 if depth == 0 else g)
            elif isinstance(first, nn.Linear):
                dense = True
                linears = cast("list[nn.Linear]", mods)
                if depth == 0:  # one matmul, then [G, B, out]
                    weight = torch.cat([m.weight for m in linears])
                    bias = torch.cat([m.bias for m in linears]) if first.bias is not None else None
                    y = F.linear(y, weight, bias).unflatten(-1, (g, -1)).transpose(0, 1)
                else:  # a batched matmul, [G, B, in] -> [G, B, out]
                    weight_t = torch.stack([m.weight for m in linears]).transpose(1, 2)
                    if first.bias is None:
                        y = torch.bmm(y, weight_t)
                    else:
                        bias = torch.stack([m.bias for m in linears]).unsqueeze(1)
                        y = torch.baddbmm(bias, y, weight_t)
            elif isinstance(first, nn.GroupNorm):
                norms = cast("list[nn.GroupNorm]", mods)
                gn_weight = torch.cat([m.weight for m in norms]) if first.affine else None
                bias = torch.cat([m.bias for m in norms]) if first.affine else None
                y = F.group_norm(y, g * first.num_groups, gn_weight, bias, first.eps)
            elif type(first) is nn.ReLU and fresh:
                y = torch.relu_(y)  # in place: conv/linear/GN do not keep their output
            else:  # elementwise
                y = first(y)
            fresh = not isinstance(first, ELEMENTWISE)  # y is a new tensor of our own
        return y.transpose(0, 1) if dense else y.reshape(y.shape[0], g, -1)


@dataclass
class FusionPlan:
    """Groups of >= 2 same-kind components, and the components that run one by one
    (``unrecognised``: those of them whose ops no group could take, whatever their
    siblings; not those that only have hooks)."""

    groups: list[FusedGroup]
    singles: list[int]
    unrecognised: list[int] = field(default_factory=list)

    def alike_unrecognised(self, components: ModuleSequence) -> list[int]:
        """The unrecognised components that have an unrecognised twin (same class and
        parameter shapes): work that would fuse if their ops were known."""
        kinds: dict[tuple, list[int]] = {}
        for c in self.unrecognised:
            key = (type(components[c]),
                   tuple((name, p.shape) for name, p in components[c].named_parameters()))
            kinds.setdefault(key, []).append(c)
        return sorted(c for members in kinds.values() if len(members) > 1 for c in members)


def plan_fusion(components: ModuleSequence, input_shape: Sequence[int]) -> FusionPlan:
    """Group ``components`` by structure (:func:`op_signature` of every op).

    A structure shared by a single component gains nothing from fusion and runs alone; so
    do components with hooks, and all of them while hooks are registered for every module
    (they must run their modules' own ``forward``).
    """
    input_shape = tuple(input_shape)
    by_signature: dict[tuple, list[int]] = {}
    singles, unrecognised = [], []
    every_module_hooked = global_hooks()
    for c, component in enumerate(components):
        if every_module_hooked or any_hooks(component):
            singles.append(c)  # a fused group would skip its modules' forward and hooks
            continue
        signature = _component_signature(component, input_shape)
        if signature is None:
            singles.append(c)
            unrecognised.append(c)
        else:
            by_signature.setdefault(signature, []).append(c)
    groups = []
    for indices in by_signature.values():
        if len(indices) == 1:
            singles.append(indices[0])
        else:
            groups.append(FusedGroup(tuple(indices), {c: _ops(components[c]) for c in indices}))
    return FusionPlan(groups, sorted(singles), unrecognised)


def combine_components(plan: FusionPlan, components: ModuleSequence, h: torch.Tensor,
                       weights: torch.Tensor, active: list[int], mean: bool,
                       output_shape: Sequence[int]) -> torch.Tensor:
    """A routed layer's output ``sum_c weights[c] * f_c(h)`` over the ``active``
    components, with each group of ``plan`` run as one op.

    With ``mean`` the mean's division is folded into the weights (False: ``weights`` are
    final).
    """
    if mean:
        weights = weights / active_count(weights)
    batch, chosen = h.shape[0], set(active)
    out = None
    for group in plan.groups:
        members = [c for c in group.indices if c in chosen]
        if members:  # weighted sum of the G outputs [B, G, N]: a batched [1, G] matmul
            w = _take(weights, members).expand(batch, 1, len(members))
            part = torch.bmm(w, group(h, members)).view(batch, *output_shape)
            out = part if out is None else out + part
    for c in plan.singles:
        if c in chosen:
            part = weights[c] * components[c](h)
            out = part if out is None else out + part
    assert out is not None  # active is not empty, and every component is in a group or single
    return out


def _take(weights: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """``weights[indices]``; no copy when the indices are a contiguous run."""
    first, last = indices[0], indices[-1]
    if last - first + 1 != len(indices):
        return weights[indices]
    return weights if len(indices) == len(weights) else weights[first : last + 1]
