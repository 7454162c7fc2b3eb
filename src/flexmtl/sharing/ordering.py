"""How tasks order a set of shared layers (Meyerson & Miikkulainen, ICLR 2018, Sec. 3).

A *shared core* holds L blocks ``W_1..W_L`` (dense, conv or any user ``nn.Module``) and
applies them at D depths. Every block must fit at every depth: at each depth all blocks map
the incoming shape to the same shape -- usually the shape itself (dense ``d -> d``, padded
conv), or a shape that shrinks alike at every depth (the Omniglot core, App. A.3: conv 3x3
+ 2x2 max-pool, so each depth halves the image). Each block includes its own nonlinearity
``phi``. Four ways to do it:

* :class:`ParallelOrdering` -- Eq. 2: every task applies ``W_1, ..., W_D`` in order.
* :class:`PermutedOrdering` -- Eq. 3: task ``i`` applies ``W_{sigma_i(1)}, ..., W_{sigma_i(D)}``
  for a permutation ``sigma_i`` drawn before training.
* :class:`SoftOrdering` -- Eq. 7: ``y^k = sum_j s[i, j, k] * W_j(y^{k-1})`` with the scales
  ``s[i, :, k]`` a softmax over the *layers* (or independent sigmoids, Sec. 5).
* :class:`SingleTaskCore` -- each task trains its own copy of the blocks in parallel order.

Dropout is applied to the output of each shared layer, before any scaling (Sec. 3.3).
All cores share one call signature, ``core(h, task) -> h``: the per-task reference
implementation, also used to evaluate one task. ``core.forward_tasks(hs, tasks)`` runs
the inputs of several tasks at once (one training step): fused across tasks and layers
(:mod:`flexmtl.fusion.orderings`) unless the core is built with ``fused=False``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal, cast, get_args

import torch
from torch import nn

from flexmtl.errors import ConfigError, ShapeError
from flexmtl.fusion import Fusable
from flexmtl.fusion.hooks import blocks_state
from flexmtl.fusion.orderings import (
    grouped_rows_tasks,
    parallel_tasks,
    per_task_layers,
    per_task_pays_off,
    soft_tasks,
)
from flexmtl.fusion.planning import BlockPlan, plan_blocks
from flexmtl.sharing.base import SharingCore

__all__ = [
    "SharedCore",
    "ParallelOrdering",
    "PermutedOrdering",
    "SoftOrdering",
    "SingleTaskCore",
    "infer_feature_shape",
    "probe_depth_shapes",
    "random_permutations",
]


#: how soft ordering normalises its scales: over the layers (Eq. 7) or one sigmoid each (Sec. 5)
Gate = Literal["softmax", "sigmoid"]


def infer_feature_shape(block: nn.Module) -> tuple[int, ...]:
    """Per-example input shape of ``block`` read from its first dense or conv layer.

    Only the dense case is unambiguous; for convolutions the spatial size is unknown, so
    callers with conv blocks must pass ``feature_shape`` explicitly.
    """
    for module in block.modules():
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if isinstance(module, nn.modules.conv._ConvNd):
            break
    raise ShapeError(
        f"cannot infer the feature shape of block {type(block).__name__}; pass "
        "feature_shape=(C, H, W) (the per-example shape of the core's input)"
    )


@torch.no_grad()
def probe_shape(module: nn.Module, shape: Sequence[int], what: str) -> tuple[int, ...]:
    """Per-example output shape of ``module`` on a dummy batch of two inputs (eval mode).

    Used when a core is built, so that incompatible blocks fail early with ``what`` named.
    """
    shape = tuple(shape)
    was_training = module.training
    module.eval()
    param = next(module.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (None, None)
    try:
        out = module(torch.zeros(2, *shape, dtype=dtype, device=device))
    except Exception as exc:  # the module's own message, plus what we tried
        raise ShapeError(f"{what} failed on an input of per-example shape {shape}: {exc}") from exc
    finally:
        module.train(was_training)
    return tuple(out.shape[1:])


def probe_depth_shapes(blocks: Sequence[nn.Module], feature_shape: Sequence[int],
                       depth: int) -> tuple[tuple[int, ...], ...]:
    """Per-example shapes ``(input, after depth 1, ..., after depth D)`` of a shared core.

    Any block may sit at any depth (Eqs. 3, 7), so at every depth all blocks must map the
    incoming shape to one common shape; raises :class:`ShapeError` naming the blocks
    otherwise. A block's output shape is taken to depend only on its input shape: once a
    depth preserves the shape, the later depths are not probed again.
    """
    shapes = [tuple(feature_shape)]
    for k in range(1, depth + 1):
        outs = [probe_shape(block, shapes[-1], f"shared block {j} ({type(block).__name__}) "
                                               f"at depth {k}")
                for j, block in enumerate(blocks)]
        if len(set(outs)) > 1:
            detail = ", ".join(f"block {j} ({type(b).__name__}) -> {o}"
                               for j, (b, o) in enumerate(zip(blocks, outs)))
            raise ShapeError(
                f"at depth {k} the shared blocks map per-example shape {shapes[-1]} to "
                f"different shapes: {detail}; every block must give the same shape at every "
                "depth so that it can be applied at any depth")
        shapes.append(outs[0])
        if shapes[-1] == shapes[-2]:  # shape preserving: every later depth sees it too
            shapes += [shapes[-1]] * (depth - k)
            break
    return tuple(shapes)


def random_permutations(
    num_tasks: int, depth: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random permutation of ``range(depth)`` per task, shape ``[num_tasks, depth]``."""
    return torch.stack([torch.randperm(depth, generator=generator) for _ in range(num_tasks)])


