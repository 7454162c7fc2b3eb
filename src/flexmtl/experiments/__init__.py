"""Paper experiments, registered by name (``flexmtl list`` shows them)."""

from flexmtl.experiments.base import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    register_experiment,
    train_defaults,
)
from flexmtl.experiments import soft_ordering  # noqa: F401  (registers its experiments)

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "register_experiment",
           "train_defaults"]
