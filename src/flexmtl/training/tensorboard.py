"""Optional TensorBoard logging of a training run (``TrainConfig(tensorboard=True)``,
``flexmtl run ... --tensorboard``): ``tensorboard --logdir RUN_FOLDER`` shows it live.

Written to the run's ``tensorboard/`` folder: the training loss (summed and per task) and
each optimiser group's learning rate at every logged step; the validation loss and accuracy
(summed or mean, and per task) at every evaluation; and what the core has learned about
sharing at every evaluation -- a soft-ordering core's scales as one image per task
(``[layers, depths]``, bright = large), a routed core's allocation probabilities
(``[tasks, components]``) and its task-similarity matrix (cosine similarity of the task
embeddings, mapped from [-1, 1] to dark..bright). Needs the ``tensorboard`` package
(``pip install 'flexmtl[tensorboard]'``), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexmtl.errors import ConfigError

__all__ = ["TensorBoardLog"]


class TensorBoardLog:
    """A run's TensorBoard writer; every method does nothing when ``folder`` is None."""

    def __init__(self, folder: Path | None, task_names: Sequence[str]):
        self.names = list(task_names)
        self.writer: Any = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the tensorboard package
            raise ConfigError("TensorBoard logging needs the tensorboard package: pip install "
                              "'flexmtl[tensorboard]'") from exc
        self.writer = SummaryWriter(str(folder))

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
            self.writer.add_image("allocation/task_similarity", ((sim + 1) / 2)[None], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
