"""Paper experiments, registered by name (``flexmtl list`` shows them)."""

from flexmtl.experiments import (  # noqa: F401  (registers them)
    gumbel_matrix,
    layer_visualization,
    planted,
    soft_ordering,
    soft_ordering_images,
)
from flexmtl.experiments.base import (
    EXPERIMENTS,
    Experiment,
    get_experiment,
    register_experiment,
    train_defaults,
)

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment", "register_experiment",
           "train_defaults"]
