"""Several runs of one model shape trained as one batched step (vectorised runs).

A study trains the same model once per seed. :class:`RunBatch` steps such runs together:
every run keeps its own :class:`~flexmtl.training.Trainer` -- its model, sampler, run
folder, validation, checkpoint selection, ``last.pt``/``best.pt`` and result -- while the
runs' parameters live stacked along a run dimension (:class:`~flexmtl.fusion.runs.RunStack`)
and the forward, backward and Adam update of a step run once for all of them
(:class:`StackAdam`: Adam's arithmetic on flat buffers of the stack). Each run draws its
batches from its own sampler and its dropout masks from its own random stream (a
:class:`torch.Generator` started from the state its run alone would have at its first
step, saved in its checkpoints as torch's state). A run's result does not depend on the
other runs of its batch (bit for bit), and equals the run trained alone by
:meth:`Trainer.fit` up to float rounding (``tests/test_batched_runs.py``; see
:mod:`flexmtl.fusion.runs`). Runs with ``threads=0`` train on one thread in a batch (a
run alone may take more for a large model).

A run that diverges (non-finite loss) stops as it would alone -- its last good
checkpoint kept -- and leaves the batch; the others go on. Runs resumed at different steps
share the batch while they all train and the ones that reach ``steps`` drop out.
:func:`batch_reason` says when runs cannot be batched (the runner then trains them one by
one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import cast

import torch

from flexmtl.fusion.runs import RunStack, runs_batch_reason
from flexmtl.sharing import find_cores
from flexmtl.tasks import Task
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
        finally:  # last set up, first closed: each gives back the threads it found
            for trainer in reversed(self.trainers):
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
        # a frozen dense encoder is a fixed function: each run's training inputs encoded
        # once (its batches then index the encodings), not every step
        encoded = {t: [stack.encode(t, r, cast(torch.Tensor, trainer.train_data[t].x))
                       for r, trainer in enumerate(trainers)]
                   for t in stack.fixed_encoders()
                   if all(torch.is_tensor(trainer.train_data[t].x) for trainer in trainers)}
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
                    self._step(stack, optimizer, trainers, active, named, outcomes,
                               encoded)
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
              outcomes: list, encoded: dict[int, list[torch.Tensor]] | None = None) -> None:
        """One joint step of every run (the stack trains them all; the runs in ``active``
        are logged, evaluated and checkpointed); a run that fails gets its exception in
        ``outcomes`` (:meth:`_fit_group` then ends it). ``encoded``: each run's training
        inputs of a task with a fixed encoder, encoded (:meth:`RunStack.encode`)."""
        tasks = range(len(trainers[0].tasks))
        encoded = encoded or {}

        def draw(r: int, t: Trainer, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if i not in encoded:
                return t.draw_batch(i)
            idx = t.draw_indices(i)  # the same rows as draw_batch draws
            return encoded[i][r].index_select(0, idx), t.train_data[i].y.index_select(0, idx)

        batches = [[draw(r, t, i) for i in tasks] for r, t in enumerate(trainers)]
        for t in trainers:
            if not t.model.training:  # (an evaluation may leave it in eval mode)
                t.model.train()
        outs = stack.forward([torch.stack([run[i][0] for run in batches]) for i in tasks],
                             [t.random_stream for t in trainers], encoded)
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
    optimiser (``trainer.optimizer``: its groups' lr and weight decay, betas, eps).

    The trainable leaves of each parameter group become views of one flat buffer, and a
    step is Adam's arithmetic (torch's ``Adam`` formula, L2 weight decay added to the
    gradient) on the group's flat buffers: a dozen elementwise passes for all runs. Only
    single IEEE operations (multiply, add, divide, square root), which round alike in a
    kernel's vectorised body and its scalar tail, so an element's update does not depend
    on where the number of runs puts it -- a run's update is the same in any batch (torch's
    fused kernel rounds the two parts differently). It equals the run alone's ``torch.optim.
    Adam`` up to float rounding. The runs of a batch have taken equally many steps (a batch
    groups runs by step): one step count per group. ``states``: each run's optimiser state
    by parameter name (a resumed run's), or empty ones."""

    def __init__(self, stack: RunStack, trainer: Trainer, states: Sequence[dict]):
        self.stack = stack
        opt = trainer.optimizer
        d = self.defaults = opt.defaults
        if d.get("amsgrad") or d.get("maximize") or d.get("decoupled_weight_decay"):
            raise ValueError("StackAdam trains plain Adam (no amsgrad, maximize or "
                             "decoupled weight decay)")
        named = dict(trainer.model.named_parameters())
        group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
        groups: list[dict] = [{"lr": g["lr"], "weight_decay": g["weight_decay"],
                               "keys": []} for g in opt.param_groups]
        for key in stack.trainable():
            groups[group_of[id(named[stack.member_names(key)[0]])]]["keys"].append(key)
        self.groups = [g for g in groups if g["keys"]]
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for group in self.groups:
                keys = group["keys"]
                leaves = [stack.leaves[k] for k in keys]
                flat = torch.cat([leaf.detach().flatten() for leaf in leaves])
                group["flat"] = flat
                group["avg"], group["sq"] = torch.zeros_like(flat), torch.zeros_like(flat)
                group["step"] = 0
                at = 0
                for k, leaf in zip(keys, leaves):  # the leaves: views of the flat buffer
                    n = leaf.numel()
                    stack.leaves[k] = flat[at : at + n].view(leaf.shape).requires_grad_()
                    self.exp_avg[k] = group["avg"][at : at + n].view(leaf.shape)
                    self.exp_avg_sq[k] = group["sq"][at : at + n].view(leaf.shape)
                    at += n
        self._load(states)

    def _members(self, group: dict):
        """``(run, parameter name, exp_avg view, exp_avg_sq view)`` of every parameter of
        every run in ``group``, each view of the parameter's own shape."""
        for key in group["keys"]:
            avg = self.stack.views(self.exp_avg[key], key)
            sq = self.stack.views(self.exp_avg_sq[key], key)
            names = self.stack.member_names(key)
            members = [(r, n) for r in range(self.stack.runs) for n in names]
            for (r, name), a, s in zip(members, avg, sq):
                yield r, name, a, s

    @torch.no_grad()
    def _load(self, states: Sequence[dict]) -> None:
        for group in self.groups:
            counts = set()
            for r, name, avg, sq in self._members(group):
                state = states[r].get(name) if r < len(states) else None
                if state:
                    avg.copy_(state["exp_avg"])
                    sq.copy_(state["exp_avg_sq"])
                counts.add(int(state["step"]) if state else 0)
            if len(counts) > 1:
                raise RuntimeError("the runs of a batch have taken different numbers of "
                                   f"optimiser steps: {sorted(counts)}")
            group["step"] = counts.pop()

    def run_state(self, run: int) -> dict:
        """Run ``run``'s optimiser state by parameter name, as its own Adam keeps it."""
        return {name: {"step": torch.tensor(float(group["step"])), "exp_avg": avg.clone(),
                       "exp_avg_sq": sq.clone()}
                for group in self.groups for r, name, avg, sq in self._members(group)
                if r == run}

    def zero_grad(self) -> None:
        for leaf in self.stack.trainable().values():
            leaf.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.defaults["betas"]
        eps = self.defaults["eps"]
        leaves = self.stack.leaves
        for group in self.groups:
            grads = [leaves[k].grad for k in group["keys"]]
            if any(g is None for g in grads):
                raise RuntimeError("a stacked parameter got no gradient in a joint step")
            grad = torch.cat([cast(torch.Tensor, g).flatten() for g in grads])
            flat, avg, sq = group["flat"], group["avg"], group["sq"]
            if group["weight_decay"]:
                grad.add_(flat * group["weight_decay"])
            group["step"] += 1
            step = group["step"]
            avg.mul_(beta1).add_(grad * (1 - beta1))
            sq.mul_(beta2).add_(grad.mul_(grad).mul_(1 - beta2))
            step_size = group["lr"] / (1 - beta1**step)
            denom = sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
            flat.sub_(torch.div(avg, denom).mul_(step_size))


def _run_losses(tasks: Sequence[Task], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[tasks[r].loss(out[r], y[r]) for r]`` (task ``t`` of every run; ``out`` ``[R, B,
    ...]``), one loss call per run: a kernel's vectorised body and its scalar tail compute
    ``exp`` or ``log`` differently, so a loss over all runs' rows at once would give a row
    other values when the number of runs moves it between the two."""
    return torch.stack([t.loss(o, target) for t, o, target in zip(tasks, out, y)])