class SharedCore(Fusable, SharingCore):
    """Base class of the orderings: a list of shared blocks applied at ``depth`` depths,
    per task (a :class:`~flexmtl.sharing.base.SharingCore`).

    Args:
        blocks: the shared layers. At every depth all blocks must map the incoming shape
            to one common shape (usually ``feature_shape`` itself) so that any block can sit
            at any depth; :func:`probe_depth_shapes` checks this when the core is built.
        num_tasks: number of tasks T.
        depth: number of depths D (default: the number of blocks).
        dropout: drop probability applied to each shared layer's output (PyTorch/Keras
            semantics: the fraction of units zeroed).
        feature_shape: per-example shape the blocks act on; inferred for dense blocks.
        fused: let :meth:`forward_tasks` fuse the work of all tasks (False: it loops over
            the tasks with the reference :meth:`forward`).
    """

    kind = "fixed-order"
    #: whether this core can use fewer or more depths than blocks
    allows_depth_mismatch = False

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_tasks: int,
        depth: int | None = None,
        dropout: float = 0.0,
        feature_shape: Sequence[int] | None = None,
        fused: bool = True,
    ):
        super().__init__()
        blocks = list(blocks)
        if not blocks:
            raise ConfigError("a shared core needs at least one block")
        if not all(isinstance(b, nn.Module) for b in blocks):
            raise ConfigError("every shared block must be a torch.nn.Module")
        if num_tasks < 1:
            raise ConfigError(f"num_tasks must be >= 1, got {num_tasks}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        depth = len(blocks) if depth is None else int(depth)
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        if depth != len(blocks) and not self.allows_depth_mismatch:
            raise ConfigError(
                f"{type(self).__name__} applies each of its {len(blocks)} blocks once, so "
                f"depth must equal the number of blocks (got depth={depth}); only soft "
                "ordering can use a different number of depths"
            )
        shape = tuple(feature_shape) if feature_shape is not None else None
        self.feature_shape = shape or infer_feature_shape(blocks[0])
        #: per-example shape entering each depth, then the output: ``D + 1`` shapes
        self.depth_shapes = probe_depth_shapes(blocks, self.feature_shape, depth)
        self.blocks = nn.ModuleList(blocks)
        self.num_tasks = num_tasks
        self.depth = depth
        self.dropout = nn.Dropout(dropout)
        self.fused = fused
        self._warned_unfused = False
        self._plan: tuple[tuple, BlockPlan] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-example output shape (``feature_shape`` when the blocks preserve it)."""
        return self.depth_shapes[-1]

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task index {task} out of range for {self.num_tasks} tasks")

    def _check_input(self, h: torch.Tensor) -> None:
        if tuple(h.shape[1:]) != self.feature_shape:
            raise ShapeError(
                f"shared core expects inputs of shape (batch, "
                f"{', '.join(map(str, self.feature_shape))}), got {tuple(h.shape)}; check the "
                "encoder output size"
            )

    def layer_order(self, task: int) -> list[int]:
        """Index of the block applied at each depth for ``task`` (hard orderings)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """The order of the blocks each task applies (``orders[task][depth]``)."""
        return {"kind": self.kind, "orders": [self.layer_order(t) for t in range(self.num_tasks)]}

    def forward(self, h: torch.Tensor, task: int) -> torch.Tensor:
        self._check_task(task)
        self._check_input(h)
        for j in self.layer_order(task):
            h = self.dropout(self.blocks[j](h))
        return h

    def forward_tasks(self, hs: Sequence[torch.Tensor], tasks: Sequence[int]
                      ) -> list[torch.Tensor]:
        """``[self(h, t) for h, t in zip(hs, tasks)]`` in one fused pass (batch sizes may
        differ; a task may appear more than once).

        Equal to the reference up to float rounding; in training, dropout draws other
        masks from the same distribution. Blocks that cannot be fused (see
        :mod:`flexmtl.fusion.orderings`) run the per-task loop, with a warning (once).
        """
        hs, tasks = list(hs), [int(t) for t in tasks]
        if len(hs) != len(tasks):
            raise ShapeError(f"got {len(hs)} inputs for {len(tasks)} tasks")
        for h, t in zip(hs, tasks):
            self._check_task(t)
            self._check_input(h)
        if self.fused and hs:
            plan = self._fusion_plan()
            out = self._fused_tasks(plan, hs, tasks)
            if out is not None:
                return out
            self._warn_unfused(plan)
        return [self(h, t) for h, t in zip(hs, tasks)]

    def _all_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def _fusion_plan(self) -> BlockPlan:
        """:func:`plan_blocks` of the blocks, cached until a block, a mode or a hook changes."""
        blocks = self._all_blocks()
        key = blocks_state(blocks)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, plan_blocks(blocks, self.feature_shape))
        return self._plan[1]

    def _fused_tasks(self, plan: BlockPlan, hs: list[torch.Tensor], tasks: list[int]
                     ) -> list[torch.Tensor] | None:
        """Hard orderings: the fused outputs, or None when ``plan`` does not allow it."""
        p, training = self.dropout.p, self.dropout.training
        orders = [self.layer_order(t) for t in tasks]
        if per_task_pays_off(plan.stacked, hs):  # one batched product per depth
            index = list(zip(*orders))  # the block of each input, per depth
            return per_task_layers(plan.stacked, hs, [plan.stacked.weight(i) for i in index],
                                   [plan.stacked.bias(i) for i in index], p, training)
        if plan.per_example:
            return grouped_rows_tasks(self.blocks, hs, orders, p, training)
        return None

    def _warn_unfused(self, plan: BlockPlan) -> None:
        if self._warned_unfused:
            return
        self._warned_unfused = True
        reason = plan.reason or ("each task has its own blocks, and only blocks of one "
                                 "dense/conv layer plus parameter-free modules can be stacked")
        block_type = plan.block_type or type(self._all_blocks()[0]).__name__
        warnings.warn(
            f"{type(self).__name__}.forward_tasks cannot fuse shared blocks of type "
            f"{block_type} ({reason}); it runs the per-task reference loop instead",
            stacklevel=3,
        )


