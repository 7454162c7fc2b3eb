"""Paper experiments, registered by name (``flexmtl list`` shows them)."""

from flexmtl.experiments import gumbel_matrix, soft_ordering  # noqa: F401  (registers them)
from flexmtl.experiments.base import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    register_experiment,
    train_defaults,
)

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "register_experiment",
           "train_defaults"]
