"""The multi-task trainer: schedules, validation, checkpoint selection, resume, logs.

Protocol (soft ordering paper, appendix A): each step draws one random batch per task and
the schedule turns their losses into updates (``joint``: one update from the summed
losses). The model is validated every ``eval_every`` steps; the checkpoint with the best
validation score (summed validation loss by default) is kept, and the test splits are
evaluated once, at the end, on that checkpoint. A run writes into ``out_dir``:

* ``train_log.csv`` -- per-step training losses (every ``log_every`` steps);
* ``eval_log.csv`` -- validation metrics at every evaluation;
* ``last.pt`` -- model, optimiser, sampler and RNG state (atomic; a killed run resumes),
  and ``last.prev.pt``, the checkpoint before it;
* ``best.pt`` -- the selected model;
* ``sharing.pt`` -- the core's sharing parameters over training (e.g. soft-order scales);
* ``fingerprint.json`` -- what the run trains (:mod:`flexmtl.training.fingerprint`): a rerun
  resumes only a run of the same settings, tasks, data and model;
* ``run.lock`` -- while the trainer works in the folder (a second process is refused).

Under ``torchrun`` the same code trains data-parallel (DistributedDataParallel): each rank
trains on its piece of every global batch, rank 0 alone evaluates and writes; see
:mod:`flexmtl.training.distributed` for the rules that keep N ranks equal to one process.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from flexmtl.errors import (
    ConfigError,
    FlexMTLError,
    FolderMismatchError,
    TrainingDiverged,
    UnknownNameError,
)
from flexmtl.fusion import is_fused
from flexmtl.fusion.losses import task_losses
from flexmtl.run_folder import CsvLog, FolderLock, remove_torn_writes
from flexmtl.sharing import may_leave_unused_parameters
from flexmtl.tasks import Split, Task
from flexmtl.training import distributed
from flexmtl.training.checkpoint import Checkpointing
from flexmtl.training.config import TrainConfig
from flexmtl.training.evaluation import evaluate_tasks
from flexmtl.training.fingerprint import fingerprint_diff, run_fingerprint
from flexmtl.training.forward import TrainingForward, global_mean
from flexmtl.training.optim import OPTIMIZERS, fast_optimizer, parameter_groups
from flexmtl.training.sampler import TaskBatchSampler, input_groups
from flexmtl.training.schedules import SCHEDULES
from flexmtl.training.tensorboard import TensorBoardLog, check_tensorboard
from flexmtl.training.threads import FlopCount, auto_threads

Resume = Literal["auto", "must", "restart"]
RESUME: tuple[Resume, ...] = get_args(Resume)
#: the splits :meth:`Trainer.evaluate` evaluates
SPLITS = ("train", "val", "test")


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


class Trainer(Checkpointing):
    """Trains a :class:`~flexmtl.models.MultiTaskModel` (or any ``model(x, task)``) on tasks.

    Under ``torchrun`` (several processes) it trains data-parallel: ``batch_size`` stays
    the global batch, split over the ranks; logs, checkpoints and evaluation are rank 0's,
    and :meth:`fit` returns rank 0's result on every rank.

    The constructor only checks its arguments: nothing is read, written or set globally
    until :meth:`setup` (which :meth:`fit`, :meth:`train_step` and :meth:`evaluate` call).
    Seams for tools and benchmarks: :meth:`train_step` (one step of the schedule),
    :meth:`draw_batch`, :meth:`training_losses`, :meth:`losses_of`, :meth:`update`,
    and :attr:`step_flops` (the size of a step, counted in the first when ``threads=0``).

    Args:
        model: module called as ``model(x, task_index)``.
        tasks: the tasks, in the model's task order.
        config: a :class:`TrainConfig`, or a mapping of its fields (``{"steps": 500}``;
            an unknown key raises :class:`~flexmtl.errors.UnknownNameError`); None: the
            defaults.
        out_dir: run folder for logs and checkpoints; None keeps everything in memory. An
            empty path, or one naming a file, is refused (:class:`ConfigError`).
        resume: what to do with a run already in ``out_dir`` (decided in :meth:`setup`,
            before any step):

            * ``"auto"`` (default): continue from its ``last.pt`` when there is one and its
              ``fingerprint.json`` matches this run (same settings but those of
              ``CHANGEABLE_ON_RESUME``, same tasks, data and model), printing
              ``resuming OUT_DIR from step N ...`` on stderr; when anything differs, raise
              :class:`~flexmtl.errors.FolderMismatchError` listing it (``key: old ->
              new``); with no checkpoint, start at step 0.
            * ``"must"``: as ``"auto"``, but a folder with nothing to resume is an error.
            * ``"restart"``: delete the run's files and start at step 0.

            Before training, every file the run resumes from is checked: a damaged one
            raises :class:`~flexmtl.errors.CorruptFileError` naming it, unless a good
            previous checkpoint (``last.prev.pt``) takes its place (said on stderr).
            ``True``/``False`` (the old flag) are refused with a :class:`ConfigError`.
        callbacks: called as ``fn(trainer, step)`` after every step (for tests and tools).

    While it works in ``out_dir`` (from :meth:`setup` to the end of :meth:`fit`, or
    :meth:`close`) the trainer holds ``out_dir/run.lock``: another trainer or process on the
    same folder is refused with :class:`~flexmtl.errors.FolderLockedError`.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        config: TrainConfig | Mapping[str, Any] | None = None,
        out_dir: str | Path | None = None,
        resume: Resume = "auto",
        callbacks: Sequence[Callable[[Trainer, int], None]] = (),
    ):
        # checks only: no I/O and no global state until setup()
        self.config = _train_config(config)
        self.config.validate()
        if not tasks:
            raise ConfigError("no tasks to train")
        check_tasks(model, tasks, self.config)
        if self.config.steps == 0:
            per_epoch = max(math.ceil(len(t.train) / self.config.batch_size) for t in tasks)
            self.config = replace(self.config, steps=math.ceil(self.config.epochs * per_epoch))
        cfg = self.config
        self.device = distributed.resolve_device(cfg.device)
        self.model = model
        self.tasks = list(tasks)
        if isinstance(out_dir, (str, bytes)) and not out_dir.strip():
            raise ConfigError(f"out_dir={out_dir!r} is empty (it would write into the current "
                              "folder); name a folder, or pass None to keep the run in memory")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if cfg.tensorboard and self.out_dir is None:
            raise ConfigError("tensorboard=True writes into the run folder: give the Trainer "
                              "an out_dir")
        if cfg.tensorboard:
            check_tensorboard()  # before any folder is locked, cleared or resumed
        self.resume = _resume_policy(resume, self.out_dir)
        self.callbacks = list(callbacks)
        self.schedule = SCHEDULES.get(cfg.schedule)()
        # tasks of one input group: one example stream (the same batches), read once to test
        self.input_groups = input_groups(self.tasks)
        self.sampler = TaskBatchSampler([len(t.train) for t in self.tasks], cfg.batch_size,
                                        cfg.seed, [t.input_group or i
                                                   for i, t in enumerate(self.tasks)])
        self.task_order_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = 0
        self.resumed_from = 0  # the step a resumed run continued from
        self.best_score = math.inf
        self.best_step = -1
        self.finetune_step: int | None = None
        self.history: list[dict] = []  # one entry per evaluation
        self.sharing: list[tuple[int, torch.Tensor]] = []
        self.last_checkpoint_step: int | None = None
        self._best_in_memory: dict | None = None
        self.seconds_before = 0.0  # training time of earlier segments of a resumed run
        self._segment_start = self._fit_start = time.perf_counter()
        #: where the dropout masks of the fused paths come from (None: torch's default
        #: generator); a batch of runs gives each run its own, saved in its checkpoints
        self.random_stream: torch.Generator | None = None
        self.threads = 0  # torch's intra-op threads of this run, set by setup()
        self._threads_before: int | None = None  # the process's, given back by close()
        # matmul and convolution FLOPs of this trainer's first training step (counted in it)
        self.step_flops: int | None = None
        self.world_size = 1
        self.is_main = True
        self.shared_stream: distributed.SharedStream | None = None
        self._lock: FolderLock | None = None  # rank 0's, while it works in out_dir
        self._fingerprint: dict | None = None
        self._fingerprint_saved = False
        self._keep_best = True  # the next new best.pt keeps the checkpoint's as best.prev.pt
        self._ready = False

    def setup(self) -> None:
        """Everything training needs beyond the constructor's checks, once (:meth:`fit`,
        :meth:`train_step` and :meth:`evaluate` call it): the process group under
        ``torchrun``, the model and data on the device, the optimiser, the thread count
        (``threads=0``: one until the first step has been counted), and the run folder --
        lock it, check its files, and resume from its ``last.pt`` or start over
        (``resume``)."""
        if self._ready:
            return
        cfg = self.config
        distributed.setup(self.device)
        self.world_size = distributed.world_size()
        self.is_main = distributed.is_main()
        too_small = [t.name for t in self.tasks
                     if min(cfg.batch_size, len(t.train)) < self.world_size]
        if too_small:
            raise ConfigError(
                f"{self.world_size} processes need batches of >= {self.world_size} examples; "
                f"tasks {', '.join(too_small)} have fewer (batch_size or training set)")
        self.model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.train_data = [self._to_device(t.train) for t in self.tasks]
        self._hold_threads()
        self._set_threads()
        # every draw of the run from its seed (each rank its own stream); a resumed run then
        # gets its saved streams back
        distributed.seed_rank(cfg.seed)
        if self.world_size > 1:  # rank 0's seeded stream: the samples one process draws
            self.shared_stream = distributed.SharedStream(self.device)
        if self.out_dir is not None:
            try:
                distributed.on_main(_check_out_dir, self.out_dir)
                state = distributed.on_main(self._open_folder)
                if state is not None:
                    self._resume(state)
            except BaseException:
                self.close()
                raise
        self.resumed_from = self.step
        self.training_forward: Callable[..., Any] = distributed.wrap(
            TrainingForward(self.model), self.device,
            self._find_unused_parameters())
        if cfg.compile:
            self.training_forward = torch.compile(self.training_forward)
        self._ready = True

    def _set_threads(self) -> None:
        """torch's intra-op threads: ``config.threads``; for 0 on the CPU one thread until
        the first step is counted, then :func:`~flexmtl.training.threads.auto_threads` of its
        FLOPs (one thread for small models, the free cores for large ones); on other devices
        or with ``compile``, 0 keeps torch's."""
        threads = self.config.threads
        if self._auto_threads():
            threads = 1 if self.step_flops is None else auto_threads(self.step_flops)
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()

    def _auto_threads(self) -> bool:
        """Whether :func:`~flexmtl.training.threads.auto_threads` sets the threads:
        ``threads=0`` on the CPU, without ``compile`` (whose graphs the FLOP counter would
        break; there 0 keeps torch's default)."""
        return not self.config.threads and self.device.type == "cpu" and not self.config.compile

    def _open_folder(self) -> dict | None:
        """Rank 0: lock ``out_dir``, check its files and apply the ``resume`` policy; the
        state to resume from, or None (a fresh start: an earlier attempt's files deleted)."""
        folder = self._folder
        self._lock = FolderLock(folder.path)
        self._lock.acquire()
        remove_torn_writes(folder.path)  # of a run killed mid-write
        self._fingerprint = run_fingerprint(self.config, self.tasks, self.model)
        state = None
        if self.resume == "restart":
            if folder.delete_files():
                print(f"restarting {folder.path}: its earlier run was deleted", file=sys.stderr)
        else:
            if folder.last.exists() or folder.last_prev.exists() or folder.fingerprint.exists():
                self._check_fingerprint()  # before anything of that run is resumed or deleted
            state = folder.read_resumable()
            if state is None and self.resume == "must":
                raise ConfigError(f"resume='must', but {folder.path} holds no {folder.LAST} "
                                  "to resume; use resume='auto' to start a new run there")
        if state is None:
            folder.start_fresh()  # logs of an earlier attempt are stale
        else:
            print(f"resuming {folder.path} from step {state['step']} (resume='restart' or "
                  "flexmtl run --restart to start over)", file=sys.stderr)
        self._fingerprint_saved = state is not None
        self._keep_best = True
        return state

    def _check_fingerprint(self) -> None:
        """Refuse to resume a run of other settings, tasks, data or model."""
        folder = self._folder
        ways_out = (f"pass another out_dir (--out) to keep both, or resume='restart' "
                    f"(--restart) to delete the run in {folder.path} and start over")
        old = folder.read_fingerprint()
        if old is None:
            raise FolderMismatchError(
                f"{folder.path} holds a checkpoint ({folder.LAST}) but no "
                f"{folder.FINGERPRINT}, so whether it trained these tasks, data and settings "
                f"is unknown; {ways_out}")
        diff = fingerprint_diff(old, self._fingerprint or {})
        if diff:
            raise FolderMismatchError(
                f"{folder.path} holds a run of something else ({'; '.join(diff)}); "
                f"{ways_out}")

    def close(self) -> None:
        """Release ``out_dir`` (its ``run.lock``) and give the process back the thread count
        it had before :meth:`setup`; :meth:`fit` does so when it ends."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        before, self._threads_before = self._threads_before, None
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)

    def _hold_threads(self) -> None:
        """Note the process's thread count, which :meth:`close` gives back (trainers open at
        once: close them last-first, as :class:`~flexmtl.training.batched.RunBatch` does)."""
        if self._threads_before is None:
            self._threads_before = torch.get_num_threads()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the current phase (the finetune one once it has taken over)."""
        cfg = self.config
        name = cfg.optimizer
        if self.finetune_step is not None:  # same groups, the lrs scaled to finetune_lr
            name = cfg.finetune_optimizer
            cfg = replace(cfg, lr=cfg.finetune_lr,
                          sharing_lr=cfg.sharing_lr * cfg.finetune_lr / cfg.lr)
        return fast_optimizer(OPTIMIZERS.get(name), parameter_groups(self.model, cfg))

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

    def draw_indices(self, task: int) -> torch.Tensor:
        """The rows of the task's training set in this rank's piece of its next (global)
        batch, on the device (what :meth:`draw_batch` draws)."""
        self.setup()
        return distributed.shard(self.sampler.next(task)).to(self.device)

    def draw_batch(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's piece of the task's next (global) batch, on the device."""
        idx = self.draw_indices(task)
        data = self.train_data[task]
        augment = self.tasks[task].augment
        # index_select: the same rows as data.x[idx], several times faster on the CPU
        x = data.x.index_select(0, idx) if torch.is_tensor(data.x) else data.x[idx]
        return (augment(x) if augment is not None else x), data.y.index_select(0, idx)

    def training_losses(self, tasks: Sequence[int],
                        batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                        ) -> list[torch.Tensor]:
        """Loss of each task's batch plus the core's regularisation for that task (e.g. a
        budget penalty); one forward for all, fused where the model supports it.

        With several ranks the batches are this rank's pieces; the returned losses then have
        the global batch's value and a gradient that DDP's average over ranks turns into the
        global batch's gradient (see :func:`~flexmtl.training.forward.global_mean`).
        """
        self.setup()
        outs, regularization = self._forward([x for x, _ in batches], list(tasks))
        ys = [y for _, y in batches]
        losses = self.losses_of(tasks, outs, ys)
        if self.world_size > 1:
            losses = global_mean(losses, [len(y) for y in ys], self.world_size)
        if not regularization:  # the core has none
            return losses
        return [loss if reg is None else loss + reg for loss, reg in zip(losses, regularization)]

    def losses_of(self, tasks: Sequence[int], outs: Sequence[torch.Tensor],
                  ys: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[tasks[i].loss(outs[i], ys[i])]``: one stacked loss per group of tasks with
        alike outputs and targets (:func:`flexmtl.fusion.losses.task_losses`), unless the
        model is the reference (:func:`~flexmtl.fusion.is_fused` False), which computes them
        task by task."""
        if is_fused(self.model):
            return task_losses([self.tasks[t] for t in tasks], outs, ys)
        return [self.tasks[t].loss(out, y) for t, out, y in zip(tasks, outs, ys)]

    def _find_unused_parameters(self) -> bool:
        """Whether DDP must look for parameters without a gradient after each backward: a
        round-robin step trains one task (the others' encoders and heads get none), and a
        routed layer with a fixed pattern skips components; a joint step of the orderings
        reaches every parameter, and the search would cost a pass over the graph."""
        setting = self.config.find_unused_parameters
        if setting is not None:
            return setting
        return self.config.schedule != "joint" or may_leave_unused_parameters(self.model)

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

    def update(self, loss: torch.Tensor, task_indices: Sequence[int]) -> None:
        """One optimiser update from ``loss`` (of the tasks ``task_indices``): a non-finite
        loss stops training (:class:`TrainingDiverged`); gradients are clipped when set."""
        self._check(loss, task_indices)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()

    def evaluate(self, split: str = "val") -> dict:
        """Mean loss and accuracy of every task on ``split`` (``train``/``val``/``test``):
        ``{"tasks": {name: {"loss", "accuracy"}}, "loss": sum of task losses, "accuracy":
        mean task accuracy}`` (:func:`~flexmtl.training.evaluation.evaluate_tasks`)."""
        if split not in SPLITS:
            raise UnknownNameError("split", str(split), SPLITS)
        self.setup()
        return evaluate_tasks(self.model, self.tasks, self.input_groups, split,
                              self.config.eval_batch_size, self.device)

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
            f"the last good checkpoint is {self._folder.last} (step "
            f"{self.last_checkpoint_step})"
            if self.last_checkpoint_step is not None
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"loss became {float(value.detach())} at step {self.step + 1} (tasks: {names}); "
            f"training stopped and {where}. Try a lower learning rate or check the inputs for NaN."
        )

    # ------------------------------------------------------------------ training
    def fit(self) -> TrainResult:
        """Train to ``config.steps`` (resuming where a previous run stopped) and test once;
        ``out_dir`` is released at the end, also on an error."""
        try:
            self.setup()
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        self._begin_fit()
        try:
            while self.step < self.config.steps:
                self.after_step(self.train_step())
        finally:
            self._end_fit()
        return self._finish(self.seconds_before + time.perf_counter() - self._fit_start)

    def _begin_fit(self) -> None:
        """Open the logs and the progress bar of :meth:`fit` (also for a batch of runs,
        :class:`~flexmtl.training.batched.RunBatch`, which steps the runs itself)."""
        cfg = self.config
        self._hold_threads()  # also a second fit after close
        self._set_threads()  # this run's count, whatever other runs set since its setup
        self._segment_start = self._fit_start = time.perf_counter()
        folder = self.run_folder if self.is_main else None
        self._train_log = CsvLog(folder.train_log if folder is not None else None)
        self._eval_log = CsvLog(folder.eval_log if folder is not None else None)
        self._tensorboard = TensorBoardLog(
            folder.tensorboard if folder is not None and cfg.tensorboard else None,
            [t.name for t in self.tasks], first_step=self.step)
        if self.step == 0:
            self._snapshot_sharing()
        self._bar = _progress(cfg.steps, self.step, cfg.progress and self.is_main)
        self.model.train()
        self._hooks = contextlib.ExitStack()
        if self.shared_stream is not None:  # the allocation samples: one stream for all ranks
            self._hooks.enter_context(self.shared_stream.attached(self.model))

    def after_step(self, losses: list[float]) -> None:
        """What :meth:`fit` does after each training step (``step`` already counted, each
        task's loss in ``losses``): log, validate and select, switch to the finetune
        optimiser, checkpoint, callbacks."""
        cfg = self.config
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            row = {"step": self.step, "loss": sum(losses)}
            row.update({f"loss/{t.name}": v for t, v in zip(self.tasks, losses)})
            self._train_log.write(row)
            self._tensorboard.train(self.step, losses, self.optimizer)
        if self.is_main and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
            self._evaluate_and_select(self._eval_log)
            self._tensorboard.evaluation(self.step, self.history[-1])
            self._tensorboard.sharing(self.step, self.model)
            self._bar.set_postfix(loss=f"{sum(losses):.4f}",
                                  val=f"{self.history[-1]['loss']:.4f}")
        if self._finetune_due():
            self.finetune_step = self.step
            self.optimizer = self._make_optimizer()
        every = cfg.checkpoint_every or cfg.eval_every
        if self.step % every == 0 or self.step == cfg.steps:
            self._save_last()
        self._bar.update(1)
        for callback in self.callbacks:
            callback(self, self.step)

    def _end_fit(self) -> None:
        self._hooks.close()
        self._bar.close()
        self._train_log.close()
        self._eval_log.close()
        self._tensorboard.close()

    def train_step(self) -> list[float]:
        """One step of the schedule (a batch per task, their losses, the update or updates;
        see :mod:`~flexmtl.training.schedules`) and ``step + 1``; returns each task's
        loss. :meth:`fit` runs these steps and validates, logs and checkpoints between them;
        benchmarks and tools may call it directly (after :meth:`setup`, which it calls)."""
        self.setup()
        if not self.model.training:
            self.model.train()
        if self.step_flops is None and self._auto_threads():
            # the first step of threads=0: its FLOPs counted (the size of a step, judged by
            # auto_threads); explicit threads never run under the counter
            with FlopCount() as count:
                losses = self._schedule_step()
            self.step_flops = count.flops
            self._set_threads()
        else:
            losses = self._schedule_step()
        self.step += 1
        return losses

    def _schedule_step(self) -> list[float]:
        return self.schedule.step(len(self.tasks), self.draw_batch, self.training_losses,
                                  self.update, self.task_order_generator)

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
                self._folder.save_best(self.step, self.model.state_dict(),
                                       keep_previous=self._keep_best)
                self._keep_best = False
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