class ParallelOrdering(SharedCore):
    """Eq. 2: all tasks apply the shared blocks in the same order."""

    def layer_order(self, task: int) -> list[int]:
        return list(range(self.depth))

    def _fused_tasks(self, plan, hs, tasks):
        """All tasks' rows go through each block together (one call per depth)."""
        if not plan.per_example:
            return None
        return parallel_tasks(self.blocks, hs, self.dropout.p, self.dropout.training)


class PermutedOrdering(SharedCore):
    """Eq. 3: task ``i`` applies the blocks in its own order ``sigma_i``, fixed before training.

    Args:
        permutations: ``[num_tasks, depth]`` orders to use; drawn with ``generator`` (seed it
            from the run's seed) when not given.
    """

    permutations: torch.Tensor  # a buffer

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_tasks: int,
        depth: int | None = None,
        dropout: float = 0.0,
        feature_shape: Sequence[int] | None = None,
        permutations: torch.Tensor | Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
        fused: bool = True,
    ):
        super().__init__(blocks, num_tasks, depth, dropout, feature_shape, fused)
        if permutations is None:
            perms = random_permutations(num_tasks, self.depth, generator)
        else:
            perms = torch.as_tensor(permutations, dtype=torch.long)
        expected = torch.arange(self.depth)
        if perms.shape != (num_tasks, self.depth) or any(
            not torch.equal(p.sort().values, expected) for p in perms
        ):
            raise ConfigError(
                f"permutations must be a [{num_tasks}, {self.depth}] tensor whose rows are "
                f"permutations of 0..{self.depth - 1}, got {perms.tolist()}"
            )
        self.register_buffer("permutations", perms)

    def layer_order(self, task: int) -> list[int]:
        return self.permutations[task].tolist()


