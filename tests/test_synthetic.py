"""The synthetic related-task generator (Gumbel-Matrix appendix A1) and epoch-based steps."""

import numpy as np
import pytest

from flexmtl import ConfigError, Task, TrainConfig, Trainer
from flexmtl.data.synthetic import (
    orthonormal_vectors,
    related_weights,
    synthetic_labels,
    synthetic_tasks,
)


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_weights_have_cosine_similarity_rho(rho):
    u = orthonormal_vectors(2, 16, np.random.default_rng(0))
    np.testing.assert_allclose(u @ u.T, np.eye(2), atol=1e-12)
    w = related_weights(u[0], u[1], rho, c=2.0)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [2.0, 2.0])
    assert w[0] @ w[1] / 4.0 == pytest.approx(rho)


def test_labels_follow_the_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4))
    w = np.array([0.5, -1.0, 0.0, 2.0])
    z = x @ w
    expected = z + sum(np.sin(i * z + (i - 1) ** 2) for i in range(1, 4))
    np.testing.assert_allclose(synthetic_labels(x, w, 3, 0.0, rng), expected, rtol=1e-6)


def test_rho_one_gives_the_same_task_up_to_noise_and_is_seeded():
    u = orthonormal_vectors(2, 32, np.random.default_rng(0))
    x, (y1, y2) = synthetic_tasks(related_weights(u[0], u[1], 1.0), 500, seed=3)
    assert np.std(y1 - y2) == pytest.approx(np.sqrt(2 * 0.01), rel=0.15)
    x2, (y1b, _) = synthetic_tasks(related_weights(u[0], u[1], 1.0), 500, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y1, y1b)
    with pytest.raises(ConfigError):
        related_weights(u[0], u[1], 1.5)


def test_epochs_set_the_number_of_steps_from_the_largest_task():
    from torch import nn

    from flexmtl import build_model, make_core

    rng = np.random.default_rng(0)
    tasks = [Task(f"t{n}", "regression", (rng.random((n, 3)), rng.random(n))) for n in (10, 45)]
    model = build_model(tasks, make_core("parallel", [nn.Linear(4, 4)], 2))
    trainer = Trainer(model, tasks, TrainConfig(steps=0, epochs=2, batch_size=8, progress=False))
    assert trainer.config.steps == 2 * 6  # ceil(45 / 8) = 6 batches per epoch