def check_tasks(model: nn.Module, tasks: Sequence[Task], config: TrainConfig) -> None:
    """What the :class:`Trainer` refuses before training: things that are not
    :class:`~flexmtl.tasks.Task`, two tasks of one name, tasks that are not the model's
    (:meth:`~flexmtl.models.MultiTaskModel.check_tasks`, for models that have it) and a
    selection metric the tasks do not have."""
    for i, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise ConfigError(f"tasks[{i}] is a {type(task).__name__}, not a flexmtl Task")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"task names must be unique, but {', '.join(map(repr, dup))} "
                          "appear more than once; give each task its own name")
    check = getattr(model, "check_tasks", None)
    if callable(check):
        check(tasks)
    if config.select_on == "val_accuracy" and all(t.kind == "regression" for t in tasks):
        raise ConfigError(
            f"select_on='val_accuracy' needs a classification task, but the tasks "
            f"({', '.join(names)}) are all regression; use select_on='val_loss' or 'last'")


def _train_config(config: object) -> TrainConfig:
    """The :class:`Trainer`'s ``config`` argument as a :class:`TrainConfig` (no I/O)."""
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        known = [f.name for f in fields(TrainConfig)]
        for key in config:
            if key not in known:
                raise UnknownNameError("TrainConfig key", str(key), known)
        return TrainConfig(**config)
    raise ConfigError(f"config must be a TrainConfig or a mapping of its fields (e.g. "
                      f"{{'steps': 500}}), got a {type(config).__name__}")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file or lies below one (before anything is created)."""
    blocker = next((p for p in (out_dir, *out_dir.parents) if p.is_file()), None)
    if blocker is not None:
        where = "is a file" if blocker == out_dir else f"lies below the file {blocker}"
        raise ConfigError(f"out_dir {out_dir} {where}; pass a folder")


def _resume_policy(resume: object, out_dir: Path | None) -> Resume:
    """The checked ``resume`` argument of :class:`Trainer` (no I/O)."""
    if isinstance(resume, bool):
        raise ConfigError(
            f"resume={resume} is no longer a flag: pass resume='auto' (resume a run of the "
            "same fingerprint, the old True), 'must' (resume or fail) or 'restart' (delete "
            "the run and start over, where the old False ignored it)")
    if resume not in RESUME:
        raise ConfigError(f"resume must be one of {RESUME}, got {resume!r}")
    if resume == "must" and out_dir is None:
        raise ConfigError("resume='must' needs an out_dir to resume from")
    return resume


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: no bar where stderr is not a terminal (a log file gets no control codes)
    return tqdm(total=total, initial=initial, disable=None if enabled else True, leave=False,
                dynamic_ncols=True, desc="train")
