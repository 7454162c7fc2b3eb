"""Training schedules: how one training step visits the tasks.

* ``joint`` -- soft ordering paper, appendix A: one batch per task, the per-task losses
  are summed and make ONE optimiser update.
* ``round-robin`` -- one batch and one optimiser update per task, tasks in a fresh random
  order each step (the Gumbel-Matrix authors' schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from flexmtl.registry import Registry

#: ``batch(task_index) -> (x, y)`` supplied by the trainer
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
#: ``loss(task_index, x, y) -> scalar`` supplied by the trainer (forward + task loss)
LossFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class Schedule:
    """Runs one training step; returns the loss of each task (detached)."""

    def step(
        self,
        num_tasks: int,
        batch: BatchFn,
        loss: LossFn,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        check: Callable[[torch.Tensor, Sequence[int]], None],
    ) -> list[float]:
        raise NotImplementedError


class JointSchedule(Schedule):
    """Sum the losses of one batch per task; one update (soft ordering, appendix A)."""

    def step(self, num_tasks, batch, loss, optimizer, generator, check):
        optimizer.zero_grad(set_to_none=True)
        losses = [loss(t, *batch(t)) for t in range(num_tasks)]
        total = torch.stack(losses).sum()
        check(total, range(num_tasks))
        total.backward()
        optimizer.step()
        return [float(v.detach()) for v in losses]


class RoundRobinSchedule(Schedule):
    """One batch and one update per task, in a shuffled task order every step."""

    def step(self, num_tasks, batch, loss, optimizer, generator, check):
        values = [0.0] * num_tasks
        for t in torch.randperm(num_tasks, generator=generator).tolist():
            optimizer.zero_grad(set_to_none=True)
            value = loss(t, *batch(t))
            check(value, [t])
            value.backward()
            optimizer.step()
            values[t] = float(value.detach())
        return values


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
SCHEDULES.register("joint", JointSchedule)
SCHEDULES.register("round-robin", RoundRobinSchedule)
