"""Multi-task models: task encoders -> a shared core -> task decoders.

``y_i = D_i(core(E_i(x_i), i))`` (soft ordering paper, Eqs. 2, 3, 7). Encoders and
decoders are task specific unless stated; the core decides how tasks share layers.

:meth:`MultiTaskModel.forward_tasks` runs one training step's tasks together: tasks whose
encoders (or decoders) are alike dense layers -- ``[Flatten ->] Linear [-> ReLU]`` of one
shape, as :func:`dense_encoder` and :func:`make_decoder` build them -- and small enough
have their weights stacked on the fly and run as ONE batched matrix product per group
(:func:`stacked_dense`); the parameters stay each task's own ``nn.Linear``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError, UnknownNameError
from flexmtl.sharing.base import SharingCore
from flexmtl.sharing.fused import global_hooks, has_hooks
from flexmtl.tasks import Task

ENCODERS = ("learned", "frozen", "identity", "shared")
DECODERS = ("softmax", "sigmoid", "linear", "gap")

#: which decoder suits which task kind (the loss lives in :class:`~flexmtl.tasks.Task`)
DEFAULT_DECODER = {"multiclass": "softmax", "binary": "sigmoid", "regression": "linear"}
_DECODER_KINDS = {"softmax": "multiclass", "sigmoid": "binary", "linear": "regression",
                  "gap": "regression"}


def _check_name(kind: str, name: str, known: Sequence[str]) -> None:
    if name not in known:
        raise UnknownNameError(kind, name, known)


class GlobalAveragePool(nn.Module):
    """Mean over all non-batch dimensions, one output per example (Sec. 5 decoder)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1).mean(dim=1, keepdim=True)


def dense_encoder(in_shape: Sequence[int], out_features: int, frozen: bool = False) -> nn.Module:
    """Dense ReLU layer from the flattened input to ``out_features``; ``frozen`` = random, fixed."""
    enc = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), out_features), nn.ReLU())
    if frozen:
        enc.requires_grad_(False)
    return enc


def make_decoder(kind: str, feature_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Task head on the core's output: ``softmax``/``sigmoid``/``linear`` dense, or ``gap``."""
    _check_name("decoder", kind, DECODERS)
    if kind == "gap":
        if num_outputs != 1:
            raise ConfigError("the global-average-pooling decoder has exactly one output")
        return GlobalAveragePool()
    out = 1 if kind == "sigmoid" else num_outputs
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), out))


#: ``(flatten, linear, tail)`` of a dense module, see :func:`_dense_parts`
DenseParts = tuple[bool, nn.Linear, tuple[nn.Module, ...]]


def _dense_parts(module: nn.Module) -> DenseParts | None:
    """``(flatten, linear, tail)`` when ``module`` is ``[Flatten ->] Linear [-> ReLU]`` made
    of these torch classes exactly (a subclass may change ``forward``), without hooks."""
    parts = list(module) if type(module) is nn.Sequential else [module]
    if any(map(has_hooks, (module, *parts))):
        return None
    flatten = bool(parts) and type(parts[0]) is nn.Flatten
    if flatten:
        if (parts[0].start_dim, parts[0].end_dim) != (1, -1):
            return None
        parts = parts[1:]
    if not parts or type(parts[0]) is not nn.Linear:
        return None
    tail = tuple(parts[1:])
    if len(tail) > 1 or any(type(m) is not nn.ReLU for m in tail):
        return None
    return flatten, parts[0], tail


#: on the CPU, stacking the weights pays off up to this many elements in all (copying larger
#: ones, e.g. ten 784 x 64 frozen encoders, costs more than the per-task calls it saves;
#: measured)
CPU_STACK_LIMIT = 2**16


def _dense_key(parts: DenseParts | None, x: torch.Tensor) -> tuple | None:
    """What :func:`stacked_dense` needs equal for a dense module (``parts``) on ``x`` to
    join a batched product with others; None when it cannot (not a dense layer, or too
    large to stack)."""
    if parts is None:
        return None
    flatten, layer, tail = parts
    w = layer.weight
    if w.device.type == "cpu" and 2 * w.numel() > CPU_STACK_LIMIT:
        return None
    return (flatten, len(tail), w.shape, w.dtype, w.device, layer.bias is None, x.shape,
            x.dtype, x.device)


