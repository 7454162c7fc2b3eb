"""The training forward of a step: the module data-parallel training wraps, and the rule
that turns per-rank mean losses into the global batch's."""

from __future__ import annotations

import torch
from torch import nn

from flexmtl.sharing import find_cores
from flexmtl.training import distributed

__all__ = ["TrainingForward", "global_mean"]


class TrainingForward(nn.Module):
    """The training forward of several tasks as one module call: the outputs
    (``model.forward_tasks`` where the model has it, else ``model(x, t)`` per task) and the
    sharing cores' regularisation of each task (None for a task without any; an empty list
    when no core has one).
    DistributedDataParallel wraps this module, so every parameter a training loss uses is
    reached through DDP's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cores = find_cores(model)

    def forward(self, xs: list[torch.Tensor],
                tasks: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        forward_tasks = getattr(self.model, "forward_tasks", None)
        if callable(forward_tasks):
            outs = forward_tasks(xs, tasks)
        else:
            outs = [self.model(x, t) for x, t in zip(xs, tasks)]
        regs: list[torch.Tensor | None] = []
        for t in tasks:
            terms = [r for r in (core.regularization(t) for core in self.cores) if r is not None]
            regs.append(None if not terms else terms[0] if len(terms) == 1
                        else torch.stack(terms).sum())
        return outs, regs if any(r is not None for r in regs) else []


def global_mean(losses: list[torch.Tensor], sizes: list[int], world_size: int
                ) -> list[torch.Tensor]:
    """Per-task mean losses of this rank's pieces -> the global batches' mean losses.

    Rank ``r`` holds ``n_r`` of ``n`` examples and the mean loss ``L_r`` of its piece. The
    returned value is the global mean ``sum_r n_r L_r / n`` (summed over ranks), and the
    gradient is that of ``N n_r L_r / n``, which DDP averages over the N ranks into
    ``sum_r n_r grad L_r / n``: the gradient one process computes on the whole batch.
    """
    local = torch.stack([loss.detach() for loss in losses])
    n = torch.tensor(sizes, dtype=local.dtype, device=local.device)
    totals = distributed.all_reduce_sum(torch.cat([local * n, n]))
    sums, counts = totals.chunk(2)
    out = []
    for loss, size, mean, count in zip(losses, sizes, sums / counts, counts):
        scaled = loss * (world_size * size / count)
        out.append(mean + (scaled - scaled.detach()))  # value: mean; gradient: scaled's
    return out
