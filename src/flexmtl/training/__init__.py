"""Training: schedules, the multi-task trainer, checkpoints."""

from flexmtl.run_folder import atomic_save, load_checkpoint
from flexmtl.training.config import TrainConfig
from flexmtl.training.optim import OPTIMIZERS
from flexmtl.training.rng import seed_everything
from flexmtl.training.sampler import TaskBatchSampler
from flexmtl.training.schedules import SCHEDULES, JointSchedule, RoundRobinSchedule, Schedule
from flexmtl.training.trainer import Trainer, TrainResult

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "seed_everything",
    "TaskBatchSampler",
    "SCHEDULES",
    "Schedule",
    "JointSchedule",
    "RoundRobinSchedule",
    "OPTIMIZERS",
    "TrainConfig",
    "Trainer",
    "TrainResult",
]
