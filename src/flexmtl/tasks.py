"""What a task is: a name, its data splits, its output kind, loss and metrics."""

from __future__ import annotations

import abc
import copy
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from flexmtl.errors import ConfigError, DataError, ShapeError

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


def as_split(data, kind: str, *, task: str = "", split: str = "",
             soft_targets: bool = False, allow_nonfinite: bool = False) -> Split:
    """Turn ``(x, y)`` arrays or tensors into a :class:`Split` with checked dtypes, shapes and
    values (:class:`LazyInputs` are kept as they are and only their shape is checked).

    ``task`` and ``split`` name the data in messages. Inputs must be numbers of at least two
    dimensions (``[N, features]``), targets suit ``kind`` (integer classes for
    ``multiclass``, 0/1 for ``binary`` -- or probabilities in [0, 1] with ``soft_targets``
    -- numbers for ``regression``), both finite unless ``allow_nonfinite``, and the split
    not empty. Raises :class:`ShapeError` or :class:`DataError` naming the task and split.
    """
    where = " ".join(w for w in (f"task {task!r}:" if task else "",
                                 f"{split} split:" if split else "") if w) or "data split:"
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ShapeError(f"{where} give an (inputs, targets) pair, got "
                         f"{type(data).__name__}") from None
    if isinstance(x, LazyInputs):
        if len(x.shape) < 2:
            raise ShapeError(f"{where} lazy inputs have shape {tuple(x.shape)}; they must be "
                             "[N, *input_shape]")
    else:
        x = _as_float32(_numeric(x, where, "inputs"), where, "inputs")
        if x.ndim < 2:
            raise ShapeError(
                f"{where} inputs have shape {tuple(x.shape)}, but must be [N, features] (or "
                "[N, *input_shape]); for one feature per example use x.reshape(-1, 1)")
        if not allow_nonfinite:
            _check_finite(x, where, "inputs")
    y = _targets(_numeric(y, where, "targets"), kind, where, soft_targets, allow_nonfinite)
    if len(x) != len(y):
        raise ShapeError(f"{where} inputs and targets differ in length: {len(x)} inputs, "
                         f"{len(y)} targets; give one target per example")
    if len(x) == 0:
        raise DataError(f"{where} the split is empty; give it examples, or leave it out "
                        "(None)")
    return Split(x, y)


def _numeric(a, where: str, what: str) -> torch.Tensor:
    """``a`` as a tensor of numbers (bool, int or float), or a clear error."""
    if torch.is_tensor(a):
        if a.is_complex():
            raise DataError(f"{where} {what} are complex numbers; give real numbers")
        return a
    try:
        arr = np.asarray(a)
    except ValueError as exc:  # ragged nested lists
        raise ShapeError(f"{where} {what} are not a rectangular array ({exc}); give a "
                         "2-D array or tensor") from None
    if arr.dtype.kind == "O":  # numbers in a Python object array still work
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind not in "biuf":
        hint = (" encode class names as integers 0..k-1, e.g. "
                "np.unique(y, return_inverse=True)[1]" if what == "targets" else
                " encode them as numbers")
        raise DataError(f"{where} {what} have dtype {arr.dtype} (not numbers);{hint}")
    return torch.as_tensor(arr)


def _as_float32(t: torch.Tensor, where: str, what: str) -> torch.Tensor:
    """``t`` as float32; finite float64 values beyond float32's range (which the conversion
    would make infinite) are refused, opt-out of the finiteness check or not."""
    out = t.float()
    if t.dtype == torch.float64:
        over = torch.isinf(out) & torch.isfinite(t)
        if bool(over.any()):
            rows = over.reshape(len(t), -1).any(dim=1) if t.ndim else over
            first = int(rows.nonzero()[0, 0]) if t.ndim else 0
            value = float(t[over][0])
            raise DataError(
                f"{where} {what} hold {int(over.sum())} value(s) too large for float32 "
                f"(beyond ±3.4e38; e.g. {value:g} in example {first}); rescale the "
                f"{what}")
    return out