class SingleTaskCore(SharedCore):
    """Baseline: every task trains its own copy of the blocks (parallel order, no sharing).

    Copies are re-initialised (``reset_parameters``) so tasks do not start identical.
    """

    kind = "single-task"

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_tasks: int,
        depth: int | None = None,
        dropout: float = 0.0,
        feature_shape: Sequence[int] | None = None,
        fused: bool = True,
    ):
        super().__init__(blocks, num_tasks, depth, dropout, feature_shape, fused)
        copies = [self.blocks]
        for _ in range(num_tasks - 1):
            clone = copy.deepcopy(self.blocks)
            for module in clone.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
            copies.append(clone)
        del self.blocks
        self.task_blocks = nn.ModuleList(copies)

    def _blocks_of(self, task: int) -> nn.ModuleList:
        return cast(nn.ModuleList, self.task_blocks[task])  # task_blocks holds ModuleLists

    @property
    def num_layers(self) -> int:
        return len(self._blocks_of(0))

    def summary(self) -> dict:
        return {"kind": self.kind}

    def forward(self, h: torch.Tensor, task: int) -> torch.Tensor:
        self._check_task(task)
        self._check_input(h)
        for block in self._blocks_of(task):
            h = self.dropout(block(h))
        return h

    def _all_blocks(self) -> list[nn.Module]:
        copies = cast(Iterable[nn.ModuleList], self.task_blocks)  # it holds ModuleLists
        return [block for blocks in copies for block in blocks]

    def _fused_tasks(self, plan, hs, tasks):
        """Each task's copy of the layer at a depth: one batched product over tasks."""
        if plan.stacked is None:
            return None
        if not per_task_pays_off(plan.stacked, hs):  # large layers: the loop is faster
            return [self(h, t) for h, t in zip(hs, tasks)]
        depth = len(self._blocks_of(0))
        index = [[t * depth + k for t in tasks] for k in range(depth)]  # blocks per depth
        return per_task_layers(plan.stacked, hs, [plan.stacked.weight(i) for i in index],
                               [plan.stacked.bias(i) for i in index], self.dropout.p,
                               self.dropout.training)


