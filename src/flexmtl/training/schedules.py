"""Training schedules: how one training step visits the tasks.

* ``joint`` -- soft ordering paper, appendix A: one batch per task, the per-task losses
  are summed and make ONE optimiser update.
* ``round-robin`` -- one batch and one optimiser update per task, tasks in a fresh random
  order each step (the Gumbel-Matrix authors' schedule, paper Sec. V).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from flexmtl.registry import Registry

#: ``batch(task_index) -> (x, y)`` supplied by the trainer
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
#: ``losses(tasks, batches) -> [scalar per task]`` supplied by the trainer: one forward of
#: the listed tasks (fused where the model can) and their losses
LossFn = Callable[[Sequence[int], Sequence[tuple[torch.Tensor, torch.Tensor]]], list[torch.Tensor]]
#: ``update(loss, task_indices)``: check, backward, clip and step, supplied by the trainer
UpdateFn = Callable[[torch.Tensor, Sequence[int]], None]


class Schedule:
    """Runs one training step; returns the loss of each task (detached floats)."""

    def step(self, num_tasks: int, batch: BatchFn, loss: LossFn, update: UpdateFn,
             generator: torch.Generator) -> list[float]:
        raise NotImplementedError


class JointSchedule(Schedule):
    """Sum the losses of one batch per task; one update (soft ordering, appendix A)."""

    def step(self, num_tasks, batch, loss, update, generator):
        tasks = range(num_tasks)
        losses = loss(tasks, [batch(t) for t in tasks])
        update(torch.stack(losses).sum(), tasks)
        return [float(v.detach()) for v in losses]


class RoundRobinSchedule(Schedule):
    """One batch and one update per task, in a shuffled task order every step."""

    def step(self, num_tasks, batch, loss, update, generator):
        values = [0.0] * num_tasks
        for t in torch.randperm(num_tasks, generator=generator).tolist():
            (value,) = loss([t], [batch(t)])
            update(value, [t])
            values[t] = float(value.detach())
        return values


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
SCHEDULES.register("joint", JointSchedule)
SCHEDULES.register("round-robin", RoundRobinSchedule)
