"""Multi-task models: task encoders -> a shared core -> task decoders.

``y_i = D_i(core(E_i(x_i), i))`` (soft ordering paper, Eqs. 2, 3, 7). Encoders and
decoders are task specific unless stated; the core decides how tasks share layers.

:meth:`MultiTaskModel.forward_tasks` runs one training step's tasks together: tasks whose
encoders (or decoders) are alike dense layers -- ``[Flatten ->] Linear [-> ReLU]`` of one
shape, as :func:`dense_encoder` and :func:`make_decoder` build them -- and small enough
have their weights stacked on the fly and run as ONE batched matrix product per group
(:func:`flexmtl.fusion.dense.stacked_groups`); the parameters stay each task's own
``nn.Linear``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError, UnknownNameError
from flexmtl.fusion import Fusable
from flexmtl.fusion.dense import stacked_groups
from flexmtl.sharing.base import SharingCore
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


def _check_unique(names: Sequence[str]) -> None:
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ConfigError(f"task names must be unique, but {', '.join(map(repr, dup))} "
                          "appear more than once; give each task its own name")


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


class MultiTaskModel(Fusable, nn.Module):
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
        if task_names is not None:
            task_names = list(task_names)
            if len(task_names) != core.num_tasks:
                raise ConfigError(f"got {len(task_names)} task names for a core of "
                                  f"{core.num_tasks} tasks")
            _check_unique(task_names)
        #: whether the task names were given (and so are checked by :meth:`check_tasks`)
        self.names_given = task_names is not None
        self.task_names = list(task_names or [f"task{i}" for i in range(core.num_tasks)])
        #: per task: (input shape, number of outputs) when known (:func:`build_model` sets
        #: them), checked by :meth:`check_tasks`
        self.task_shapes: list[tuple[tuple[int, ...], int]] | None = None
        self.fused = fused

    def check_tasks(self, tasks: Sequence[Task]) -> None:
        """Refuse tasks that are not the ones the model was built for, in its order: a
        different number of tasks, other names or order (when the model has names), or
        other input shapes or output sizes (when known). The :class:`~flexmtl.training.Trainer`
        calls it. Raises :class:`ConfigError` (names, number) or :class:`ShapeError`."""
        given = [t.name for t in tasks]
        built = self.task_names if self.names_given else None
        if len(tasks) != self.num_tasks:
            what = ""
            if built is not None:
                extra = [n for n in given if n not in built]
                missing = [n for n in built if n not in given]
                what = (f" (model: {', '.join(built)}; given: {', '.join(given)}"
                        + (f"; not in the model: {', '.join(extra)}" if extra else "")
                        + (f"; missing: {', '.join(missing)}" if missing else "") + ")")
            raise ConfigError(f"the model was built for {self.num_tasks} tasks but got "
                              f"{len(tasks)}{what}; give the tasks the model was built for")
        if built is not None and given != built:
            if sorted(given) == sorted(built):
                raise ConfigError(
                    f"the tasks are in another order than the model's: model "
                    f"{', '.join(built)}; given {', '.join(given)}; pass them in the "
                    "model's order (task i trains encoder and decoder i)")
            diff = [f"{i}: model {b!r}, given {g!r}"
                    for i, (b, g) in enumerate(zip(built, given)) if b != g]
            raise ConfigError(f"the tasks differ from the model's: {'; '.join(diff)}; give "
                              "the tasks the model was built for")
        for i, task in enumerate(tasks):
            if self.task_shapes is None:
                break
            shape, outputs = self.task_shapes[i]
            if tuple(task.input_shape) != tuple(shape):
                raise ShapeError(f"task {task.name!r} has input shape {task.input_shape} but "
                                 f"the model's task {i} was built for {tuple(shape)}")
            if task.num_outputs != outputs:
                raise ShapeError(f"task {task.name!r} has {task.num_outputs} outputs but the "
                                 f"model's task {i} was built for {outputs}")

    @property
    def num_tasks(self) -> int:
        return self.core.num_tasks

    def task_index(self, task: str | int) -> int:
        """The index of ``task``, given by name or index (unknown names: a suggestion)."""
        if isinstance(task, str):
            if task not in self.task_names:
                raise UnknownNameError("task of this model", task, self.task_names)
            return self.task_names.index(task)
        if isinstance(task, bool) or not isinstance(task, numbers.Integral):
            raise TypeError(f"a task is a name or an integer index, got {task!r}")
        if not 0 <= int(task) < self.num_tasks:
            raise IndexError(f"task index {task} out of range for {self.num_tasks} tasks")
        return int(task)

    def task_encoder(self, task: str | int) -> nn.Module:
        """The encoder of ``task`` (by name or index)."""
        return self.encoders[self.task_index(task)]

    def head(self, task: str | int) -> nn.Module:
        """The decoder (head) of ``task`` (by name or index)."""
        return self.decoders[self.task_index(task)]

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
        run as one batched product per group of alike ones (:mod:`flexmtl.fusion.dense`) unless
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
        product per group (:func:`~flexmtl.fusion.dense.stacked_groups`); None where a
        module runs alone."""
        if not self.fused:
            return [None] * len(xs)
        return stacked_groups([modules[t] for t in tasks], xs)


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
    _check_unique([t.name for t in tasks])
    if len(tasks) != core.num_tasks:
        raise ConfigError(f"got {len(tasks)} tasks for a core of {core.num_tasks} tasks")
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
    model = MultiTaskModel(core, encoders, decoders, [t.name for t in tasks])
    model.task_shapes = [(t.input_shape, t.num_outputs) for t in tasks]
    return model