class SoftOrdering(SharedCore):
    """Eq. 7: each task learns a soft order of the shared blocks.

    ``scale_logits`` has shape ``[tasks, layers, depths]`` and starts at zero, so every
    scale starts equal. With ``gate="softmax"`` (the paper's Eq. 7) the scales at each
    (task, depth) are a softmax over the layers and sum to one; with ``gate="sigmoid"``
    (Sec. 5) each scale is an independent sigmoid in (0, 1).

    The number of blocks may differ from ``depth`` (a generalisation; the paper uses equal).

    The scales learn at ``scale_lr_multiplier`` times the model's learning rate
    (:meth:`sharing_lr`; a training config's ``sharing_lr`` overrides it). The default,
    :attr:`DEFAULT_SCALE_LR_MULTIPLIER`, comes from the scale-learning-rate ablations of
    REPRODUCTION.md: at the model's own rate (the paper's setting, multiplier 1) the scales
    barely leave uniform in a training run, and soft ordering trails parallel ordering.
    """

    kind = "soft-order"
    allows_depth_mismatch = True
    GATES: tuple[Gate, ...] = get_args(Gate)
    DEFAULT_SCALE_LR_MULTIPLIER = 1000.0

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_tasks: int,
        depth: int | None = None,
        dropout: float = 0.0,
        feature_shape: Sequence[int] | None = None,
        gate: Gate = "softmax",
        fused: bool = True,
        scale_lr_multiplier: float | None = None,
    ):
        super().__init__(blocks, num_tasks, depth, dropout, feature_shape, fused)
        if gate not in self.GATES:
            raise ConfigError(f"gate must be one of {self.GATES}, got {gate!r}")
        if scale_lr_multiplier is not None and not scale_lr_multiplier >= 0:
            raise ConfigError(f"scale_lr_multiplier must be > 0 (0 or None: the default "
                              f"{self.DEFAULT_SCALE_LR_MULTIPLIER:g}), got {scale_lr_multiplier!r}")
        self.gate = gate
        self.scale_lr_multiplier = float(scale_lr_multiplier or self.DEFAULT_SCALE_LR_MULTIPLIER)
        self.scale_logits = nn.Parameter(torch.zeros(num_tasks, self.num_layers, self.depth))
        self._scales_given: torch.Tensor | None = None  # forward_tasks(scales=) while it runs

    def scales(self, task: int | None = None, *, grad: bool = False) -> torch.Tensor:
        """Scales ``s[task, layer, depth]`` (all tasks when ``task`` is None), as plain
        numbers; ``grad=True`` keeps the autograd graph (for a regulariser of your own)."""
        logits = self.scale_logits if task is None else self.scale_logits[task]
        if self.gate == "softmax":
            s = torch.softmax(logits, dim=-2)  # over layers (Eq. 7), never over depths
        else:
            s = torch.sigmoid(logits)
        return s if grad else s.detach()

    @torch.no_grad()
    def set_scales(self, scales: torch.Tensor | Sequence, task: int | None = None) -> None:
        """Make :meth:`scales` equal ``scales``: ``[layers, depths]`` for ``task``, or
        ``[tasks, layers, depths]`` for all. With the softmax gate every depth's scales must
        be >= 0 and sum to 1 (a zero becomes a vanishing scale, 1e-30); with the sigmoid
        gate each lies in [0, 1]."""
        s = torch.as_tensor(scales, dtype=self.scale_logits.dtype)
        want = ((self.num_layers, self.depth) if task is not None
                else (self.num_tasks, self.num_layers, self.depth))
        if tuple(s.shape) != want:
            dims = "[layers, depths]" if task is not None else "[tasks, layers, depths]"
            raise ShapeError(f"scales must have shape {dims} = {list(want)}, got "
                             f"{list(s.shape)}")
        if task is not None:
            self._check_task(task)
        if not torch.isfinite(s).all() or (s < 0).any() or (s > 1).any():
            raise ConfigError("scales must lie in [0, 1]")
        if self.gate == "softmax":
            sums = s.sum(dim=-2)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                raise ConfigError(f"with the softmax gate each depth's scales sum to 1; got "
                                  f"sums {sums.flatten().tolist()}")
            logits = s.clamp_min(1e-30).log()
        else:
            logits = torch.logit(s, eps=1e-7)
        target = self.scale_logits if task is None else self.scale_logits[task]
        target.copy_(logits.to(target.device))

    def freeze_scales(self, frozen: bool = True) -> None:
        """Keep the scales as they are in training (``frozen``), or let them learn again."""
        self.scale_logits.requires_grad_(not frozen)

    def sharing_parameters(self) -> list[nn.Parameter]:
        """Parameters that decide the sharing (own optimiser group, no weight decay)."""
        return [self.scale_logits]

    def sharing_lr(self, lr: float) -> float:
        """``lr`` times :attr:`scale_lr_multiplier`."""
        return lr * self.scale_lr_multiplier

    def sharing_snapshot(self) -> torch.Tensor:
        """What the trainer logs over training: the scales ``[tasks, layers, depths]``."""
        return self.scales()

    @torch.no_grad()
    def summary(self) -> dict:
        """The gate, the scales ``[tasks][layers][depths]`` and each task's strongest path."""
        return {"kind": self.kind, "gate": self.gate, "scales": self.scales().tolist(),
                "strongest_path": [self.layer_order(t) for t in range(self.num_tasks)]}

    def layer_order(self, task: int) -> list[int]:
        """The strongest layer at each depth (the path drawn in Fig. 4d)."""
        return self.scales(task).argmax(dim=0).tolist()

    def forward(
        self, h: torch.Tensor, task: int, scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the core for ``task``; ``scales`` ([layers, depths]) overrides the learned ones."""
        self._check_task(task)
        self._check_input(h)
        if scales is None and self._scales_given is not None:
            scales = self._scales_given[task]
        s = self.scales(task, grad=True) if scales is None else scales
        if s.shape != (self.num_layers, self.depth):
            raise ShapeError(
                f"scales must have shape [layers, depths] = [{self.num_layers}, {self.depth}], "
                f"got {tuple(s.shape)}"
            )
        for k in range(self.depth):
            outs = self.dropout(torch.stack([block(h) for block in self.blocks]))  # [L, B, ...]
            h = (s[:, k].reshape(-1, *(1,) * (outs.ndim - 1)) * outs).sum(dim=0)
        return h

    def forward_tasks(self, hs: Sequence[torch.Tensor], tasks: Sequence[int],
                      scales: torch.Tensor | None = None) -> list[torch.Tensor]:
        """:meth:`SharedCore.forward_tasks`; ``scales`` (``[tasks, layers, depths]``, for all
        the core's tasks) overrides the learned scales, as in :meth:`forward`."""
        if scales is None:
            return super().forward_tasks(hs, tasks)
        want = (self.num_tasks, self.num_layers, self.depth)
        if tuple(scales.shape) != want:
            raise ShapeError(f"scales must have shape [tasks, layers, depths] = {list(want)}, "
                             f"got {list(scales.shape)}")
        self._scales_given = scales  # read by forward and _fused_tasks
        try:
            return super().forward_tasks(hs, tasks)
        finally:
            self._scales_given = None

    def _fused_tasks(self, plan, hs, tasks):
        """Eq. 7 for all tasks at once: all layers of a depth on all rows, then each row's
        mix with its task's scales."""
        if not plan.per_example:
            return None
        scales = self.scales(grad=True) if self._scales_given is None else self._scales_given
        return soft_tasks(plan, self.blocks, hs, tasks, scales, self.dropout.p,
                          self.dropout.training)
