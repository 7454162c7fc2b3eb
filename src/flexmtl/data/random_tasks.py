"""Random binary tasks for the expressivity experiment of the paper (Sec 3.2)."""

from __future__ import annotations

import numpy as np

from flexmtl.errors import ConfigError


def random_binary_tasks(
    num_tasks: int, n: int, m: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``num_tasks`` tasks of ``n`` samples: x (n, m) float32 uniform in [0, 1), y int64 in {0, 1}.

    Deterministic in ``seed``.
    """
    for label, value in (("num_tasks", num_tasks), ("n", n), ("m", m)):
        if value < 1:
            raise ConfigError(f"random_binary_tasks: {label} must be at least 1, got {value}.")
    rng = np.random.default_rng(seed)
    return [
        (rng.random((n, m), dtype=np.float32), rng.integers(0, 2, size=n, dtype=np.int64))
        for _ in range(num_tasks)
    ]
