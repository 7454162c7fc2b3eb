"""Checkpointing of a training run: what ``last.pt`` holds and how a run resumes from it, the
selected model, the sharing snapshots, and the random-number state that makes a resumed run
continue exactly (the files are written and read by :mod:`flexmtl.run_folder`)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from flexmtl.errors import ConfigError
from flexmtl.run_folder import TrainingRun
from flexmtl.sharing import find_cores
from flexmtl.training import distributed
from flexmtl.training.config import CHANGEABLE_ON_RESUME, TrainConfig
from flexmtl.training.rng import rng_state, set_rng_state
from flexmtl.training.sampler import TaskBatchSampler


def check_resumable(state: dict, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint trained with other settings, or past the end."""
    saved = state.get("config", {})
    now = asdict(cfg)
    changed = sorted(k for k in saved if k not in CHANGEABLE_ON_RESUME and k in now
                     and saved[k] != now[k])
    if changed:
        raise ConfigError(
            "the checkpoint to resume was trained with other settings ("
            + ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
            + "); pass another out_dir (--out) to keep both, or resume='restart' (--restart) "
            "to start over")
    if state["step"] > cfg.steps:
        raise ConfigError(f"the checkpoint to resume is at step {state['step']}, past the "
                          f"{cfg.steps} steps asked for; ask for >= {state['step']} steps, pass "
                          "another out_dir (--out), or resume='restart' (--restart)")


class Checkpointing:
    """The trainer's checkpoints (a mixin of :class:`~flexmtl.training.Trainer`, which
    sets the attributes below): ``last.pt`` (everything :meth:`state_dict` holds, written
    atomically every ``checkpoint_every`` steps), resuming from it, the selected model
    (``best.pt``) and the sharing snapshots (``sharing.pt``)."""

    model: nn.Module
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    sampler: TaskBatchSampler
    task_order_generator: torch.Generator
    device: torch.device
    out_dir: Path | None
    step: int
    best_score: float
    best_step: int
    finetune_step: int | None
    history: list[dict]
    sharing: list[tuple[int, torch.Tensor]]
    seconds_before: float
    random_stream: torch.Generator | None
    _segment_start: float
    last_checkpoint_step: int | None
    _best_in_memory: dict | None
    _fingerprint: dict | None
    _fingerprint_saved: bool
    _keep_best: bool
    shared_stream: distributed.SharedStream | None
    world_size: int
    is_main: bool

    def _make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError  # the trainer's: the optimiser of the current phase

    def _snapshot_sharing(self) -> None:
        """Log what the model's core has learned about sharing (a model with several cores:
        nothing, as there is no one tensor to log)."""
        cores = find_cores(self.model)
        snapshot = cores[0].sharing_snapshot() if len(cores) == 1 else None
        if snapshot is not None:
            self.sharing.append((self.step, snapshot.detach().cpu().clone()))

    def state_dict(self) -> dict:
        """Everything :meth:`fit` needs to resume (this rank's random state; ``last.pt``
        adds every rank's, ``rng_ranks``, when there are several)."""
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "task_order_generator": self.task_order_generator.get_state(),
            "rng": self._rng_state(),
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

    def _rng_state(self) -> dict:
        """:func:`rng_state`, with this run's own stream as torch's when it has one (a run
        of a batch: resumed alone, its default generator continues that stream)."""
        state = rng_state()
        if self.random_stream is not None:
            state["torch"] = self.random_stream.get_state()
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
            if not self._fingerprint_saved and self._fingerprint is not None:
                self._folder.write_fingerprint(self._fingerprint)  # before the first last.pt
                self._fingerprint_saved = True
            self._folder.save_last(state)
            self._keep_best = True
        self.last_checkpoint_step = self.step

    @property
    def run_folder(self) -> TrainingRun | None:
        """The files of this run in ``out_dir`` (None: everything is kept in memory)."""
        return TrainingRun(self.out_dir) if self.out_dir is not None else None

    @property
    def _folder(self) -> TrainingRun:
        """:attr:`run_folder` where the caller knows that there is one."""
        if self.out_dir is None:
            raise RuntimeError("this run keeps everything in memory (out_dir is None)")
        return TrainingRun(self.out_dir)

    def _resume(self, state: dict) -> None:
        check_resumable(state, self.config)
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
            self._folder.truncate_logs(self.step)

    def _selected_state(self) -> dict:
        """The model chosen on validation, on the cpu (rank 0; it also writes sharing.pt)."""
        if self.out_dir is not None:
            self._folder.save_sharing(self.sharing)
            best = self._folder.load_best_model()
            self._folder.drop_fallbacks()  # training has ended: last.pt is final
            return best
        best = self._best_in_memory or self.model.state_dict()
        return {k: v.detach().cpu() for k, v in best.items()}
