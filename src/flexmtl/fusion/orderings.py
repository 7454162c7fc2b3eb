"""Fused multi-task execution of the shared-layer orderings (soft ordering paper, Sec. 3).

The reference cores in :mod:`flexmtl.sharing.ordering` run ``core(h, task)`` one task at a
time: soft ordering (Eq. 7) then launches T x D x L small operations per training step,
and on small layers the interpreter and kernel-launch overhead dominate. The functions
here run ALL tasks of a step through each depth together; the cores call them from
``forward_tasks(hs, tasks)``. How much can be fused depends on the blocks
(:func:`~flexmtl.fusion.planning.plan_blocks`):

* **stacked** -- every block is one ``nn.Linear`` or ``nn.Conv{1,2,3}d`` (groups 1, zero
  padding) followed by parameter-free modules that act on each example alone (ReLU,
  pooling, ...), all of the same structure. The layers' weights are read from the blocks
  at every call and stacked (``torch.stack`` is differentiable, so ``state_dict``,
  optimisers and the reference path are untouched):

  - soft ordering: the L layers of a depth are ONE matrix product ``H @ [W_1 .. W_L]^T``
    (one convolution with ``L x C`` output channels) over the rows of all tasks, then the
    per-row mix of Eq. 7. Dense ReLU or linear blocks (every soft-ordering experiment of
    the paper) run all depths in one autograd node with a hand-written backward
    (:class:`~flexmtl.fusion.kernels.DenseSoftOrder`): on CPU the step is bound by passes
    over the ``[N, L*d]`` activations, not by the products;
  - permuted ordering / single task: each task's own layer at a depth is one batched
    matrix product over tasks (one grouped convolution with ``groups=T``), when
    :func:`per_task_pays_off`; otherwise each block runs on the rows that use it.

* **rows** -- the blocks act on each example alone (built-in torch layers, or classes
  declared with :func:`~flexmtl.fusion.planning.register_per_example`): the tasks' rows
  are concatenated and each block is called once per depth on all the rows that use it (L
  calls per depth for soft ordering instead of T x L). Parallel ordering (Eq. 2) always
  works this way.

* anything else (e.g. batch norm in training mode, or an unknown ``nn.Module`` subclass)
  falls back to the per-task loop; the core warns once, naming the block type.

Dropout keeps the reference semantics -- an independent mask for every element of every
shared layer's output, applied before the soft-order scaling -- with masks drawn from
random bits (:mod:`flexmtl.fusion.masks`): in training the fused path draws other masks
than the reference; in evaluation both are deterministic and equal up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard, cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.rnn import pad_sequence

from flexmtl.fusion.hooks import ModuleSequence
from flexmtl.fusion.kernels import DenseSoftOrder
from flexmtl.fusion.masks import dropout, keep_mask, keep_probability
from flexmtl.fusion.planning import BlockPlan, StackedLayers, stack_pays_off

__all__ = [
    "parallel_tasks",
    "soft_tasks",
    "grouped_rows_tasks",
    "per_task_layers",
    "per_task_pays_off",
]


def parallel_tasks(blocks: ModuleSequence, hs: Sequence[torch.Tensor], p: float,
                   training: bool) -> list[torch.Tensor]:
    """Eq. 2: every task applies ``W_1 .. W_D`` in order, so all rows go through each
    block in one call."""
    h = torch.cat(list(hs))
    for block in blocks:
        h = dropout(block(h), p, training)
    return list(h.split([x.shape[0] for x in hs]))


def soft_tasks(plan: BlockPlan, blocks: ModuleSequence, hs: Sequence[torch.Tensor],
               tasks: Sequence[int], scales: torch.Tensor, p: float,
               training: bool) -> list[torch.Tensor]:
    """Eq. 7 for all tasks: ``y_i^k = sum_j s[i, j, k] * drop(phi(W_j y_i^{k-1}))``.

    ``scales`` ``[T, L, D]``; ``hs[i]`` belongs to task ``tasks[i]``. The rows of all
    inputs are concatenated; at each depth all L layers run on all rows in one product
    (stacked blocks) or one call per block, and each row mixes them with its task's scales
    (times ``1 / keep probability``: the dropout rescaling, folded into the scales).
    """
    counts = [x.shape[0] for x in hs]
    h = torch.cat(list(hs))
    p = p if training else 0.0
    rescale = 1.0 / keep_probability(p, h.device) if p else 1.0
    per_row = torch.repeat_interleave(torch.tensor(tasks, device=h.device),
                                      torch.tensor(counts, device=h.device), output_size=len(h))
    stacked = plan.stacked
    if stacked is not None and (phi := _dense_activation(stacked)) is not None:
        # dense ReLU / linear blocks: hand-written forward and backward
        w = torch.cat([layer.weight for layer in stacked.layers])  # [L*d, d]
        # all the layers have one signature: each has a bias as the first has
        b = None if stacked.layers[0].bias is None else torch.cat(
            cast("list[torch.Tensor]", [layer.bias for layer in stacked.layers]))
        h = DenseSoftOrder.apply(h, w, b, scales, per_row, rescale, phi == "relu", p)
        return list(h.split(counts))
    s = scales.index_select(0, per_row).permute(2, 0, 1).contiguous() * rescale  # [D, N, L]
    if stacked is not None:
        w, b = stacked.weight(), stacked.bias()
        w = w.reshape(-1, *w.shape[2:])  # [L*out, in, ...]: one product for all layers
        b = None if b is None else b.reshape(-1)
        all_layers = lambda x: stacked.all_layers(x, w, b)  # noqa: E731
    else:
        all_layers = lambda x: torch.stack([block(x) for block in blocks], 1)  # noqa: E731
    for s_k in s:
        y = all_layers(h)  # [N, L, ...] (the shape may shrink with depth, e.g. pooling)
        if p:
            y = y * keep_mask(y, p)
        h = (y * s_k.reshape(*s_k.shape, *(1,) * (y.ndim - 2))).sum(1)
    return list(h.split(counts))


def _dense_activation(stacked: StackedLayers) -> str | None:
    """``"relu"`` / ``"linear"`` for dense blocks whose tail is ReLU / nothing, else None."""
    if isinstance(stacked.layers[0], _ConvNd):
        return None
    tail = [m for m in stacked.tail if type(m) is not nn.Identity]
    if not tail:
        return "linear"
    return "relu" if len(tail) == 1 and type(tail[0]) is nn.ReLU else None


def grouped_rows_tasks(blocks: ModuleSequence, hs: Sequence[torch.Tensor],
                       orders: Sequence[Sequence[int]], p: float,
                       training: bool) -> list[torch.Tensor]:
    """Hard orderings (Eq. 3): input i applies ``blocks[orders[i][k]]`` at depth k. At each
    depth the rows of the inputs that use the same block are concatenated: one call per
    block used."""
    xs = list(hs)
    for k in range(len(orders[0]) if orders else 0):
        users: dict[int, list[int]] = {}
        for i, order in enumerate(orders):
            users.setdefault(order[k], []).append(i)
        for j, members in users.items():
            x = torch.cat([xs[i] for i in members]) if len(members) > 1 else xs[members[0]]
            y = dropout(blocks[j](x), p, training)
            for i, part in zip(members, y.split([xs[i].shape[0] for i in members])):
                xs[i] = part
    return xs


def per_task_pays_off(stacked: StackedLayers | None, hs: Sequence[torch.Tensor]
                      ) -> TypeGuard[StackedLayers]:
    """Whether :func:`per_task_layers` should run these inputs: the blocks stack, padding
    at most doubles the rows and the per-task weights of a depth are small enough
    (:func:`~flexmtl.fusion.planning.stack_pays_off`)."""
    if stacked is None or not stack_pays_off(stacked.layers[0].weight, len(hs)):
        return False
    return len(hs) * max(x.shape[0] for x in hs) <= 2 * sum(x.shape[0] for x in hs)


def per_task_layers(stacked: StackedLayers, hs: Sequence[torch.Tensor],
                    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                    p: float, training: bool) -> list[torch.Tensor]:
    """Input i applies its own layer ``weights[k][i]`` at depth k (permuted ordering,
    Eq. 3, and single-task copies): ONE batched product (grouped convolution) per depth.

    ``weights[k]`` ``[len(hs), out, in, ...]``, ``biases[k]`` ``[len(hs), out]`` or None.
    Batches are padded to the largest one; padded rows are computed, then dropped.
    """
    counts = [x.shape[0] for x in hs]
    conv = isinstance(stacked.layers[0], _ConvNd)
    if conv:  # [B, T*C, *spatial]: the tasks side by side along the channels
        x = pad_sequence(list(hs))
        x = x.reshape(x.shape[0], -1, *x.shape[3:])
    else:  # [T, B, d]
        x = pad_sequence(list(hs), batch_first=True)
    for w, b in zip(weights, biases):
        x = dropout(stacked.per_task(x, w, b), p, training)
    if conv:
        per_task = x.reshape(x.shape[0], len(hs), -1, *x.shape[2:]).unbind(1)
    else:
        per_task = x.unbind(0)
    return [y if n == len(y) else y[:n] for y, n in zip(per_task, counts)]