def _check_finite(t: torch.Tensor, where: str, what: str) -> None:
    if not t.is_floating_point():
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = bad.reshape(len(t), -1).any(dim=1) if t.ndim else bad
        first = int(rows.nonzero()[0, 0]) if t.ndim else 0
        raise DataError(
            f"{where} {what} hold {int(bad.sum())} NaN or infinite value(s) in "
            f"{int(rows.sum())} example(s) (the first is example {first}); drop or impute "
            "them, or pass allow_nonfinite=True to the Task to keep them")


def _check_class_labels_finite(y: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise DataError(
            f"{where} class labels hold {int(bad.sum())} NaN or infinite value(s) (the first "
            f"is example {first}); a class label cannot be NaN or infinite, even with "
            "allow_nonfinite=True: drop those examples")


def _targets(y: torch.Tensor, kind: str, where: str, soft_targets: bool,
             allow_nonfinite: bool) -> torch.Tensor:
    """Targets checked and converted for ``kind``: long class indices ``[N]``
    (``multiclass``), float ``[N]`` or ``[N, 1]`` (``binary``), float ``[N]`` or ``[N, k]``
    (``regression``)."""
    if y.ndim == 0:
        raise ShapeError(f"{where} targets are a single number; give one per example")
    if y.dtype == torch.bool:
        y = y.long()
    if kind == "multiclass":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(
                f"{where} multiclass labels have shape {tuple(y.shape)}; give one class "
                "index per example, shape [N] (for one-hot or probability rows use "
                "y.argmax(1))")
        if y.is_floating_point():
            _check_class_labels_finite(y, where)  # NaN cannot be a class, opt-out or not
            # beyond int64 (or float32's exact integers): .long() would give nonsense
            huge = y.abs() >= 2.0 ** 63
            if bool(huge.any()):
                first = int(huge.nonzero()[0, 0])
                raise DataError(
                    f"{where} multiclass labels must be class indices 0..k-1, but "
                    f"{int(huge.sum())} are too large to be one (e.g. the label value "
                    f"{float(y[first]):g} in example {first}); encode them as integers "
                    "0..k-1, or use kind='regression' for numeric targets")
            fractional = y != torch.round(y)
            if bool(fractional.any()):
                first = int(fractional.nonzero()[0, 0])
                raise DataError(
                    f"{where} multiclass labels must be whole class indices, but "
                    f"{int(fractional.sum())} are not (e.g. {float(y[first])!r} in example "
                    f"{first}); round or encode them as integers 0..k-1, or use kind="
                    "'regression' for numeric targets")
        return y.long()
    y = _as_float32(y, where, "targets")
    if not allow_nonfinite:
        _check_finite(y, where, "targets")
    if kind == "binary":
        if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
            raise ShapeError(f"{where} binary targets have shape {tuple(y.shape)}; a binary "
                             "task has one output: give shape [N] (or [N, 1])")
        finite = y[torch.isfinite(y)]
        if soft_targets:
            bad = (finite < 0) | (finite > 1)
            rule = "probability targets must lie in [0, 1]"
        else:
            bad = (finite != 0) & (finite != 1)
            rule = ("binary labels must be 0 or 1; map them to 0/1 (e.g. y == positive "
                    "label), or pass soft_targets=True to the Task for probabilities in "
                    "[0, 1]")
        if bool(bad.any()):
            values = sorted({float(v) for v in finite[bad].unique()[:5]})
            raise DataError(f"{where} {int(bad.sum())} target(s) of other values ("
                            f"{', '.join(f'{v:g}' for v in values)}): {rule}")
    elif y.ndim > 2:
        raise ShapeError(f"{where} regression targets have shape {tuple(y.shape)}; give "
                         "[N] or [N, outputs] (flatten the rest)")
    return y


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
        soft_targets: ``binary`` only: targets are probabilities in [0, 1] (e.g. label
            smoothing or averaged annotations) rather than 0/1 labels; the loss is the
            binary cross-entropy against them and accuracy compares the prediction
            (output > 0) with the thresholded target (target >= 0.5).
        allow_nonfinite: keep NaN or infinite inputs and targets (refused by default: one
            NaN makes every metric of its split NaN).

    Every split is checked when the task is made (:func:`as_split`): a mistake raises
    :class:`~flexmtl.errors.DataError` or :class:`~flexmtl.errors.ShapeError` naming the
    task and split.
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
    soft_targets: bool = False
    allow_nonfinite: bool = False

    if TYPE_CHECKING:  # the constructor takes any (x, y) pair; __post_init__ makes it a Split
        def __init__(self, name: str, kind: str, train: Split | tuple[Any, Any],
                     val: Split | tuple[Any, Any] | None = ...,
                     test: Split | tuple[Any, Any] | None = ..., num_outputs: int = ...,
                     note: str = ..., info: dict = ...,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = ...,
                     input_group: str = ..., soft_targets: bool = ...,
                     allow_nonfinite: bool = ...) -> None: ...

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a task's name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.soft_targets and self.kind != "binary":
            raise ConfigError(f"task {self.name!r}: soft_targets is for binary tasks, not "
                              f"{self.kind!r} ones")
        if (isinstance(self.num_outputs, bool)
                or not isinstance(self.num_outputs, numbers.Integral)
                or self.num_outputs < 0):
            raise ConfigError(f"task {self.name!r}: num_outputs must be a whole number >= 1 "
                              f"(or 0 to infer it), got {self.num_outputs!r}")
        self.num_outputs = int(self.num_outputs)  # e.g. numpy's int64
        if self.kind == "binary" and self.num_outputs not in (0, 1):
            raise ConfigError(f"task {self.name!r}: a binary task has num_outputs=1, got "
                              f"{self.num_outputs}; use kind='multiclass' for more classes")
        for part in ("train", "val", "test"):
            data = getattr(self, part)
            if data is None and part == "train":
                raise ConfigError(f"task {self.name!r}: the train split is required")
            if data is not None:
                setattr(self, part, as_split(data, self.kind, task=self.name, split=part,
                                              soft_targets=self.soft_targets,
                                              allow_nonfinite=self.allow_nonfinite))
        for name, split in (("val", self.val), ("test", self.test)):
            if split is None:
                continue
            if split.x.shape[1:] != self.train.x.shape[1:]:
                raise ShapeError(
                    f"task {self.name!r}: {name} split inputs have shape "
                    f"{tuple(split.x.shape[1:])} per example but train has "
                    f"{tuple(self.train.x.shape[1:])}; all splits need the same shape")
            if self.kind == "regression" and split.y.shape[1:] != self.train.y.shape[1:]:
                raise ShapeError(
                    f"task {self.name!r}: {name} split targets have shape "
                    f"{tuple(split.y.shape[1:])} per example but train has "
                    f"{tuple(self.train.y.shape[1:])}; all splits need the same shape")
        if not self.num_outputs:
            if self.kind == "multiclass":
                self.num_outputs = int(self.train.y.max()) + 1
            elif self.kind == "binary":
                self.num_outputs = 1
            else:
                self.num_outputs = 1 if self.train.y.ndim == 1 else self.train.y.shape[1]
        elif self.kind == "regression":
            given = 1 if self.train.y.ndim == 1 else self.train.y.shape[1]
            if given != self.num_outputs:
                raise ShapeError(f"task {self.name!r}: num_outputs={self.num_outputs} but the "
                                 f"train targets have {given} column(s)")
        if self.kind == "multiclass":
            k = self.num_outputs
            for name in ("train", "val", "test"):
                split = getattr(self, name)
                if split is None:
                    continue
                bad = (split.y < 0) | (split.y >= k)
                if bool(bad.any()):
                    values = sorted({int(v) for v in split.y[bad].unique()[:5]})
                    raise DataError(
                        f"task {self.name!r}: {name} split: {int(bad.sum())} label(s) outside "
                        f"0..{k - 1} (values {', '.join(map(str, values))}); labels are class "
                        f"indices in [0, num_outputs): encode them as 0..k-1"
                        + ("" if name == "train" else
                           f", or pass num_outputs (now {k}, inferred from train)"))

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
            # soft targets count as the class they lean to (hard 0/1 ones are unchanged)
            return ((output.reshape(target.shape) > 0) == (target >= 0.5)).sum()
        return None
