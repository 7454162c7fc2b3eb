"""Per-task batch streams: each task walks through its own reshuffled training set."""

from __future__ import annotations

import torch


class TaskBatchSampler:
    """Draws one batch of indices per task per call, epoch by epoch without replacement.

    Each task has its own permutation and position; a new permutation is drawn from the
    sampler's own generator when a task's epoch runs out, so the stream depends only on
    the seed and can be checkpointed and resumed exactly.
    """

    def __init__(self, sizes: list[int], batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.orders = [torch.randperm(n, generator=self.generator) for n in self.sizes]
        self.positions = [0] * len(self.sizes)
        self.epochs = [0] * len(self.sizes)

    def next(self, task: int) -> torch.Tensor:
        """Indices of the next batch of ``task`` (smaller sets give smaller batches)."""
        n = self.sizes[task]
        size = min(self.batch_size, n)
        if self.positions[task] + size > n:
            self.orders[task] = torch.randperm(n, generator=self.generator)
            self.positions[task] = 0
            self.epochs[task] += 1
        start = self.positions[task]
        self.positions[task] += size
        return self.orders[task][start : start + size]

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "orders": [o.clone() for o in self.orders],
            "positions": list(self.positions),
            "epochs": list(self.epochs),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.orders = [o.clone() for o in state["orders"]]
        self.positions = list(state["positions"])
        self.epochs = list(state["epochs"])
