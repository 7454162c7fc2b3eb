"""The losses of several tasks with alike outputs and targets as one stacked loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flexmtl.tasks import Task, kind_loss

__all__ = ["stacked_losses", "task_losses"]


def stacked_losses(tasks: Sequence[Task], outs: Sequence[torch.Tensor],
                   ys: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """``[task.loss(out, y) ...]`` as ONE loss over the stacked outputs, or None when the
    tasks differ in kind, one overrides :meth:`Task.loss`, or the outputs or targets differ
    in shape or dtype. Each task's value is the same batch mean as :meth:`Task.loss`: both
    take the per-example losses from :func:`~flexmtl.tasks.kind_loss`."""
    if len(tasks) < 2 or any(type(t).loss is not Task.loss for t in tasks):
        return None
    kind = tasks[0].kind
    if (any(t.kind != kind for t in tasks)
            or any(o.shape != outs[0].shape or o.dtype != outs[0].dtype for o in outs)
            or any(y.shape != ys[0].shape or y.dtype != ys[0].dtype for y in ys)):
        return None
    out, y = torch.stack(list(outs)), torch.stack(list(ys))  # [T, B, ...]
    per_example = kind_loss(kind, out.flatten(0, 1), y.flatten(0, 1), reduction="none")
    return list(per_example.reshape(len(tasks), -1).mean(1).unbind(0))


def task_losses(tasks: Sequence[Task], outs: Sequence[torch.Tensor],
                ys: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[tasks[i].loss(outs[i], ys[i])]``: one stacked loss (:func:`stacked_losses`) per
    group of tasks with alike outputs and targets, the others' task by task."""
    losses: list[torch.Tensor | None] = [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}
    for i, (task, out, y) in enumerate(zip(tasks, outs, ys)):
        if type(task).loss is Task.loss:
            groups.setdefault((task.kind, out.shape, out.dtype, y.shape, y.dtype), []).append(i)
    for members in groups.values():
        stacked = stacked_losses([tasks[i] for i in members], [outs[i] for i in members],
                                 [ys[i] for i in members])
        for i, loss in zip(members, stacked or ()):
            losses[i] = loss
    return [loss if loss is not None else task.loss(out, y)
            for loss, task, out, y in zip(losses, tasks, outs, ys)]
