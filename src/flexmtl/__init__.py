"""flexmtl: flexible multi-task learning -- networks that learn how tasks share layers."""

from flexmtl import use as _use  # loading, evaluating, exporting runs (lazily)
from flexmtl.errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    DataNotFoundError,
    FlexMTLError,
    FolderLockedError,
    FolderMismatchError,
    ShapeError,
    TrainingDiverged,
    UnknownNameError,
)
from flexmtl.models import MultiTaskModel, build_model
from flexmtl.sharing import (
    METHODS,
    Method,
    ParallelOrdering,
    PermutedOrdering,
    RoutedCore,
    RoutedLayer,
    SharedCore,
    SharingCore,
    SingleTaskCore,
    SoftOrdering,
    make_core,
    register_method,
)
from flexmtl.tasks import Split, Task
from flexmtl.training import TrainConfig, Trainer, TrainResult, seed_everything

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "DataNotFoundError",
    "FlexMTLError",
    "FolderLockedError",
    "FolderMismatchError",
    "ShapeError",
    "TrainingDiverged",
    "UnknownNameError",
    "MultiTaskModel",
    "build_model",
    "METHODS",
    "Method",
    "register_method",
    "SharingCore",
    "SharedCore",
    "ParallelOrdering",
    "PermutedOrdering",
    "RoutedCore",
    "RoutedLayer",
    "SingleTaskCore",
    "SoftOrdering",
    "make_core",
    "Split",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "seed_everything",
    *_use.__all__,
]


def __getattr__(name: str) -> object:
    """The names of :mod:`flexmtl.use` (load_run, ...), imported on first use."""
    if name in _use.__all__:
        return getattr(_use, name)
    raise AttributeError(f"module 'flexmtl' has no attribute {name!r}")
