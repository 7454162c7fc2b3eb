"""The settings of one training run (:class:`TrainConfig`), each defaulted once."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args

from flexmtl.errors import ConfigError
from flexmtl.training import distributed
from flexmtl.training.optim import OPTIMIZERS
from flexmtl.training.schedules import SCHEDULES

__all__ = ["TrainConfig", "SelectOn", "SELECT_ON", "CHANGEABLE_ON_RESUME"]

SelectOn = Literal["val_loss", "val_accuracy", "last"]
SELECT_ON: tuple[SelectOn, ...] = get_args(SelectOn)

#: training settings that may change between a run and its resumption
CHANGEABLE_ON_RESUME = ("steps", "epochs", "device", "threads", "progress", "compile",
                        "eval_batch_size", "log_every", "checkpoint_every", "eval_every",
                        "find_unused_parameters", "tensorboard")


@dataclass
class TrainConfig:
    """Settings of one training run (one method, one seed)."""

    steps: int = 1000  # 0: set from epochs
    epochs: float = 0.0  # used when steps is 0: epochs x batches per epoch of the largest task
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    # a second phase once validation stalls (soft ordering App. A.4: "After validation loss
    # converges via Adam, models are trained with RMSProp with learning rate 1e-5"): a fresh
    # optimiser of this kind ("": none) with finetune_lr, continuing from the current weights,
    # after finetune_patience evaluations without a better validation score
    finetune_optimizer: str = ""
    finetune_lr: float = 1e-5
    finetune_patience: int = 5
    weight_decay: float = 0.0  # L2; never applied to biases or to sharing parameters
    sharing_lr: float = 0.0  # lr of the sharing parameters (0: the core's rule, sharing_lr())
    clip_grad_norm: float = 0.0  # 0: no clipping
    schedule: str = "joint"
    eval_every: int = 50
    log_every: int = 1
    checkpoint_every: int = 0  # 0: at every evaluation
    select_on: SelectOn = "val_loss"
    eval_batch_size: int = 1024
    # seeds everything the run draws while it trains: batch order, dropout masks, Gumbel
    # samples, augmentation (torch's, numpy's and Python's global generators are reseeded
    # from it when training starts; a resumed run continues its saved streams). The model's
    # initial weights are drawn when it is built: call flexmtl.seed_everything before that.
    seed: int = 0
    device: str = "cpu"  # cpu, cuda (cuda:LOCAL_RANK under torchrun), cuda:N, or auto
    compile: bool = False  # torch.compile the training forward
    # under torchrun: let DistributedDataParallel look for parameters a step leaves without a
    # gradient (None, "auto": for schedules other than joint and for cores that say a step
    # may leave some)
    find_unused_parameters: bool | None = None
    # torch intra-op threads (process-wide, set when training starts); 0: auto -- on the CPU
    # one for small models and the cores other processes leave free for large ones, judged
    # on the FLOPs of the first step, which runs on one (flexmtl.training.threads.auto_threads,
    # measured by benchmarks/bench.py --threads-crossover); on other devices torch's default
    threads: int = 0
    progress: bool = True
    # log losses, metrics, learning rates and the learned sharing to OUT_DIR/tensorboard
    # (needs an out_dir and the tensorboard package; flexmtl.training.tensorboard)
    tensorboard: bool = False

    def validate(self) -> None:
        self._check_types()
        OPTIMIZERS.get(self.optimizer)
        if self.finetune_optimizer:
            OPTIMIZERS.get(self.finetune_optimizer)
            if self.finetune_lr <= 0 or self.finetune_patience < 1:
                raise ConfigError("a finetune_optimizer needs finetune_lr > 0 and "
                                  f"finetune_patience >= 1, got {self.finetune_lr} and "
                                  f"{self.finetune_patience}")
        SCHEDULES.get(self.schedule)
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        distributed.check_device_name(self.device)
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.find_unused_parameters not in (None, True, False):
            raise ConfigError("find_unused_parameters must be auto, true or false, got "
                              f"{self.find_unused_parameters!r}")
        if self.steps == 0 and self.epochs <= 0:
            raise ConfigError("set steps >= 1, or steps=0 and epochs > 0")
        if self.steps > 0 and self.epochs > 0:
            raise ConfigError(f"steps={self.steps} and epochs={self.epochs} are both set; set "
                              "steps=0 to train for a number of epochs")
        for name in ("batch_size", "eval_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("steps", "epochs", "weight_decay", "sharing_lr", "clip_grad_norm",
                     "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _check_types(self) -> None:
        """Whole numbers where counts are meant (not bools, not 2.5) and finite numbers for
        the rates (not NaN), before any range check compares them."""
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if math.isnan(value):  # NaN passes every range check below
                raise ConfigError(f"{name} must be a number, got nan")


#: fields that count something (whole numbers)
INT_FIELDS = ("steps", "batch_size", "finetune_patience", "eval_every", "log_every",
              "checkpoint_every", "eval_batch_size", "seed", "threads")
#: fields that are real numbers (an int is fine)
FLOAT_FIELDS = ("epochs", "lr", "finetune_lr", "weight_decay", "sharing_lr", "clip_grad_norm")