def stacked_dense(modules: Sequence[nn.Module], xs: Sequence[torch.Tensor]
                  ) -> torch.Tensor | None:
    """``torch.stack([m(x) for m, x in zip(modules, xs)])`` as ONE batched matrix product,
    or None when the modules or inputs do not allow it (then call them one by one).

    It applies when there are several modules, each ``[Flatten ->] Linear [-> ReLU]`` (see
    :func:`_dense_parts`) of one structure, shape, dtype and device, the inputs have one
    shape that the layers accept and, on the CPU, the weights are small. The weights are
    stacked at every call (``torch.stack`` is differentiable: each module's own parameters
    get their gradient).
    """
    if len(modules) < 2 or len(xs) != len(modules) or global_hooks():
        return None
    return _stacked_parts([_dense_parts(m) for m in modules], xs)


def _stacked_parts(parts: Sequence[DenseParts | None], xs: Sequence[torch.Tensor]
                   ) -> torch.Tensor | None:
    """:func:`stacked_dense` of modules already split by :func:`_dense_parts`."""
    first = parts[0]
    if first is None:
        return None
    flatten, layer, tail = first
    w, has_bias = layer.weight, layer.bias is not None
    if w.device.type == "cpu" and len(parts) * w.numel() > CPU_STACK_LIMIT:
        return None
    if any(p is None or p[0] != flatten or len(p[2]) != len(tail) for p in parts):
        return None
    layers = [p[1] for p in parts]
    if (any(x.shape != xs[0].shape or x.dtype != w.dtype or x.device != w.device for x in xs)
            or any(m.weight.shape != w.shape or m.weight.dtype != w.dtype
                   or m.weight.device != w.device or (m.bias is not None) != has_bias
                   for m in layers)):
        return None
    x = torch.stack(list(xs))  # [T, B, *shape]
    if flatten:
        x = x.flatten(2)
    if x.ndim != 3 or x.shape[2] != w.shape[1]:
        return None  # the reference raises its own error
    weight = torch.stack([m.weight for m in layers]).transpose(1, 2)  # [T, in, out]
    if has_bias:
        y = torch.baddbmm(torch.stack([m.bias for m in layers]).unsqueeze(1), x, weight)
    else:
        y = torch.bmm(x, weight)
    return y.relu_() if tail else y  # in place: the product's backward does not need y


