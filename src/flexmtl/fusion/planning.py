"""Which modules are alike enough to run as one op, and when stacking pays off.

One family of signatures serves every fusion of :mod:`flexmtl.fusion`:

* :func:`stackable_class` / :func:`layer_signature` -- a ``nn.Linear`` or ``nn.Conv*d``
  (one group, zero padding) whose weights can be stacked with others' along a new or the
  output dimension; two such layers run as one product when their signatures are equal
  (class, weight shape, dtype and device, bias or not, a convolution's geometry);
* :func:`module_signature` -- a module applied once to the stacked result (an activation,
  pooling; in routed components also a GroupNorm, its affine parameters concatenated):
  class, settings and mode;
* :func:`mixing_reason` -- whether a module acts on each example alone, so that the rows
  of several tasks can share one call (:func:`register_per_example` declares user
  classes);
* :data:`CPU_STACK_LIMIT` / :func:`stack_pays_off` -- the one size limit of stacked
  weights on the CPU.

What each user needs beyond these is explicit where it differs: the shared-layer orderings
stack whole blocks (:func:`plan_blocks`: a layer plus a parameter-free tail, every block
alike); routed components may also hold GroupNorm and later layers, which run grouped
(:func:`flexmtl.fusion.components.plan_fusion`); stacked encoders and heads are
``[Flatten ->] Linear [-> ReLU]`` on inputs of one shape
(:func:`flexmtl.fusion.dense.dense_signature`).

A module's class counts as known (:func:`known_class`) when it is one of the listed torch
classes or, for the orderings' shared blocks, a subclass that keeps its ``forward``; routed
components, encoders and heads take the listed classes exactly (``exact=True``): a
subclass may change what ``forward`` computes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from flexmtl.fusion.hooks import any_hooks, global_hooks

__all__ = [
    "CPU_STACK_LIMIT",
    "STACKABLE",
    "register_per_example",
    "known_class",
    "mixing_reason",
    "stackable_class",
    "layer_signature",
    "module_signature",
    "stack_pays_off",
    "StackableLayer",
    "StackedLayers",
    "BlockPlan",
    "plan_blocks",
]


def _torch_classes(module, exclude: Sequence[str] = ()) -> tuple[type, ...]:
    return tuple(getattr(module, name) for name in module.__all__ if name not in exclude)


#: module classes whose forward acts on every example of a batch independently
_PER_EXAMPLE: set[type[nn.Module]] = {
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle,
    *_torch_classes(nn.modules.activation, exclude=("MultiheadAttention",)),
    *_torch_classes(nn.modules.pooling),
    *_torch_classes(nn.modules.padding),
    *_torch_classes(nn.modules.dropout),
}
#: layers whose weights can be stacked, and the functional form of each
STACKABLE: dict[type[nn.Module], Callable] = {
    nn.Linear: F.linear, nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}

#: on the CPU, stacked weights pay off up to this many elements in all (a depth's weights
#: of all tasks, or all tasks' encoders or heads): copying larger ones (e.g. ten 784 x 64
#: frozen encoders) costs more than the separate products it saves; measured
CPU_STACK_LIMIT = 2**16


def register_per_example(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare that ``cls`` (and subclasses that keep its ``forward``) acts on every
    example of a batch independently, so that blocks containing it can run the rows of
    all tasks in one call. Usable as a class decorator."""
    _PER_EXAMPLE.add(cls)
    return cls


def known_class(module: nn.Module, classes: Collection[type[nn.Module]], exact: bool = False
                ) -> type[nn.Module] | None:
    """The class of ``classes`` that ``module`` is, without an overridden ``forward``
    (``exact``: its own class only, no subclass)."""
    if exact:
        return type(module) if type(module) in classes else None
    for cls in type(module).__mro__:
        if cls in classes:  # so a Module subclass (mypy types __mro__ tuple[type, ...])
            module_cls = cast(type[nn.Module], cls)
            return module_cls if type(module).forward is module_cls.forward else None
    return None


