"""Evaluation of a multi-task model on a split: mean loss and accuracy per task."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flexmtl.tasks import Task

__all__ = ["evaluate_tasks", "outputs_of"]


@torch.no_grad()
def evaluate_tasks(model: nn.Module, tasks: Sequence[Task], groups: Sequence[list[int]],
                   split: str, batch_size: int, device: torch.device) -> dict:
    """Mean loss and accuracy of every task on ``split`` (``train``/``val``/``test``), in
    evaluation mode, ``batch_size`` examples at a time; the tasks of one input group
    (``groups``, :func:`~flexmtl.training.sampler.input_groups`) read each batch once.

    Returns ``{"tasks": {name: {"loss", "accuracy"}}, "loss": sum of task losses,
    "accuracy": mean task accuracy}``; tasks without that split are left out.
    """
    was_training = model.training
    model.eval()
    found = {}
    size = batch_size
    try:
        for group in groups:  # one read of each batch of inputs per group
            data = getattr(tasks[group[0]], split)
            if data is None:
                continue
            total_loss, correct = [0.0] * len(group), [0.0] * len(group)
            for start in range(0, len(data), size):
                x = data.x[start : start + size].to(device)
                outs = outputs_of(model, x, group)
                for i, (t, out) in enumerate(zip(group, outs)):
                    task = tasks[t]
                    y = getattr(task, split).y[start : start + size].to(device)
                    total_loss[i] += float(task.loss(out, y)) * len(x)
                    c = task.correct(out, y)
                    correct[i] += float(c) if c is not None else math.nan
            for i, t in enumerate(group):
                found[t] = {"loss": total_loss[i] / len(data),
                            "accuracy": correct[i] / len(data)}
    finally:
        model.train(was_training)
    per_task = {tasks[t].name: found[t] for t in sorted(found)}
    if not per_task:
        return {"tasks": {}, "loss": math.nan, "accuracy": math.nan}
    accuracies = [m["accuracy"] for m in per_task.values() if not math.isnan(m["accuracy"])]
    return {
        "tasks": per_task,
        "loss": sum(m["loss"] for m in per_task.values()),
        # over the classification tasks (regression tasks have no accuracy)
        "accuracy": sum(accuracies) / len(accuracies) if accuracies else math.nan,
    }


def outputs_of(model: nn.Module, x: torch.Tensor, group: list[int]) -> list[torch.Tensor]:
    """Outputs of the tasks of ``group`` on the same inputs ``x`` (evaluation)."""
    forward_tasks = getattr(model, "forward_tasks", None)
    if len(group) > 1 and callable(forward_tasks):
        return forward_tasks([x] * len(group), group)
    return [model(x, t) for t in group]
