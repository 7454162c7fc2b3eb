"""Optimisers by name, and the parameter groups of a multi-task model: weights (with L2),
biases and norms (no L2), and the sharing cores' parameters (their own learning rate)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from flexmtl.registry import Registry
from flexmtl.sharing import find_cores

if TYPE_CHECKING:
    from flexmtl.training.config import TrainConfig

__all__ = ["OPTIMIZERS", "fast_optimizer", "parameter_groups"]

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)


def fast_optimizer(factory: Callable[..., torch.optim.Optimizer],
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

    Sharing parameters are those the model's sharing cores return from
    :meth:`~flexmtl.sharing.SharingCore.sharing_parameters` (soft-order scales, allocation
    logits). They get ``cfg.sharing_lr``, or the core's rule
    :meth:`~flexmtl.sharing.SharingCore.sharing_lr` (allocation: the Gumbel-Matrix rule of
    thumb, ``lr`` x number of tasks), and no L2; one group per core (``sharing``,
    ``sharing1``, ...).
    """
    cores = find_cores(model)
    per_core = [[p for p in core.sharing_parameters() if p.requires_grad] for core in cores]
    ids = {id(p) for params in per_core for p in params}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "weights"},
              {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "name": "biases"}]
    for i, (core, sharing) in enumerate(zip(cores, per_core)):
        groups.append({"params": sharing, "lr": cfg.sharing_lr or core.sharing_lr(cfg.lr),
                       "weight_decay": 0.0, "name": f"sharing{i or ''}"})
    return [g for g in groups if g["params"]]