def mixing_reason(module: nn.Module, ndim: int) -> str | None:
    """Why ``module`` may mix the examples of a batch of ``ndim``-D inputs; None if not."""
    if type(module) is nn.Sequential:
        return next(filter(None, (mixing_reason(m, ndim) for m in module)), None)
    name = type(module).__name__
    if isinstance(module, _BatchNorm):  # per example only with running statistics
        if module.training or module.running_mean is None:
            return f"{name} normalises with batch statistics in training mode"
        return None
    if isinstance(module, _InstanceNorm) and module.training and module.track_running_stats:
        return f"{name} updates running statistics over the batch"
    if known_class(module, _PER_EXAMPLE) is None:
        return (f"{name} is not known to act on each example independently (declare it "
                "with flexmtl.fusion.register_per_example)")
    if isinstance(module, nn.Softmax2d) and ndim != 4:
        return f"{name} acts along dimension -3, which is the batch for {ndim}-D inputs"
    for attr in ("dim", "start_dim"):  # e.g. Softmax(dim=0), Flatten(0) mix the batch
        if hasattr(module, attr):
            dim = getattr(module, attr)
            if not isinstance(dim, int) or dim in (0, -ndim):
                return f"{name} acts along dimension {dim}, which may be the batch"
    return None


# ---------------------------------------------------------------------- signatures


def stackable_class(module: nn.Module, exact: bool = False) -> type[nn.Module] | None:
    """The class of :data:`STACKABLE` whose ``forward`` ``module`` runs (see
    :func:`known_class`) when its weights can be stacked with others' (a convolution: one
    group, zero padding); else None."""
    cls = known_class(module, STACKABLE, exact)
    if cls is not None and issubclass(cls, _ConvNd) and (
            module.groups != 1 or module.padding_mode != "zeros"):
        return None
    return cls


def layer_signature(layer: nn.Module) -> tuple:
    """What stackable layers (:func:`stackable_class`) need equal to run as one product:
    class, weight shape, dtype and device, bias or not, a convolution's stride, padding
    and dilation."""
    w = layer.weight
    conv = (layer.stride, layer.padding, layer.dilation) if isinstance(layer, _ConvNd) else ()
    return (known_class(layer, STACKABLE), w.shape, w.dtype, w.device, layer.bias is None,
            conv)


def module_signature(module: nn.Module) -> tuple:
    """What modules applied once to stacked outputs (activations, pooling, GroupNorm) need
    equal: class, settings (``extra_repr``) and training mode."""
    return type(module), module.extra_repr(), module.training


def stack_pays_off(weight: torch.Tensor, count: int) -> bool:
    """Whether ``count`` weights like ``weight`` should be stacked: always off the CPU; on
    the CPU while they have at most :data:`CPU_STACK_LIMIT` elements together."""
    return weight.device.type != "cpu" or count * weight.numel() <= CPU_STACK_LIMIT


# ---------------------------------------------------------------------- shared blocks

#: a layer that :func:`stackable_class` accepts is one of these (or a subclass)
StackableLayer = nn.Linear | _ConvNd


