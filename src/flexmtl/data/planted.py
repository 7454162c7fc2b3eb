"""Planted structure: synthetic multi-task problems whose right sharing is known, to test
whether a learned-sharing method finds it (``flexmtl run planted-orders``).

:func:`planted_orders` draws tasks computed by the same ``depth`` layers applied in
task-specific orders, the structure soft layer ordering (Eq. 7) can represent exactly: a
shared random projection ``E``, layers ``f_l(h) = tanh(W_l h + b_l)`` and task ``t``'s output
``r . f_{o_t(D)}(... f_{o_t(1)}(E x))``, standardised per task (mean 0, standard deviation 1
on its training inputs), plus Gaussian noise.

:func:`planted_groups` draws groups of tasks that share a teacher network (``flexmtl run
planted-groups``): a task's output is its group's teacher plus its own noise, so the tasks of
a group are the same function and tasks of different groups unrelated -- the structure
Gumbel-Matrix task embeddings (Sec. III-E) should reveal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flexmtl.errors import ConfigError

__all__ = ["PlantedGroups", "PlantedOrders", "planted_groups", "planted_orders"]


@dataclass(frozen=True)
class PlantedOrders:
    """The teacher and its tasks.

    ``orders[t][d]`` is the layer task ``t`` applies at depth ``d``; ``splits[t]`` holds the
    task's ``(x, y)`` for train, val and test; ``noise`` is the noise's standard deviation
    (so ``noise**2`` is the lowest expected mean squared error, the teacher's own).
    """

    encoder: np.ndarray  # [width, width]
    weights: np.ndarray  # [layers, width, width]
    biases: np.ndarray  # [layers, width]
    readout: np.ndarray  # [width]
    orders: tuple[tuple[int, ...], ...]
    scales: tuple[float, ...]  # each task's output standard deviation before standardising
    offsets: tuple[float, ...]  # and its mean (both over the training inputs)
    splits: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]
    noise: float

    def teacher(self, x: np.ndarray, task: int) -> np.ndarray:
        """Task ``task``'s noise-free output for inputs ``x`` ``[N, width]``."""
        h = x @ self.encoder.T
        for layer in self.orders[task]:
            h = np.tanh(h @ self.weights[layer].T + self.biases[layer])
        return ((h @ self.readout - self.offsets[task]) / self.scales[task]).astype(np.float32)


def planted_orders(num_tasks: int, layers: int = 4, width: int = 16,
                   samples: tuple[int, int, int] = (1000, 250, 250), noise: float = 0.1,
                   gain: float = 2.0, seed: int = 0) -> PlantedOrders:
    """Draw a teacher of ``layers`` layers and ``num_tasks`` tasks, each with its own order.

    Orders are distinct permutations while there are enough (``layers!``), drawn at random
    with replacement beyond that. Weights are random orthogonal matrices times ``gain`` (so
    that tanh bends, and layers do not commute), biases ``N(0, 0.5^2)``; inputs
    ``x ~ N(0, I)``; ``samples`` rows per task for train, val and test.
    """
    if num_tasks < 1 or layers < 1 or width < 1:
        raise ConfigError(f"need num_tasks, layers and width >= 1, got {num_tasks}, {layers}, "
                          f"{width}")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)

    def orthogonal() -> np.ndarray:
        q, r = np.linalg.qr(rng.standard_normal((width, width)))
        return q * np.sign(np.diag(r))

    encoder = orthogonal()
    weights = np.stack([gain * orthogonal() for _ in range(layers)])
    biases = 0.5 * rng.standard_normal((layers, width))
    readout = rng.standard_normal(width) / math.sqrt(width)
    distinct = num_tasks <= math.factorial(layers)
    drawn: dict[tuple[int, ...], None] = {}  # insertion-ordered
    chosen: list[tuple[int, ...]] = []
    while len(chosen) < num_tasks:
        order = tuple(int(i) for i in rng.permutation(layers))
        if not distinct or order not in drawn:
            drawn[order] = None
            chosen.append(order)
    orders = tuple(chosen)
    draft = PlantedOrders(encoder, weights, biases, readout, orders, (1.0,) * num_tasks,
                          (0.0,) * num_tasks, (), noise)
    xs = [[rng.standard_normal((n, width)).astype(np.float32) for n in samples]
          for _ in orders]
    raw = [draft.teacher(x[0], t).astype(np.float64) for t, x in enumerate(xs)]
    scales = tuple(float(r.std()) or 1.0 for r in raw)
    offsets = tuple(float(r.mean()) for r in raw)
    draft = PlantedOrders(encoder, weights, biases, readout, orders, scales, offsets, (), noise)
    splits = tuple(
        tuple((x, (draft.teacher(x, t) + noise * rng.standard_normal(len(x))).astype(np.float32))
              for x in task_xs)
        for t, task_xs in enumerate(xs))
    return PlantedOrders(encoder, weights, biases, readout, orders, scales, offsets, splits,
                         noise)


@dataclass(frozen=True)
class PlantedGroups:
    """Groups of tasks sharing a teacher: ``groups[t]`` is task ``t``'s group; all tasks see
    the same inputs ``x`` (train, val, test) and ``ys[t]`` are its targets per split."""

    groups: tuple[int, ...]
    x: tuple[np.ndarray, np.ndarray, np.ndarray]
    ys: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    noise: float


def planted_groups(num_groups: int = 3, tasks_per_group: int = 3, features: int = 16,
                   hidden: int = 32, samples: tuple[int, int, int] = (2000, 500, 500),
                   noise: float = 0.1, seed: int = 0) -> PlantedGroups:
    """Draw ``num_groups`` teachers, random two-layer tanh networks ``features -> hidden ->
    1`` (outputs standardised: mean 0, standard deviation 1 on the training inputs), and
    ``tasks_per_group`` tasks of each: the teacher's output plus noise of standard deviation
    ``noise``, drawn per task. Inputs ``x ~ N(0, I)``."""
    if num_groups < 1 or tasks_per_group < 1 or features < 1 or hidden < 1:
        raise ConfigError("num_groups, tasks_per_group, features and hidden must be >= 1")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    x_train, x_val, x_test = (rng.standard_normal((n, features)).astype(np.float32)
                              for n in samples)
    x = (x_train, x_val, x_test)
    teachers = []
    for _ in range(num_groups):
        w1 = rng.standard_normal((hidden, features)) * (2.0 / np.sqrt(features))
        b1 = 0.5 * rng.standard_normal(hidden)
        w2 = rng.standard_normal(hidden) / np.sqrt(hidden)
        out = [np.tanh(split @ w1.T + b1) @ w2 for split in x]
        offset, scale = float(out[0].mean()), float(out[0].std()) or 1.0
        teachers.append([(o - offset) / scale for o in out])
    groups = tuple(g for g in range(num_groups) for _ in range(tasks_per_group))
    def targets(g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y_train, y_val, y_test = ((teachers[g][i] + noise * rng.standard_normal(len(x[i])))
                                  .astype(np.float32) for i in range(3))
        return y_train, y_val, y_test

    ys = tuple(targets(g) for g in groups)
    return PlantedGroups(groups, x, ys, noise)
