"""The multi-task trainer: schedules, validation, checkpoint selection, resume, logs.

Protocol (soft ordering paper, appendix A): each step draws one random batch per task and
the schedule turns their losses into updates (``joint``: one update from the summed
losses). The model is validated every ``eval_every`` steps; the checkpoint with the best
validation score (summed validation loss by default) is kept, and the test splits are
evaluated once, at the end, on that checkpoint. A run writes into ``out_dir``:

* ``train_log.csv`` -- per-step training losses (every ``log_every`` steps);
* ``eval_log.csv`` -- validation metrics at every evaluation;
* ``last.pt`` -- model, optimiser, sampler and RNG state (atomic; a killed run resumes);
* ``best.pt`` -- the selected model;
* ``sharing.pt`` -- the core's sharing parameters over training (e.g. soft-order scales).

Under ``torchrun`` the same code trains data-parallel (DistributedDataParallel): each rank
trains on its piece of every global batch, rank 0 alone evaluates and writes; see
:mod:`flexmtl.training.distributed` for the rules that keep N ranks equal to one process.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flexmtl.errors import ConfigError, FlexMTLError, TrainingDiverged
from flexmtl.registry import Registry
from flexmtl.run_folder import CsvLog, TrainingRun
from flexmtl.sharing.allocation import RoutedLayer
from flexmtl.tasks import Split, Task
from flexmtl.training import distributed
from flexmtl.training.checkpoint import rng_state, set_rng_state
from flexmtl.training.sampler import TaskBatchSampler
from flexmtl.training.schedules import SCHEDULES

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)

SELECT_ON = ("val_loss", "val_accuracy", "last")


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
    sharing_lr: float = 0.0  # lr of the sharing parameters (0: lr x the core's multiplier)
    clip_grad_norm: float = 0.0  # 0: no clipping
    schedule: str = "joint"
    eval_every: int = 50
    log_every: int = 1
    checkpoint_every: int = 0  # 0: at every evaluation
    select_on: str = "val_loss"
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = "cpu"  # cpu, cuda (cuda:LOCAL_RANK under torchrun), cuda:N, or auto
    compile: bool = False  # torch.compile the training forward
    # under torchrun: let DistributedDataParallel look for parameters a step leaves without a
    # gradient ("auto": for schedules other than joint and models with routed layers)
    find_unused_parameters: str = "auto"  # auto, true or false
    threads: int = 0  # torch intra-op threads; 0: torch's default (1 is fastest for tiny layers)
    progress: bool = True

    def validate(self) -> None:
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
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(
                    f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}") from None
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.find_unused_parameters not in ("auto", "true", "false"):
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
        for name in ("steps", "epochs", "weight_decay", "sharing_lr", "clip_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """What a finished run reports: the selected step and per-task test metrics."""

    best_step: int
    best_score: float
    val: dict
    test: dict
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    finetune_step: int | None = None  # when the finetune optimiser took over (None: never)


class Trainer:
    """Trains a :class:`~flexmtl.models.MultiTaskModel` (or any ``model(x, task)``) on tasks.

    Under ``torchrun`` (several processes) it trains data-parallel: ``batch_size`` stays
    the global batch, split over the ranks; logs, checkpoints and evaluation are rank 0's,
    and :meth:`fit` returns rank 0's result on every rank.

    Args:
        model: module called as ``model(x, task_index)``.
        tasks: the tasks, in the model's task order.
        config: a :class:`TrainConfig`.
        out_dir: run folder for logs and checkpoints; None keeps everything in memory.
        resume: continue from ``out_dir/last.pt`` when it exists.
        callbacks: called as ``fn(trainer, step)`` after every step (for tests and tools).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        resume: bool = True,
        callbacks: Sequence[Callable[[Trainer, int], None]] = (),
    ):
        self.config = config or TrainConfig()
        self.config.validate()
        if not tasks:
            raise ConfigError("no tasks to train")
        if self.config.steps == 0:
            per_epoch = max(math.ceil(len(t.train) / self.config.batch_size) for t in tasks)
            self.config = replace(self.config, steps=math.ceil(self.config.epochs * per_epoch))
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.device = distributed.resolve_device(self.config.device)
        distributed.setup(self.device)
        self.world_size = distributed.world_size()
        self.is_main = distributed.is_main()
        cfg = self.config
        too_small = [t.name for t in tasks if min(cfg.batch_size, len(t.train)) < self.world_size]
        if too_small:
            raise ConfigError(
                f"{self.world_size} processes need batches of >= {self.world_size} examples; "
                f"tasks {', '.join(too_small)} have fewer (batch_size or training set)")
        self.model = model.to(self.device)
        self.tasks = list(tasks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.finetune_step: int | None = None
        self.optimizer = self._make_optimizer()
        self.schedule = SCHEDULES.get(cfg.schedule)()
        # tasks of one input group: one example stream (the same batches), read once to test
        self.input_groups = input_groups(self.tasks)
        self.sampler = TaskBatchSampler([len(t.train) for t in self.tasks], cfg.batch_size,
                                        cfg.seed, [t.input_group or i
                                                   for i, t in enumerate(self.tasks)])
        self.task_order_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.train_data = [self._to_device(t.train) for t in self.tasks]
        self.step = 0
        self.best_score = math.inf
        self.best_step = -1
        self.history: list[dict] = []  # one entry per evaluation
        self.sharing: list[tuple[int, torch.Tensor]] = []
        self.last_checkpoint_step: int | None = None
        self._best_in_memory: dict | None = None
        self.seconds_before = 0.0  # training time of earlier segments of a resumed run
        self._segment_start = time.perf_counter()
        self.shared_stream: distributed.SharedStream | None = None
        if self.world_size > 1:
            self.shared_stream = distributed.SharedStream(self.device)  # rank 0's stream
            distributed.seed_rank(cfg.seed)
        state = distributed.on_main(self._read_last) if resume else None
        if state is not None:
            self._resume(state)
        elif self.out_dir is not None and self.is_main:
            # a fresh start: logs of an earlier attempt are stale
            self.run_folder.start_fresh()
        self.training_forward = distributed.wrap(_TrainingForward(self.model), self.device,
                                                 self._find_unused_parameters())
        if cfg.compile:
            self.training_forward = torch.compile(self.training_forward)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the current phase (the finetune one once it has taken over)."""
        cfg = self.config
        name = cfg.optimizer
        if self.finetune_step is not None:  # same groups, the lrs scaled to finetune_lr
            name = cfg.finetune_optimizer
            cfg = replace(cfg, lr=cfg.finetune_lr,
                          sharing_lr=cfg.sharing_lr * cfg.finetune_lr / cfg.lr)
        return _fast_optimizer(OPTIMIZERS.get(name), parameter_groups(self.model, cfg))

    def _finetune_due(self) -> bool:
        """Whether the finetune optimiser takes over now (decided on rank 0, after an
        evaluation: ``finetune_patience`` evaluations without a better validation score)."""
        cfg = self.config
        if (not cfg.finetune_optimizer or self.finetune_step is not None
                or self.step % cfg.eval_every or self.step >= cfg.steps):
            return False
        return distributed.on_main(
            lambda: sum(h["step"] > self.best_step for h in self.history)
            >= cfg.finetune_patience)

    # ------------------------------------------------------------------ data and metrics
    def _to_device(self, split: Split) -> Split:
        return Split(split.x.to(self.device), split.y.to(self.device))

    def _batch(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's piece of the task's next (global) batch."""
        idx = distributed.shard(self.sampler.next(task)).to(self.device)
        data = self.train_data[task]
        augment = self.tasks[task].augment
        # index_select: the same rows as data.x[idx], several times faster on the CPU
        x = data.x.index_select(0, idx) if torch.is_tensor(data.x) else data.x[idx]
        return (augment(x) if augment is not None else x), data.y.index_select(0, idx)

    def _losses(self, tasks: Sequence[int],
                batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Loss of each task's batch plus the core's regularisation for that task (e.g. a
        budget penalty); one forward for all, fused where the model supports it.

        With several ranks the batches are this rank's pieces; the returned losses then have
        the global batch's value and a gradient that DDP's average over ranks turns into the
        global batch's gradient (see :meth:`_global_mean`).
        """
        outs, regularization = self._forward([x for x, _ in batches], list(tasks))
        ys = [y for _, y in batches]
        losses = self._task_losses(tasks, outs, ys)
        if self.world_size > 1:
            losses = self._global_mean(losses, [len(y) for y in ys])
        if not regularization:  # the core has none
            return losses
        return [loss + reg for loss, reg in zip(losses, regularization)]

    def _task_losses(self, tasks: Sequence[int], outs: Sequence[torch.Tensor],
                     ys: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[tasks[i].loss(outs[i], ys[i])]``: one stacked loss (:func:`stacked_losses`) per
        group of tasks with alike outputs and targets, unless the model is the reference
        (``fused`` False), which computes them task by task."""
        losses: list[torch.Tensor | None] = [None] * len(tasks)
        if getattr(self.model, "fused", True):
            groups: dict[tuple, list[int]] = {}
            for i, (t, out, y) in enumerate(zip(tasks, outs, ys)):
                if type(self.tasks[t]).loss is Task.loss:
                    key = (self.tasks[t].kind, out.shape, out.dtype, y.shape, y.dtype)
                    groups.setdefault(key, []).append(i)
            for members in groups.values():
                stacked = stacked_losses([self.tasks[tasks[i]] for i in members],
                                         [outs[i] for i in members], [ys[i] for i in members])
                for i, loss in zip(members, stacked or ()):
                    losses[i] = loss
        return [loss if loss is not None else self.tasks[t].loss(out, y)
                for loss, t, out, y in zip(losses, tasks, outs, ys)]

    def _find_unused_parameters(self) -> bool:
        """Whether DDP must look for parameters without a gradient after each backward: a
        round-robin step trains one task (the others' encoders and heads get none), and a
        routed layer with a fixed pattern skips components; a joint step of the orderings
        reaches every parameter, and the search would cost a pass over the graph."""
        setting = self.config.find_unused_parameters
        if setting != "auto":
            return setting == "true"
        return self.config.schedule != "joint" or any(
            isinstance(m, RoutedLayer) for m in self.model.modules())

    def _forward(self, xs: list[torch.Tensor], tasks: list[int]):
        try:
            return self.training_forward(xs, tasks)
        except FlexMTLError:
            raise
        except Exception as exc:
            if "find_unused_parameters" in str(exc) and distributed.world_size() > 1:
                raise ConfigError(
                    "DistributedDataParallel: the last step left some parameters without a "
                    "gradient; set find_unused_parameters=true") from exc
            if not self.config.compile:
                raise
            # dynamo's own errors, and crashes of some versions
            text = str(exc).strip()
            raise ConfigError(
                f"the torch.compile'd training forward failed ({type(exc).__name__}: "
                f"{text.splitlines()[0] if text else 'no message'}); torch "
                f"{torch.__version__} may not compile this model: train without --compile "
                "(compile=false)") from exc

    def _global_mean(self, losses: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
        """Per-task mean losses of this rank's pieces -> the global batches' mean losses.

        Rank ``r`` holds ``n_r`` of ``n`` examples and the mean loss ``L_r`` of its piece. The
        returned value is the global mean ``sum_r n_r L_r / n`` (summed over ranks), and the
        gradient is that of ``N n_r L_r / n``, which DDP averages over the N ranks into
        ``sum_r n_r grad L_r / n``: the gradient one process computes on the whole batch.
        """
        local = torch.stack([loss.detach() for loss in losses])
        n = torch.tensor(sizes, dtype=local.dtype, device=local.device)
        totals = distributed.all_reduce_sum(torch.cat([local * n, n]))
        sums, counts = totals.chunk(2)
        out = []
        for loss, size, mean, count in zip(losses, sizes, sums / counts, counts):
            scaled = loss * (self.world_size * size / count)
            out.append(mean + (scaled - scaled.detach()))  # value: mean; gradient: scaled's
        return out

    def _loss(self, task: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one task's batch (with regularisation)."""
        return self._losses([task], [(x, y)])[0]

    def _update(self, loss: torch.Tensor, task_indices: Sequence[int]) -> None:
        self._check(loss, task_indices)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        """Mean loss and accuracy of every task on ``split`` (``train``/``val``/``test``).

        Returns ``{"tasks": {name: {"loss", "accuracy"}}, "loss": sum of task losses,
        "accuracy": mean task accuracy}``; tasks without that split are left out.
        """
        was_training = self.model.training
        self.model.eval()
        found = {}
        size = self.config.eval_batch_size
        try:
            for group in self.input_groups:  # one read of each batch of inputs per group
                data = getattr(self.tasks[group[0]], split)
                if data is None:
                    continue
                total_loss, correct = [0.0] * len(group), [0.0] * len(group)
                for start in range(0, len(data), size):
                    x = data.x[start : start + size].to(self.device)
                    outs = self._eval_outputs(x, group)
                    for i, (t, out) in enumerate(zip(group, outs)):
                        task = self.tasks[t]
                        y = getattr(task, split).y[start : start + size].to(self.device)
                        total_loss[i] += float(task.loss(out, y)) * len(x)
                        c = task.correct(out, y)
                        correct[i] += float(c) if c is not None else math.nan
                for i, t in enumerate(group):
                    found[t] = {"loss": total_loss[i] / len(data),
                                "accuracy": correct[i] / len(data)}
        finally:
            self.model.train(was_training)
        per_task = {self.tasks[t].name: found[t] for t in sorted(found)}
        if not per_task:
            return {"tasks": {}, "loss": math.nan, "accuracy": math.nan}
        accuracies = [m["accuracy"] for m in per_task.values() if not math.isnan(m["accuracy"])]
        return {
            "tasks": per_task,
            "loss": sum(m["loss"] for m in per_task.values()),
            # over the classification tasks (regression tasks have no accuracy)
            "accuracy": sum(accuracies) / len(accuracies) if accuracies else math.nan,
        }

    def _eval_outputs(self, x: torch.Tensor, group: list[int]) -> list[torch.Tensor]:
        """Outputs of the tasks of ``group`` on the same inputs ``x`` (evaluation)."""
        forward_tasks = getattr(self.model, "forward_tasks", None)
        if len(group) > 1 and callable(forward_tasks):
            return forward_tasks([x] * len(group), group)
        return [self.model(x, t) for t in group]

    def _score(self, metrics: dict) -> float:
        """Lower is better; NaN scores are replaced by +inf."""
        score = self._raw_score(metrics)
        return math.inf if math.isnan(score) else score

    def _raw_score(self, metrics: dict) -> float:
        if self.config.select_on == "val_accuracy":
            return -metrics["accuracy"]
        if self.config.select_on == "last":
            return -self.step
        return metrics["loss"]

    def _check(self, value: torch.Tensor, task_indices: Sequence[int]) -> None:
        # the value is the global batch's, equal on every rank: all ranks stop together
        if torch.isfinite(value):
            return
        names = ", ".join(self.tasks[t].name for t in task_indices)
        where = (
            f"the last good checkpoint is {self.run_folder.last} (step "
            f"{self.last_checkpoint_step})"
            if self.last_checkpoint_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"loss became {float(value.detach())} at step {self.step + 1} (tasks: {names}); "
            f"training stopped and {where}. Try a lower learning rate or check the inputs for NaN."
        )

    # ------------------------------------------------------------------ checkpoints
    def _snapshot_sharing(self) -> None:
        snap = getattr(self.model, "core", None)
        fn = getattr(snap, "sharing_snapshot", None)
        if callable(fn):
            self.sharing.append((self.step, fn().detach().cpu().clone()))

    def state_dict(self) -> dict:
        """Everything :meth:`fit` needs to resume (this rank's random state; ``last.pt``
        adds every rank's, ``rng_ranks``, when there are several)."""
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "task_order_generator": self.task_order_generator.get_state(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "best_step": self.best_step,
            "history": self.history,
            "sharing": self.sharing,
            "finetune_step": self.finetune_step,
            "config": asdict(self.config),
            "seconds": self.seconds_before + time.perf_counter() - self._segment_start,
        }
        if self.shared_stream is not None:
            state["shared_rng"] = self.shared_stream.state_dict()
        return state

    def _save_last(self) -> None:
        """Write ``last.pt`` (rank 0; every rank takes part, handing over its random state)."""
        if self.out_dir is None:
            return
        rng_ranks = distributed.all_gather_object(rng_state()) if self.world_size > 1 else None
        if self.is_main:
            state = self.state_dict()
            if rng_ranks is not None:
                state["rng_ranks"] = rng_ranks
            self.run_folder.save_last(state)
        self.last_checkpoint_step = self.step

    def _read_last(self) -> dict | None:
        """``last.pt`` on the cpu, or None (called on rank 0, which broadcasts it)."""
        return self.run_folder.read_last() if self.run_folder is not None else None

    @property
    def run_folder(self) -> TrainingRun | None:
        """The files of this run in ``out_dir`` (None: everything is kept in memory)."""
        return TrainingRun(self.out_dir) if self.out_dir is not None else None

    def _resume(self, state: dict) -> None:
        _check_resumable(state, self.config)
        self.model.load_state_dict(state["model"])
        self.finetune_step = state.get("finetune_step")
        if self.finetune_step is not None:
            self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.task_order_generator.set_state(state["task_order_generator"])
        set_rng_state(state["rng"])  # rank 0's streams; one process draws everything from them
        shared = state.get("shared_rng")
        if self.shared_stream is not None:
            # the allocation samples continue rank 0's stream of a one-process checkpoint
            if shared is None or not self.shared_stream.load_state_dict(shared):
                self.shared_stream.state = distributed.generator_state(self.device)
            per_rank = state.get("rng_ranks")
            if per_rank is not None and len(per_rank) == self.world_size:
                set_rng_state(per_rank[distributed.rank()])
            else:  # another number of processes than the checkpoint's: fresh rank streams
                distributed.seed_rank(self.config.seed, state["step"])
        elif shared is not None and shared.get("device") == self.device.type:
            # one process resumes a multi-process run: its generator draws the allocations
            distributed.set_generator_state(self.device, shared["state"])
        self.step = state["step"]
        self.seconds_before = state.get("seconds", 0.0)
        self.best_score = state["best_score"]
        self.best_step = state["best_step"]
        self.history = state["history"]
        self.sharing = state["sharing"]
        self.last_checkpoint_step = self.step
        # rows a killed run logged after its last checkpoint are dropped (they are redone)
        if self.is_main:
            self.run_folder.truncate_logs(self.step)

    # ------------------------------------------------------------------ training
    def fit(self) -> TrainResult:
        """Train to ``config.steps`` (resuming where a previous run stopped) and test once."""
        cfg = self.config
        self._segment_start = start_time = time.perf_counter()
        folder = self.run_folder if self.is_main else None
        train_log = CsvLog(folder.train_log if folder is not None else None)
        eval_log = CsvLog(folder.eval_log if folder is not None else None)
        if self.step == 0:
            self._snapshot_sharing()
        bar = _progress(cfg.steps, self.step, cfg.progress and self.is_main)
        self.model.train()
        hooks = contextlib.ExitStack()
        if self.shared_stream is not None:  # the allocation samples: one stream for all ranks
            hooks.enter_context(self.shared_stream.attached(self.model))
        try:
            while self.step < cfg.steps:
                losses = self.schedule.step(len(self.tasks), self._batch, self._losses,
                                            self._update, self.task_order_generator)
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = {"step": self.step, "loss": sum(losses)}
                    row.update({f"loss/{t.name}": v for t, v in zip(self.tasks, losses)})
                    train_log.write(row)
                if self.is_main and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    self._evaluate_and_select(eval_log)
                    bar.set_postfix(loss=f"{sum(losses):.4f}",
                                    val=f"{self.history[-1]['loss']:.4f}")
                if self._finetune_due():
                    self.finetune_step = self.step
                    self.optimizer = self._make_optimizer()
                every = cfg.checkpoint_every or cfg.eval_every
                if self.step % every == 0 or self.step == cfg.steps:
                    self._save_last()
                bar.update(1)
                for callback in self.callbacks:
                    callback(self, self.step)
        finally:
            hooks.close()
            bar.close()
            train_log.close()
            eval_log.close()
        return self._finish(self.seconds_before + time.perf_counter() - start_time)

    def _evaluate_and_select(self, eval_log: CsvLog) -> None:
        metrics = self.evaluate("val")
        has_val = bool(metrics["tasks"])
        score = self._score(metrics) if has_val else -self.step
        entry = {"step": self.step, "loss": metrics["loss"], "accuracy": metrics["accuracy"]}
        for name, m in metrics["tasks"].items():
            entry[f"loss/{name}"] = m["loss"]
            entry[f"accuracy/{name}"] = m["accuracy"]
        self.history.append(entry)
        eval_log.write(entry)
        self._snapshot_sharing()
        # a NaN score (e.g. accuracy of regression tasks only) never wins, but some model is
        # always selected: the first evaluated one until a finite score beats it
        if score < self.best_score or self.best_step < 0:
            self.best_score, self.best_step = score, self.step
            if self.out_dir is not None:
                self.run_folder.save_best(self.step, self.model.state_dict())
            else:
                self._best_in_memory = {k: v.detach().clone()
                                        for k, v in self.model.state_dict().items()}

    def _finish(self, seconds: float) -> TrainResult:
        """Load the selected model (on every rank) and evaluate it (rank 0) once."""
        best = distributed.on_main(self._selected_state)
        last_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best)
        self.final_state = last_state
        val, test, self.history, self.best_step, self.best_score = distributed.on_main(
            lambda: (self.evaluate("val"), self.evaluate("test"), self.history, self.best_step,
                     self.best_score))
        return TrainResult(
            best_step=self.best_step, best_score=self.best_score, val=val, test=test,
            steps=self.step, seconds=seconds, history=self.history,
            finetune_step=self.finetune_step,
        )

    def _selected_state(self) -> dict:
        """The model chosen on validation, on the cpu (rank 0; it also writes sharing.pt)."""
        if self.out_dir is not None:
            self.run_folder.save_sharing(self.sharing)
            return self.run_folder.load_best_model()
        best = self._best_in_memory or self.model.state_dict()
        return {k: v.detach().cpu() for k, v in best.items()}


class _TrainingForward(nn.Module):
    """The training forward of several tasks as one module call: the outputs
    (``model.forward_tasks`` where the model has it, else ``model(x, t)`` per task) and the
    core's regularisation of each task (an empty list when the core has none).
    DistributedDataParallel wraps this module, so every parameter a training loss uses is
    reached through DDP's forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, xs: list[torch.Tensor],
                tasks: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        forward_tasks = getattr(self.model, "forward_tasks", None)
        if callable(forward_tasks):
            outs = forward_tasks(xs, tasks)
        else:
            outs = [self.model(x, t) for x, t in zip(xs, tasks)]
        regularization = getattr(getattr(self.model, "core", None), "regularization", None)
        regs = [regularization(t) for t in tasks] if callable(regularization) else []
        return outs, regs


#: settings that may change between a run and its resumption
RUNTIME_KEYS = ("steps", "epochs", "device", "threads", "progress", "compile", "eval_batch_size",
                "log_every", "checkpoint_every", "eval_every", "find_unused_parameters")


def _check_resumable(state: dict, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint trained with other settings, or past the end."""
    saved = state.get("config", {})
    now = asdict(cfg)
    changed = sorted(k for k in saved if k not in RUNTIME_KEYS and k in now
                     and saved[k] != now[k])
    if changed:
        raise ConfigError(
            "the checkpoint to resume was trained with other settings ("
            + ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
            + f"); use another output folder or delete {TrainingRun.LAST}")
    if state["step"] > cfg.steps:
        raise ConfigError(f"the checkpoint to resume is at step {state['step']}, past the "
                          f"{cfg.steps} steps asked for")


def input_groups(tasks: Sequence[Task]) -> list[list[int]]:
    """Indices of the tasks that share their inputs (same ``input_group``), in task order;
    a task without an input group is a group of its own. Checks that the tasks of a group
    have splits of equal sizes."""
    groups: dict[object, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(task.input_group or i, []).append(i)
    for members in groups.values():
        for split in ("train", "val", "test"):
            sizes = {None if getattr(tasks[t], split) is None else len(getattr(tasks[t], split))
                     for t in members}
            if len(sizes) > 1:
                names = ", ".join(tasks[t].name for t in members)
                raise ConfigError(f"tasks {names} share input group "
                                  f"{tasks[members[0]].input_group!r} but their {split} splits "
                                  f"differ in size ({sorted(sizes, key=str)})")
    return list(groups.values())


def stacked_losses(tasks: Sequence[Task], outs: Sequence[torch.Tensor],
                   ys: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """``[task.loss(out, y) ...]`` as ONE loss over the stacked outputs, or None when the
    tasks differ in kind, one overrides :meth:`Task.loss`, or the outputs or targets differ
    in shape or dtype. Each task's value is the same batch mean as :meth:`Task.loss`."""
    if len(tasks) < 2 or any(type(t).loss is not Task.loss for t in tasks):
        return None
    kind = tasks[0].kind
    if (any(t.kind != kind for t in tasks)
            or any(o.shape != outs[0].shape or o.dtype != outs[0].dtype for o in outs)
            or any(y.shape != ys[0].shape or y.dtype != ys[0].dtype for y in ys)):
        return None
    out, y = torch.stack(list(outs)), torch.stack(list(ys))  # [T, B, ...]
    if kind == "multiclass":
        per_example = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
    elif kind == "binary":
        per_example = F.binary_cross_entropy_with_logits(out.reshape(y.shape), y,
                                                         reduction="none")
    else:
        per_example = F.mse_loss(out.reshape(y.shape), y, reduction="none")
    return list(per_example.reshape(len(tasks), -1).mean(1).unbind(0))


def _fast_optimizer(factory: Callable[..., torch.optim.Optimizer],
                    groups: list[dict]) -> torch.optim.Optimizer:
    """``factory(groups)`` with its fastest multi-tensor implementation: ``fused=True`` (one
    kernel per parameter; Adam, AdamW, SGD, also on the CPU, where it takes a third of
    foreach's time on the benchmark models) when the optimiser has it and the parameters
    are floating point on the CPU or CUDA, else ``foreach=True`` (torch only defaults to it
    on CUDA; on the CPU it saves the per-parameter loop). Same update rule, up to rounding."""
    params = [p for g in groups for p in g["params"]]
    if "fused" in inspect.signature(factory).parameters and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return factory(groups, fused=True)
    return factory(groups, foreach=True)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimiser groups: weights (with L2), biases and norms (no L2), sharing parameters.

    Sharing parameters are those the core returns from ``sharing_parameters()`` (soft-order
    scales, allocation logits). They get ``cfg.sharing_lr``, or ``cfg.lr`` times the core's
    ``sharing_lr_multiplier`` (the Gumbel-Matrix rule of thumb: number of tasks), and no L2.
    """
    core = getattr(model, "core", None)
    sharing_fn = getattr(core, "sharing_parameters", None)
    sharing = [p for p in (sharing_fn() if callable(sharing_fn) else []) if p.requires_grad]
    ids = {id(p) for p in sharing}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "weights"},
              {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "name": "biases"}]
    if sharing:
        lr = cfg.sharing_lr or cfg.lr * getattr(core, "sharing_lr_multiplier", 1.0)
        groups.append({"params": sharing, "lr": lr, "weight_decay": 0.0, "name": "sharing"})
    return [g for g in groups if g["params"]]


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, leave=False,
                dynamic_ncols=True, desc="train")