@dataclass(frozen=True)
class StackedLayers:
    """Blocks ``W_j`` = one dense/conv layer + a parameter-free tail ``phi``, all alike.

    ``layers`` holds each block's layer (weights read live); ``tail`` is the first block's
    tail, applied to all (the blocks' tails are equal, parameter-free modules).
    """

    layers: tuple[StackableLayer, ...]
    tail: tuple[nn.Module, ...]

    @property
    def _first(self) -> StackableLayer:
        return self.layers[0]

    def _layer_fn(self) -> Callable:
        cls = known_class(self._first, STACKABLE)
        assert cls is not None  # the layers passed stackable_class (plan_blocks)
        return STACKABLE[cls]

    def weight(self, index: Sequence[int] | None = None) -> torch.Tensor:
        """Weights of the layers stacked, ``[len(index), out, in, *kernel]``."""
        layers = self.layers if index is None else [self.layers[i] for i in index]
        return torch.stack([layer.weight for layer in layers])

    def bias(self, index: Sequence[int] | None = None) -> torch.Tensor | None:
        if self._first.bias is None:
            return None
        layers = self.layers if index is None else [self.layers[i] for i in index]
        # all the layers have one signature: each has a bias as the first has
        return torch.stack(cast("list[torch.Tensor]", [layer.bias for layer in layers]))

    @staticmethod
    def _conv_args(c: _ConvNd) -> dict:
        return {"stride": c.stride, "padding": c.padding, "dilation": c.dilation}

    def _apply_tail(self, y: torch.Tensor) -> torch.Tensor:
        for module in self.tail:
            y = module(y)
        return y

    def all_layers(self, h: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
        """``phi(W_j h)`` for every layer j, ``[N, L, *feature]``: ONE product with the
        concatenated weights (``[L*out, in, ...]``, from :meth:`weight` reshaped)."""
        first = self._first
        n, num = h.shape[0], weight.shape[0] // first.weight.shape[0]
        if isinstance(first, _ConvNd):
            y = self._layer_fn()(h, weight, bias, **self._conv_args(first))
        else:
            y = F.linear(h, weight, bias)
        y = self._apply_tail(y.reshape(n * num, -1, *y.shape[2:]))  # one example per row
        return y.reshape(n, num, *y.shape[1:])

    def per_task(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        """Each task's own layer on its rows: ``weight`` ``[T, out, in, ...]``.

        Dense: ``x`` is ``[T, B, in]`` (one batched matrix product). Conv: ``x`` is
        ``[B, T*C, *spatial]`` (one convolution with ``groups=T``). Same layout out.
        """
        num, first = weight.shape[0], self._first
        if isinstance(first, _ConvNd):
            b = None if bias is None else bias.reshape(-1)
            y = self._layer_fn()(x, weight.reshape(-1, *weight.shape[2:]), b,
                                 groups=num, **self._conv_args(first))
            rows = y.shape[0]
            y = self._apply_tail(y.reshape(rows * num, -1, *y.shape[2:]))
            return y.reshape(rows, num * y.shape[1], *y.shape[2:])
        w = weight.transpose(1, 2)
        y = torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)
        return self._apply_tail(y.reshape(-1, y.shape[-1])).reshape(num, x.shape[1], -1)


@dataclass(frozen=True)
class BlockPlan:
    """How a list of blocks can run for many tasks at once (see
    :mod:`flexmtl.fusion.orderings`).

    ``stacked`` is set when the blocks' weights can be stacked; ``reason`` (with the
    offending ``block_type``) is set when the rows of several tasks cannot share a call.
    """

    stacked: StackedLayers | None
    reason: str | None = None
    block_type: str = ""

    @property
    def per_example(self) -> bool:
        return self.reason is None


def _split_block(block: nn.Module, ndim: int
                 ) -> tuple[StackableLayer, tuple[nn.Module, ...]] | None:
    """``(layer, tail)`` when ``block`` is a stackable layer (+ parameter-free tail)."""
    parts = list(block) if type(block) is nn.Sequential else [block]
    layer = parts[0] if parts else None
    # a stackable class is a StackableLayer: the isinstance only tells mypy
    if (not isinstance(layer, StackableLayer) or stackable_class(layer) is None
            or any_hooks(block)):
        return None
    tail = tuple(parts[1:])
    if ndim != (layer.weight.ndim if isinstance(layer, _ConvNd) else 2):
        return None  # convolutions on their own rank; dense layers on vectors only: [N, d]
    for module in tail:
        if (any(True for _ in module.parameters()) or any(True for _ in module.buffers())
                or mixing_reason(module, ndim) is not None):
            return None
    return layer, tail


def plan_blocks(blocks: Sequence[nn.Module], feature_shape: Sequence[int]) -> BlockPlan:
    """Decide how ``blocks`` (acting on per-example ``feature_shape``) can be fused: their
    weights stack when every block is a stackable layer plus a parameter-free tail and all
    have one signature (:func:`layer_signature`, :func:`module_signature` of the tail)."""
    ndim = len(feature_shape) + 1
    for block in blocks:
        reason = mixing_reason(block, ndim)
        if reason is not None:
            return BlockPlan(None, reason, type(block).__name__)
    if global_hooks():
        return BlockPlan(None)
    parts = []
    for b in blocks:
        part = _split_block(b, ndim)
        if part is None:
            return BlockPlan(None)
        parts.append(part)
    if len({(layer_signature(layer), tuple(map(module_signature, tail)))
            for layer, tail in parts}) != 1:
        return BlockPlan(None)
    return BlockPlan(StackedLayers(tuple(p[0] for p in parts), parts[0][1]))
