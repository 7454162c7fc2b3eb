"""Per-task batch streams: each task walks through its own reshuffled training set."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from flexmtl.errors import ConfigError
from flexmtl.tasks import Task


class TaskBatchSampler:
    """Draws one batch of indices per task per call, epoch by epoch without replacement.

    Each stream has its own permutation and position; a new permutation is drawn from the
    sampler's own generator when a stream's epoch runs out, so the batches depend only on
    the seed and can be checkpointed and resumed exactly. By default every task is its own
    stream. Tasks given the same ``streams`` label share one (their training sets must have
    equal sizes): each receives the stream's batches in turn, and the stream moves on when
    a task asks again after it has had the latest one -- so tasks asked once per step get
    the same examples in each step.
    """

    def __init__(self, sizes: list[int], batch_size: int, seed: int,
                 streams: Sequence[Hashable] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = list(sizes)
        labels: list[Hashable] = list(range(len(self.sizes))) if streams is None else list(streams)
        if len(labels) != len(self.sizes):
            raise ValueError(f"got {len(labels)} stream labels for {len(self.sizes)} tasks")
        ids: dict[Hashable, int] = {}
        self.stream_of = [ids.setdefault(label, len(ids)) for label in labels]
        stream_sizes: dict[int, int] = {}
        for task, stream in enumerate(self.stream_of):
            if stream_sizes.setdefault(stream, self.sizes[task]) != self.sizes[task]:
                raise ValueError(f"tasks of one stream need training sets of equal size; task "
                                 f"{task} has {self.sizes[task]}, not {stream_sizes[stream]}")
        self.stream_sizes = [stream_sizes[s] for s in range(len(ids))]
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.orders = [torch.randperm(n, generator=self.generator) for n in self.stream_sizes]
        self.positions = [0] * len(self.stream_sizes)
        self.epochs = [0] * len(self.stream_sizes)
        self.served = [0] * len(self.stream_sizes)  # batches each stream has given out
        self.seen = [0] * len(self.sizes)  # the stream's batch count each task has had
        self.latest: list[torch.Tensor | None] = [None] * len(self.stream_sizes)

    def next(self, task: int) -> torch.Tensor:
        """Indices of the next batch of ``task`` (smaller sets give smaller batches)."""
        s = self.stream_of[task]
        if self.seen[task] < self.served[s]:  # the stream's latest batch, new to this task
            self.seen[task] = self.served[s]
            latest = self.latest[s]
            assert latest is not None  # set whenever the stream has served a batch
            return latest
        n = self.stream_sizes[s]
        size = min(self.batch_size, n)
        if self.positions[s] + size > n:
            self.orders[s] = torch.randperm(n, generator=self.generator)
            self.positions[s] = 0
            self.epochs[s] += 1
        start = self.positions[s]
        self.positions[s] += size
        self.served[s] += 1
        self.seen[task] = self.served[s]
        batch = self.orders[s][start : start + size]
        self.latest[s] = batch
        return batch

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "orders": [o.clone() for o in self.orders],
            "positions": list(self.positions),
            "epochs": list(self.epochs),
            "served": list(self.served),
            "seen": list(self.seen),
        }

    def load_state_dict(self, state: dict) -> None:
        sizes = [len(o) for o in state["orders"]]
        if sizes != self.stream_sizes:
            raise ConfigError(
                f"the checkpoint's sampler has streams of sizes {sizes}, this run's tasks need "
                f"{self.stream_sizes} (the tasks or their input groups changed since the "
                "checkpoint was written)")
        self.generator.set_state(state["generator"])
        self.orders = [o.clone() for o in state["orders"]]
        self.positions = list(state["positions"])
        self.epochs = list(state["epochs"])
        # older checkpoints (one stream per task) have no counters: none are needed there
        self.served = list(state.get("served", [0] * len(self.orders)))
        self.seen = list(state.get("seen", [0] * len(self.sizes)))
        self.latest = [order[pos - min(self.batch_size, len(order)) : pos] if pos else None
                       for order, pos in zip(self.orders, self.positions)]


def input_groups(tasks: Sequence[Task]) -> list[list[int]]:
    """Indices of the tasks that share their inputs (same ``input_group``), in task order;
    a task without an input group is a group of its own. Checks that the tasks of a group
    have splits of equal sizes."""
    groups: dict[object, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task.input_group or i, []).append(i)
    for members in groups.values():
        for split in ("train", "val", "test"):
            sizes = {None if getattr(tasks[t], split) is None else len(getattr(tasks[t], split))
                     for t in members}
            if len(sizes) > 1:
                names = ", ".join(tasks[t].name for t in members)
                raise ConfigError(f"tasks {names} share input group "
                                  f"{tasks[members[0]].input_group!r} but their {split} splits "
                                  f"differ in size ({sorted(sizes, key=str)})")
            first = getattr(tasks[members[0]], split)
            for t in members[1:]:
                other = getattr(tasks[t], split)
                if first is not None and other is not None \
                        and not _same_inputs(first.x, other.x):
                    raise ConfigError(
                        f"tasks {tasks[members[0]].name!r} and {tasks[t].name!r} share input "
                        f"group {tasks[t].input_group!r} but their {split} inputs differ (a "
                        "group's tasks are trained and evaluated on one copy of the inputs); "
                        "give them the same inputs, or no input_group")
    return list(groups.values())


def _same_inputs(a, b) -> bool:
    """Whether two splits' inputs are the same examples: equal tensors; lazy inputs (read
    from files) of one class and shape -- reading them to compare would read the data set."""
    if a is b:
        return True
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return type(a) is type(b) and tuple(a.shape) == tuple(b.shape)