class MultiTaskModel(nn.Module):
    """``decoders[i](core(encoders[i](x), i))`` for each task ``i``.

    Args:
        core: a :class:`~flexmtl.sharing.SharingCore` (an ordering, a routed core or a
            method of your own).
        encoders: one module per task (the same module may appear several times to share it).
        decoders: one module per task.
        task_names: optional names, for messages and results.
        fused: let :meth:`forward_tasks` run alike dense encoders and decoders of several
            tasks as one batched product; False calls them task by task (the reference).
            Same outputs and gradients up to rounding; may be switched later.
    """

    def __init__(
        self,
        core: SharingCore,
        encoders: Sequence[nn.Module],
        decoders: Sequence[nn.Module],
        task_names: Sequence[str] | None = None,
        fused: bool = True,
    ):
        super().__init__()
        if not isinstance(core, SharingCore):
            raise ConfigError(
                f"the core must be a flexmtl.sharing.SharingCore, got {type(core).__name__}; "
                "subclass SharingCore (forward(h, task), num_tasks, feature_shape, "
                "output_shape) to use a core of your own")
        if len(encoders) != core.num_tasks or len(decoders) != core.num_tasks:
            raise ConfigError(
                f"need one encoder and one decoder per task: core has {core.num_tasks} tasks, "
                f"got {len(encoders)} encoders and {len(decoders)} decoders"
            )
        self.core = core
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.task_names = list(task_names or [f"task{i}" for i in range(core.num_tasks)])
        self.fused = fused

    @property
    def num_tasks(self) -> int:
        return self.core.num_tasks

    def _encode(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h = self.encoders[task](x)
        if tuple(h.shape[1:]) != tuple(self.core.feature_shape):
            raise ShapeError(
                f"encoder of task {self.task_names[task]!r} produced shape {tuple(h.shape[1:])} "
                f"per example but the shared core expects {tuple(self.core.feature_shape)}"
            )
        return h

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.decoders[task](self.core(self._encode(x, task), task))

    def forward_tasks(self, xs: Sequence[torch.Tensor], tasks: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of several tasks at once: ``[model(x, t) for x, t in zip(xs, tasks)]``.

        The core's :meth:`~flexmtl.sharing.SharingCore.forward_tasks` runs the tasks (the
        fused orderings in one batched pass). Alike dense encoders (and decoders)
        run as one batched product per group of alike ones (:func:`stacked_dense`) unless
        ``fused`` is False.
        """
        shape = tuple(self.core.feature_shape)
        hs = [h if h is not None and h.shape[1:] == shape else self._encode(x, t)  # raises
              for h, x, t in zip(self._batched(self.encoders, xs, tasks), xs, tasks)]
        hs = self.core.forward_tasks(hs, tasks)
        return [y if y is not None else self.decoders[t](h)
                for y, h, t in zip(self._batched(self.decoders, hs, tasks), hs, tasks)]

    def _batched(self, modules: nn.ModuleList, xs: Sequence[torch.Tensor],
                 tasks: Sequence[int]) -> list[torch.Tensor | None]:
        """``modules[t](x)`` of the tasks whose modules and inputs are alike, one batched
        product per group (:func:`stacked_dense`); None where a module runs alone."""
        outs: list[torch.Tensor | None] = [None] * len(xs)
        if not self.fused or len(xs) < 2 or global_hooks():
            return outs
        parts = [_dense_parts(modules[t]) for t in tasks]
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(xs):
            key = _dense_key(parts[i], x)
            if key is not None:
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            if len(members) < 2:
                continue
            y = _stacked_parts([parts[i] for i in members], [xs[i] for i in members])
            for i, out in zip(members, () if y is None else y.unbind(0)):
                outs[i] = out
        return outs


def build_model(
    tasks: Sequence[Task],
    core: SharingCore,
    encoder: str = "learned",
    decoder: str | None = None,
) -> MultiTaskModel:
    """Encoders and decoders for ``tasks`` around ``core``.

    ``encoder``: ``learned`` (dense ReLU per task), ``frozen`` (random dense ReLU, not
    trained), ``identity`` (the input already has the core's shape) or ``shared`` (one
    learned dense ReLU for all tasks; needs equal input shapes). ``decoder``: ``softmax``,
    ``sigmoid``, ``linear`` or ``gap``; by default the one that suits each task's kind.
    """
    _check_name("encoder", encoder, ENCODERS)
    feature_shape = tuple(core.feature_shape)
    if len(feature_shape) != 1 and encoder in ("learned", "frozen", "shared"):
        raise ConfigError(
            f"the {encoder!r} encoder is dense and produces vectors, but the core acts on "
            f"shape {feature_shape}; use encoder='identity' or pass your own encoders to "
            "MultiTaskModel"
        )
    width = feature_shape[0]
    encoders: list[nn.Module] = []
    if encoder == "shared":
        shapes = {t.input_shape for t in tasks}
        if len(shapes) != 1:
            raise ShapeError(f"a shared encoder needs equal input shapes, got {sorted(shapes)}")
        shared = dense_encoder(tasks[0].input_shape, width)
        encoders = [shared] * len(tasks)
    for task in tasks if encoder != "shared" else ():
        if encoder == "identity":
            if task.input_shape != feature_shape:
                raise ShapeError(
                    f"task {task.name!r} has input shape {task.input_shape}; the identity "
                    f"encoder needs the core's shape {feature_shape}"
                )
            encoders.append(nn.Identity())
        else:
            encoders.append(dense_encoder(task.input_shape, width, frozen=encoder == "frozen"))
    decoders = []
    for task in tasks:
        kind = decoder or DEFAULT_DECODER[task.kind]
        _check_name("decoder", kind, DECODERS)
        if _DECODER_KINDS[kind] != task.kind:
            raise ConfigError(
                f"decoder {kind!r} does not suit task {task.name!r} of kind {task.kind!r}"
            )
        decoders.append(make_decoder(kind, core.output_shape, task.num_outputs))
    return MultiTaskModel(core, encoders, decoders, [t.name for t in tasks])
