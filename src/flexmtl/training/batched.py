"""Several runs of one model shape trained as one batched step (vectorised runs).

A study trains the same model once per seed. :class:`RunBatch` steps such runs together:
every run keeps its own :class:`~flexmtl.training.Trainer` -- its model, sampler, run
folder, validation, checkpoint selection, ``last.pt``/``best.pt`` and result -- while the
runs' parameters live stacked along a run dimension (:class:`~flexmtl.fusion.runs.RunStack`)
and the forward, backward and Adam update of a step run once for all of them
(:class:`StackAdam`: torch's own Adam kernel on views of the stack of each parameter's
shape). Each run draws its batches from its own sampler and its dropout masks from its
own random stream (a :class:`torch.Generator` started from the state its run alone would
have at its first step, saved in its checkpoints as torch's state), so each run trains as
it would alone: bit for bit at the experiments' shapes, within float rounding where MKL
rounds a batched product otherwise (``tests/test_batched_runs.py``). The per-step training
losses logged (``train_log.csv``) are batch means summed in another order and may differ
in the last digit; validation, selection and test metrics do not. A run's result does not
depend on the other runs of its batch. Runs with ``threads=0`` train on one thread in a
batch (a run alone may take more for a large model).

A run that diverges (non-finite loss) stops as it would alone -- its last good
checkpoint kept -- and leaves the batch; the others go on. Runs resumed at different steps
share the batch while they all train and the ones that reach ``steps`` drop out.
:func:`batch_reason` says when runs cannot be batched (the runner then trains them one by
one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import cast

import torch
from torch.optim.adam import adam
from torch.optim.optimizer import _get_scalar_dtype

from flexmtl.fusion.runs import RunStack, runs_batch_reason
from flexmtl.sharing import find_cores
from flexmtl.tasks import Task, kind_loss
from flexmtl.training import distributed
from flexmtl.training.trainer import Trainer, TrainResult

__all__ = ["RunBatch", "batch_reason"]

#: settings that may differ between the runs of one batch
_PER_RUN = ("seed", "progress")


def batch_reason(trainers: Sequence[Trainer]) -> str | None:
    """Why these trainers cannot train as one :class:`RunBatch`, or None
    when they can: one training configuration but the seed, the joint schedule, the CPU, one
    process, no ``compile``, no augmentation, no core regularisation, tasks of one shape and
    models :func:`~flexmtl.fusion.runs.runs_batch_reason` accepts."""
    if not trainers:
        return "no runs"
    configs = [{k: v for k, v in asdict(t.config).items() if k not in _PER_RUN}
               for t in trainers]
    if any(c != configs[0] for c in configs):
        return "the runs' training settings differ"
    first = trainers[0]
    cfg = first.config
    if cfg.schedule != "joint":
        return f"the {cfg.schedule!r} schedule is not batched (the joint one is)"
    if first.device.type != "cpu":
        return "only CPU runs are batched"
    if cfg.compile:
        return "compiled runs are not batched"
    if cfg.optimizer != "adam":
        return f"only Adam runs are batched, not {cfg.optimizer!r}"
    if cfg.finetune_optimizer:
        return "runs with a finetune optimiser are not batched"
    if cfg.clip_grad_norm:
        return "runs with gradient clipping are not batched (its norm is per run)"
    if distributed.launched_world_size() > 1:
        return "runs under torchrun are not batched"
    sizes = [[min(cfg.batch_size, len(t.train)) for t in tr.tasks] for tr in trainers]
    shapes = [[(tuple(t.input_shape), t.num_outputs, t.kind) for t in tr.tasks]
              for tr in trainers]
    if any(s != sizes[0] for s in sizes) or any(s != shapes[0] for s in shapes):
        return "the runs' tasks differ in shape or batch size"
    if any(t.augment is not None for tr in trainers for t in tr.tasks):
        return "tasks with random augmentation are not batched"
    if any(core.regularization(0) is not None
           for tr in trainers for core in find_cores(tr.model)):
        return "cores with a regularisation term are not batched"
    return runs_batch_reason([t.model for t in trainers], sizes[0])


class RunBatch:
    """Trains ``trainers`` (one per run, :func:`batch_reason` None) in lockstep, their
    parameters stacked (:class:`~flexmtl.fusion.runs.RunStack`) and trained by one
    optimiser of the runs' kind over the stack.

    :meth:`setup` each trainer right after its model is built (it starts the run's random
    stream where a run alone would start drawing); :meth:`fit` returns one entry per run:
    its :class:`TrainResult`, or the exception that stopped it (the other runs train on).
    Runs resumed at different steps train in turn, each group of one step as a batch (also a
    group of one: a run's result does not depend on which runs share its batch).
    """

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)

    def setup(self, trainer: Trainer) -> None:
        """Set ``trainer`` up (its folder locked, resumed or started) and start its random
        stream where torch's default generator stands now."""
        trainer.setup()
        if trainer.random_stream is None:
            stream = torch.Generator()
            stream.set_state(torch.get_rng_state())
            trainer.random_stream = stream

    def fit(self) -> list[TrainResult | BaseException]:
        outcomes: dict[int, TrainResult | BaseException] = {}
        try:
            ready = []
            for i, trainer in enumerate(self.trainers):
                try:
                    self.setup(trainer)
                    ready.append(i)
                except Exception as exc:  # this run fails; the others train
                    outcomes[i] = exc
                    trainer.close()
            by_step: dict[int, list[int]] = {}
            for i in ready:
                by_step.setdefault(self.trainers[i].step, []).append(i)
            for group in by_step.values():  # a group of one too: the kernels of a batch
                outcomes.update(zip(group, self._fit_group([self.trainers[i] for i in group])))
        finally:
            for trainer in self.trainers:
                trainer.close()
        return [outcomes.get(i, RuntimeError("the run did not train"))
                for i in range(len(self.trainers))]

    @staticmethod
    def _alone(trainer: Trainer) -> TrainResult | BaseException:
        """Train one run by itself, its stream continued by torch's default generator."""
        if trainer.random_stream is not None:
            torch.set_rng_state(trainer.random_stream.get_state())
            trainer.random_stream = None
        try:
            return trainer.fit()
        except Exception as exc:
            return exc

    def _fit_group(self, trainers: list[Trainer]) -> list[TrainResult | BaseException]:
        first = trainers[0]
        sizes = [min(first.config.batch_size, len(t.train)) for t in first.tasks]
        stack = RunStack([t.model for t in trainers], sizes,
                         [t.input_shape for t in first.tasks])
        named = [dict(t.model.named_parameters()) for t in trainers]
        optimizer = StackAdam(stack, first, [
            {n: t.optimizer.state[p] for n, p in named[r].items() if p in t.optimizer.state}
            for r, t in enumerate(trainers)])
        outcomes: list[TrainResult | BaseException | None] = [None] * len(trainers)
        active = list(range(len(trainers)))
        begun: list[int] = []
        try:
            for r in active:
                trainers[r]._begin_fit()
                begun.append(r)
            while active:
                still = []
                for r in active:  # the runs that failed or trained all their steps end
                    trainer = trainers[r]
                    if outcomes[r] is not None:  # failed in the last step
                        trainer._end_fit()
                        begun.remove(r)
                        continue
                    if trainer.step >= trainer.config.steps:
                        trainer._end_fit()
                        begun.remove(r)
                        try:
                            outcomes[r] = self._finish(trainer)
                        except Exception as exc:
                            outcomes[r] = exc
                    else:
                        still.append(r)
                active = still
                if active:
                    self._step(stack, optimizer, trainers, active, named, outcomes)
        finally:
            for r in begun:
                trainers[r]._end_fit()
        return [o if o is not None else RuntimeError("the run did not train")
                for o in outcomes]

    @staticmethod
    def _finish(trainer: Trainer) -> TrainResult:
        return trainer._finish(trainer.seconds_before + time.perf_counter()
                               - trainer._fit_start)

    def _step(self, stack: RunStack, optimizer: StackAdam,
              trainers: list[Trainer], active: list[int], named: list[dict],
              outcomes: list) -> None:
        """One joint step of every run (the stack trains them all; the runs in ``active``
        are logged, evaluated and checkpointed); a run that fails gets its exception in
        ``outcomes`` (:meth:`_fit_group` then ends it)."""
        tasks = range(len(trainers[0].tasks))
        batches = [[t.draw_batch(i) for i in tasks] for t in trainers]
        for t in trainers:
            t.model.train()
        outs = stack.forward([torch.stack([run[i][0] for run in batches]) for i in tasks],
                             [t.random_stream for t in trainers])
        losses = torch.stack([  # [R, T]
            _run_losses([t.tasks[i] for t in trainers], outs[i],
                        torch.stack([run[i][1] for run in batches])) for i in tasks], 1)
        totals = losses.sum(1)
        finite = torch.isfinite(totals).tolist()
        live = []
        for r in active:
            try:
                if not finite[r]:
                    trainers[r]._check(totals[r], tasks)  # raises TrainingDiverged
                live.append(r)
            except Exception as exc:  # the run stops, its last good checkpoint kept
                outcomes[r] = exc
        optimizer.zero_grad()
        if live:
            (totals.sum() if len(live) == len(trainers) else totals[live].sum()).backward()
            optimizer.step()
        values = losses.detach().tolist()
        for r in live:
            trainer = trainers[r]
            try:
                trainer.step += 1
                cfg, step = trainer.config, trainer.step
                every = cfg.checkpoint_every or cfg.eval_every
                save = step % every == 0 or step == cfg.steps
                if save or step % cfg.eval_every == 0 or trainer.callbacks:
                    stack.to_models([r])
                if save:
                    for name, state in optimizer.run_state(r).items():
                        trainer.optimizer.state[named[r][name]] = state
                trainer.after_step(values[r])
            except Exception as exc:
                outcomes[r] = exc


class StackAdam:
    """Adam over a :class:`~flexmtl.fusion.runs.RunStack`, with the settings of a run's own
    optimiser (``trainer.optimizer``: its groups' lr and weight decay, betas, eps, fused
    or foreach). Each parameter of each run is updated by torch's functional Adam on views
    of the stack of that parameter's own shape -- the kernel its run alone applies to the
    same tensors, so the update is exactly the run alone's -- in one call per group for all
    runs. ``states``: each run's optimiser state by parameter name (a resumed run's), or
    empty ones."""

    def __init__(self, stack: RunStack, trainer: Trainer, states: Sequence[dict]):
        self.stack = stack
        opt = trainer.optimizer
        self.defaults = opt.defaults
        named = dict(trainer.model.named_parameters())
        group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
        self.groups: list[dict] = [{"lr": g["lr"], "weight_decay": g["weight_decay"],
                                    "keys": []} for g in opt.param_groups]
        for key in stack.trainable():
            self.groups[group_of[id(named[stack.member_names(key)[0]])]]["keys"].append(key)
        self.groups = [g for g in self.groups if g["keys"]]
        fused = bool(self.defaults.get("fused"))
        self.exp_avg = {k: torch.zeros_like(v) for k, v in stack.trainable().items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in stack.trainable().items()}
        # one step count per (run, member), as a run's own Adam keeps one per parameter
        self.steps = {k: [torch.zeros((), dtype=_get_scalar_dtype(is_fused=fused))
                          for _ in stack.views(v.detach(), k)]
                      for k, v in stack.trainable().items()}
        self._load(states)

    def _members(self, key: str) -> list[tuple[int, str]]:
        """(run, parameter name) of each view of the leaf ``key``, in :meth:`views` order."""
        names = self.stack.member_names(key)
        return [(r, n) for r in range(self.stack.runs) for n in names]

    @torch.no_grad()
    def _load(self, states: Sequence[dict]) -> None:
        for key in self.exp_avg:
            avg = self.stack.views(self.exp_avg[key], key)
            sq = self.stack.views(self.exp_avg_sq[key], key)
            for i, (r, name) in enumerate(self._members(key)):
                state = states[r].get(name) if r < len(states) else None
                if state:
                    avg[i].copy_(state["exp_avg"])
                    sq[i].copy_(state["exp_avg_sq"])
                    self.steps[key][i].copy_(state["step"])

    def run_state(self, run: int) -> dict:
        """Run ``run``'s optimiser state by parameter name, as its own Adam keeps it."""
        out = {}
        for key in self.exp_avg:
            avg = self.stack.views(self.exp_avg[key], key)
            sq = self.stack.views(self.exp_avg_sq[key], key)
            for i, (r, name) in enumerate(self._members(key)):
                if r == run:
                    out[name] = {"step": self.steps[key][i].clone(),
                                 "exp_avg": avg[i].clone(), "exp_avg_sq": sq[i].clone()}
        return out

    def zero_grad(self) -> None:
        for leaf in self.stack.trainable().values():
            leaf.grad = None

    @torch.no_grad()
    def step(self) -> None:
        d = self.defaults
        leaves, view = self.stack.leaves, self.stack.views
        for group in self.groups:
            if group.get("lists") is None:  # the views of the parameters and state: fixed
                keys = group["keys"]
                group["lists"] = (
                    [v for k in keys for v in view(leaves[k].detach(), k)],
                    [v for k in keys for v in view(self.exp_avg[k], k)],
                    [v for k in keys for v in view(self.exp_avg_sq[k], k)],
                    [s for k in keys for s in self.steps[k]])
            if any(leaves[k].grad is None for k in group["keys"]):
                raise RuntimeError("a stacked parameter got no gradient in a joint step")
            params, avgs, sqs, steps = group["lists"]
            adam(params, [v for k in group["keys"]
                          for v in view(cast(torch.Tensor, leaves[k].grad), k)],
                 avgs, sqs, [], steps, foreach=d.get("foreach"), fused=d.get("fused"),
                 capturable=False, differentiable=False, amsgrad=False, beta1=d["betas"][0],
                 beta2=d["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"],
                 eps=d["eps"], maximize=d["maximize"])


def _run_losses(tasks: Sequence[Task], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[tasks[r].loss(out[r], y[r]) for r]`` (task ``t`` of every run; ``out`` ``[R, B,
    ...]``) as one loss over all runs' rows where the tasks use :meth:`Task.loss`: the
    same per-example losses (:func:`~flexmtl.tasks.kind_loss`) and batch means."""
    if all(type(t).loss is Task.loss for t in tasks):
        per_example = kind_loss(tasks[0].kind, out.flatten(0, 1), y.flatten(0, 1),
                                reduction="none")
        return per_example.reshape(len(tasks), -1).mean(1)
    return torch.stack([t.loss(o, target) for t, o, target in zip(tasks, out, y)])
