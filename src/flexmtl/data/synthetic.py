"""Synthetic regression tasks of controlled relatedness (Gumbel-Matrix paper, appendix A1).

The generator of Ma et al. (MMoE): orthogonal unit vectors ``u_1, u_2``; task weights
``w_1 = c u_1`` and ``w_2 = c (rho u_1 + sqrt(1 - rho^2) u_2)``; inputs ``x ~ N(0, I_d)``;
labels ``y = w.x + sum_{i=1..m} sin(alpha_i w.x + beta_i) + eps`` with ``eps ~ N(0, 0.01)``.
"""

from __future__ import annotations

import numpy as np

from flexmtl.errors import ConfigError


def orthonormal_vectors(count: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random orthonormal vectors in R^d, as rows."""
    if count > d:
        raise ConfigError(f"cannot draw {count} orthogonal vectors in R^{d}")
    q, _ = np.linalg.qr(rng.standard_normal((d, count)))
    return q.T


def related_weights(u1: np.ndarray, u2: np.ndarray, rho: float, c: float = 1.0) -> np.ndarray:
    """``(w_1, w_2)`` with cosine similarity ``rho`` (appendix A1, Eq. 1)."""
    if not 0.0 <= rho <= 1.0:
        raise ConfigError(f"task relatedness rho must be in [0, 1], got {rho}")
    return np.stack([c * u1, c * (rho * u1 + np.sqrt(1.0 - rho**2) * u2)])


def synthetic_labels(x: np.ndarray, w: np.ndarray, m: int, noise: float,
                     rng: np.random.Generator) -> np.ndarray:
    """``y = w.x + sum_i sin(i w.x + (i-1)^2) + N(0, noise)`` (appendix A1, Eqs. 2-3).

    ``noise`` is the variance of the noise term (the paper's N(0, 0.01)).
    """
    z = x @ w
    y = z + sum(np.sin(i * z + (i - 1) ** 2) for i in range(1, m + 1))
    return (y + rng.normal(0.0, np.sqrt(noise), size=z.shape)).astype(np.float32)


def synthetic_tasks(weights: np.ndarray, n: int, m: int = 6, noise: float = 0.01,
                    seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shared inputs ``x [n, d]`` and one label vector per row of ``weights``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, weights.shape[1])).astype(np.float32)
    return x, [synthetic_labels(x, w, m, noise, rng) for w in weights]
