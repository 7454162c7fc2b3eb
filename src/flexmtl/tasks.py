"""What a task is: a name, its data splits, its output kind, loss and metrics."""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from flexmtl.errors import ConfigError, ShapeError

KINDS = ("multiclass", "binary", "regression")


class LazyInputs(abc.ABC):
    """Inputs read on demand, for data sets too large to hold in memory (e.g. 200,000 CelebA
    images decoded from their files batch by batch).

    Subclasses give ``shape`` (``(N, *input_shape)``) and :meth:`read`, and call
    ``super().__init__()``. A :class:`Split` keeps them as they are; the trainer indexes them
    like a tensor, with a 1-D tensor of example indices (a training batch) or a slice
    (evaluation), and gets a float tensor on the device that :meth:`to` named. The last
    batch read is kept: the same indices again (the next task of an input group, reading
    the same examples) return the same tensor without reading -- do not change it in place.
    """

    device = torch.device("cpu")

    def __init__(self):
        #: state shared with the :meth:`to` views (the last batch read, worker pools)
        self.shared: dict = {}

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """``(number of examples, *per-example shape)``."""

    @abc.abstractmethod
    def read(self, index: np.ndarray) -> torch.Tensor:
        """Examples ``index`` (1-D int64) as a float tensor ``[len(index), *shape[1:]]``."""

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        elif torch.is_tensor(index):
            index = index.cpu().numpy()
        index = np.asarray(index, dtype=np.int64)
        if index.ndim != 1:
            raise ShapeError(f"lazy inputs take a 1-D index, got shape {index.shape}")
        key = (self.device, index.tobytes())
        last = self.shared.get("last")
        if last is not None and last[0] == key:
            return last[1]
        x = self.read(index).to(self.device, non_blocking=True)
        self.shared["last"] = (key, x)
        return x

    def to(self, device: torch.device | str) -> LazyInputs:
        """A view whose reads land on ``device`` (shallow: it shares everything else)."""
        view = copy.copy(self)
        view.device = torch.device(device)
        return view


class Split(NamedTuple):
    """Inputs ``x`` ``[N, *input_shape]`` (a tensor or :class:`LazyInputs`) and targets ``y``
    ``[N]`` (or ``[N, outputs]``)."""

    x: torch.Tensor | LazyInputs
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


def as_split(data, kind: str) -> Split:
    """Turn ``(x, y)`` arrays or tensors into a :class:`Split` with checked dtypes and sizes
    (:class:`LazyInputs` are kept as they are)."""
    x, y = data
    if not isinstance(x, LazyInputs):
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    y = y.long() if kind == "multiclass" else y.float()
    if len(x) != len(y):
        raise ShapeError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        raise ShapeError("a data split is empty")
    return Split(x, y)


def kind_loss(kind: str, output: torch.Tensor, target: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """The loss of a task of ``kind`` (:data:`KINDS`): cross-entropy (``multiclass``),
    binary cross-entropy of logits (``binary``) or squared error (``regression``), reduced
    as ``torch.nn.functional``'s ``reduction`` says. :meth:`Task.loss` and the stacked
    losses of several tasks (:func:`flexmtl.fusion.losses.stacked_losses`) both use it."""
    if kind == "multiclass":
        return F.cross_entropy(output, target, reduction=reduction)
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target,
                                                  reduction=reduction)
    return F.mse_loss(output.reshape(target.shape), target, reduction=reduction)


@dataclass
class Task:
    """One task of a multi-task problem.

    Args:
        name: unique name (used in logs and results).
        kind: ``"multiclass"`` (softmax + cross-entropy), ``"binary"`` (one sigmoid output +
            binary cross-entropy) or ``"regression"`` (mean squared error).
        train, val, test: ``(x, y)`` pairs; ``val`` selects the checkpoint and ``test`` is
            evaluated once at the end. Either may be None.
        num_outputs: classes for ``multiclass``; 1 for ``binary``; output size for
            ``regression`` (inferred when omitted).
        note: where the data came from (shown in run output and results).
        info: extra facts about the task, copied into each run's ``result.json``.
        augment: applied to every training batch of inputs (e.g. random crops); it may use
            torch's global random state, which checkpoints save and restore.
        input_group: tasks with the same non-empty ``input_group`` have the same inputs in
            every split (e.g. the 40 attributes of the CelebA images): each training step
            gives them the same examples (soft ordering, App. A: with a shared encoder "the
            inputs of the samples in each batch are the same across tasks"), and evaluation
            reads each batch of inputs once for all of them.
    """

    name: str
    kind: str
    train: Split
    val: Split | None = None
    test: Split | None = None
    num_outputs: int = 0
    note: str = ""
    info: dict = field(default_factory=dict)
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_group: str = ""

    if TYPE_CHECKING:  # the constructor takes any (x, y) pair; __post_init__ makes it a Split
        def __init__(self, name: str, kind: str, train: Split | tuple[Any, Any],
                     val: Split | tuple[Any, Any] | None = ...,
                     test: Split | tuple[Any, Any] | None = ..., num_outputs: int = ...,
                     note: str = ..., info: dict = ...,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = ...,
                     input_group: str = ...) -> None: ...

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        self.train = as_split(self.train, self.kind)
        self.val = None if self.val is None else as_split(self.val, self.kind)
        self.test = None if self.test is None else as_split(self.test, self.kind)
        for split in (self.val, self.test):
            if split is not None and split.x.shape[1:] != self.train.x.shape[1:]:
                raise ShapeError(
                    f"task {self.name!r}: split input shape {tuple(split.x.shape[1:])} differs "
                    f"from train {tuple(self.train.x.shape[1:])}"
                )
        if not self.num_outputs:
            if self.kind == "multiclass":
                self.num_outputs = int(self.train.y.max()) + 1
            elif self.kind == "binary":
                self.num_outputs = 1
            else:
                self.num_outputs = 1 if self.train.y.ndim == 1 else self.train.y.shape[1]
        if self.kind == "multiclass":
            for split in (self.train, self.val, self.test):
                if split is not None and (split.y.min() < 0 or split.y.max() >= self.num_outputs):
                    raise ShapeError(
                        f"task {self.name!r}: labels must lie in 0..{self.num_outputs - 1}"
                    )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy, binary cross-entropy or squared error
        (:func:`kind_loss` of the task's kind)."""
        return kind_loss(self.kind, output, target)

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Number of correct predictions in a batch (None for regression)."""
        if self.kind == "multiclass":
            return (output.argmax(dim=1) == target).sum()
        if self.kind == "binary":
            return ((output.reshape(target.shape) > 0).float() == target).sum()
        return None
