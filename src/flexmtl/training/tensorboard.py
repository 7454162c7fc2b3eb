"""Optional TensorBoard logging of a training run (``TrainConfig(tensorboard=True)``,
``flexmtl run ... --tensorboard``): ``tensorboard --logdir RUN_FOLDER`` shows it live.

Written to the run's ``tensorboard/`` folder: the training loss (summed and per task) and
each optimiser group's learning rate at every logged step; the validation loss and accuracy
(summed or mean, and per task) at every evaluation; and what the core has learned about
sharing at every evaluation -- a soft-ordering core's scales as one image per task
(``[layers, depths]``, bright = large), a routed core's allocation probabilities
(``[tasks, components]``) and its task-similarity matrix (cosine similarity of the task
embeddings, in [0, 1] for binary embeddings: dark..bright). Needs the ``tensorboard`` package
(``pip install 'flexmtl[tensorboard]'``), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexmtl.errors import ConfigError

__all__ = ["TensorBoardLog", "check_tensorboard"]


def check_tensorboard() -> None:
    """:class:`~flexmtl.errors.ConfigError` with what to install when torch's TensorBoard
    writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:  # torch's writer needs the tensorboard package
        raise ConfigError("TensorBoard logging needs the tensorboard package: pip install "
                          "'flexmtl[tensorboard]'") from exc


class TensorBoardLog:
    """A run's TensorBoard writer; every method does nothing when ``folder`` is None.

    ``first_step``: the step training goes on from (a resumed run's checkpoint): events the
    folder holds from later steps -- logged before the run was killed, and trained again
    now -- are dropped (TensorBoard's ``purge_step``), so a resumed run's curves do not
    double back."""

    def __init__(self, folder: Path | None, task_names: Sequence[str], first_step: int = 0):
        self.names = list(task_names)
        self.writer: Any = None
        if folder is None:
            return
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=first_step + 1 if first_step else None)

    def train(self, step: int, losses: Sequence[float], optimizer: torch.optim.Optimizer
              ) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", float(sum(losses)), step)
        for name, value in zip(self.names, losses):
            self.writer.add_scalar(f"train/loss/{name}", float(value), step)
        for i, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', i)}", float(group["lr"]), step)

    def evaluation(self, step: int, entry: dict) -> None:
        if self.writer is None:
            return
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"val/{key}", float(value), step)

    @torch.no_grad()
    def sharing(self, step: int, model: nn.Module) -> None:
        """Images of what the model's core has learned about sharing (one core only)."""
        if self.writer is None:
            return
        from flexmtl.analysis.embeddings import cosine_similarity
        from flexmtl.sharing import RoutedCore, SoftOrdering, find_cores

        cores = find_cores(model)
        if len(cores) != 1:
            return
        core = cores[0]
        if isinstance(core, SoftOrdering):
            scales = core.scales().detach().float().cpu()  # [tasks, layers, depths] in [0, 1]
            for t, name in enumerate(self.names[:len(scales)]):
                self.writer.add_image(f"scales/{name}", scales[t][None], step)
        elif isinstance(core, RoutedCore):
            probs = core.sharing_snapshot().detach().float().cpu()  # [tasks, components]
            self.writer.add_image("allocation/probabilities", probs[None], step)
            sim = cosine_similarity(core.embeddings().float().cpu())
            # binary embeddings: cosine similarity in [0, 1] (0 = no component in common)
            self.writer.add_image("allocation/task_similarity", sim.clamp(0, 1)[None], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
