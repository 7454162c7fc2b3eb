"""One task's path through a multi-task model as a standalone module, and its export.

:func:`task_module` copies what task ``t`` computes in evaluation mode -- its encoder, its
path through the shared core, its decoder -- into a plain :class:`torch.nn.Module` mapping
inputs to that task's outputs, with nothing of the other tasks:

* fixed orderings (parallel, permuted, single-task): the task's blocks in its order;
* soft ordering (Eq. 7): each depth's mix ``sum_l s[t, l, d] * block_l(h)`` with the
  learned scales as constants; ``prune`` drops the branches whose scale is at most
  ``prune`` (the output then changes by those branches' share; 0 keeps every branch and
  the output is the model's);
* Gumbel-Matrix and other routed cores: each routed layer keeps only the components the
  task's evaluation pattern (the most likely allocation, Sec. III-C) switches on -- the
  others are multiplied by zero in the full model, so dropping them changes nothing.

A core of your own is supported when it has a ``task_path(task) -> nn.Module`` method.

:func:`export_task` saves that module with ``torch.export`` (a ``.pt2`` program, batch size
free; load it with ``torch.export.load(path).module()``, no flexmtl needed) and checks that
the saved program gives the model's outputs. (TorchScript is deprecated in the PyTorch this
library supports; ``torch.export`` replaces it.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flexmtl.errors import ConfigError, FlexMTLError, ShapeError, UnknownNameError

__all__ = ["export_task", "task_module", "parameter_bytes"]


class _SoftPath(nn.Module):
    """Soft ordering for one task: at depth ``d``, ``sum_{l in kept[d]} s[l, d] * block_l(h)``
    (blocks shared across depths, as in the model)."""

    def __init__(self, blocks: Sequence[nn.Module], kept: list[list[int]],
                 weights: list[list[float]]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.kept = kept
        self.weights = weights

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for kept, weights in zip(self.kept, self.weights):
            out = None
            for j, w in zip(kept, weights):
                term = self.blocks[j](h) * w
                out = term if out is None else out + term
            h = out if out is not None else h * 0.0
        return h


class _Active(nn.Module):
    """A routed layer for one task: its active components, summed and scaled."""

    def __init__(self, components: Sequence[nn.Module], scale: float):
        super().__init__()
        self.components = nn.ModuleList(components)
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = None
        for component in self.components:
            y = component(h)
            out = y if out is None else out + y
        assert out is not None
        return out * self.scale if self.scale != 1.0 else out


class _Zeros(nn.Module):
    """A routed layer whose task uses no component: zeros of the layer's output shape."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.new_zeros((h.shape[0], *self.shape))


class _TaskModule(nn.Module):
    """``decoder(core_path(encoder(x)))`` of one task."""

    def __init__(self, encoder: nn.Module, path: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.path = path
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.path(self.encoder(x)))


def _index(model: Any, task: str | int) -> int:
    names = list(getattr(model, "task_names", []))
    if isinstance(task, str):
        if task not in names:
            raise UnknownNameError("task of this model", task, names)
        return names.index(task)
    if not 0 <= int(task) < model.num_tasks:
        raise IndexError(f"task index {task} out of range for {model.num_tasks} tasks")
    return int(task)


@torch.no_grad()
def _core_path(core: nn.Module, task: int, prune: float) -> nn.Module:
    from flexmtl.sharing import RoutedCore, RoutedLayer, SharedCore, SingleTaskCore, SoftOrdering

    if isinstance(core, SoftOrdering):
        s = core.scales(task).detach().cpu()  # [layers, depths]
        kept = [[j for j in range(core.num_layers) if float(s[j, d]) > prune]
                for d in range(core.depth)]
        used = sorted({j for depth in kept for j in depth})
        position = {j: i for i, j in enumerate(used)}
        return _SoftPath([copy.deepcopy(core.blocks[j]) for j in used],
                         [[position[j] for j in depth] for depth in kept],
                         [[float(s[j, d]) for j in depth] for d, depth in enumerate(kept)])
    if isinstance(core, SingleTaskCore):
        return nn.Sequential(*copy.deepcopy(list(core._blocks_of(task))))
    if isinstance(core, SharedCore):
        return nn.Sequential(*[copy.deepcopy(core.blocks[j]) for j in core.layer_order(task)])
    if isinstance(core, RoutedCore):
        layers: list[nn.Module] = []
        for layer in core.layers:
            if not isinstance(layer, RoutedLayer):
                layers.append(copy.deepcopy(layer))
                continue
            pattern = layer.pattern(task).detach().cpu()
            active = [c for c in range(layer.num_components) if float(pattern[c]) != 0.0]
            if not active:
                layers.append(_Zeros(layer.output_shape))
                continue
            scale = 1.0 / len(active) if layer.combine == "mean" else 1.0
            if any(float(pattern[c]) != 1.0 for c in active):  # a weighted pattern
                raise ConfigError("export supports 0/1 allocation patterns only")
            layers.append(_Active([copy.deepcopy(layer.components[c]) for c in active], scale))
        return nn.Sequential(*layers)
    task_path = getattr(core, "task_path", None)
    if callable(task_path):
        path = task_path(task)
        if not isinstance(path, nn.Module):
            raise ConfigError(f"{type(core).__name__}.task_path must return an nn.Module")
        return path
    raise ConfigError(f"cannot export a task of a {type(core).__name__} core: flexmtl's "
                      "orderings and routed cores are supported; give your core a "
                      "task_path(task) -> nn.Module method")


def task_module(model: nn.Module, task: str | int, *, prune: float = 0.0) -> nn.Module:
    """Task ``task``'s path through ``model`` (a :class:`~flexmtl.models.MultiTaskModel` or a
    :class:`~flexmtl.use.LoadedRun`) as a standalone module ``x -> outputs``, in evaluation
    mode, holding copies of only the weights it uses.

    ``prune``: soft ordering only -- drop branches whose scale is at most ``prune`` (in
    [0, 1); 0 keeps all, and the module's outputs are the model's)."""
    from flexmtl.models import MultiTaskModel

    model = getattr(model, "model", model)  # a LoadedRun
    if not isinstance(model, MultiTaskModel):
        raise ConfigError(f"task_module needs a flexmtl MultiTaskModel, got "
                          f"{type(model).__name__}")
    if not 0.0 <= prune < 1.0:
        raise ConfigError(f"prune must be in [0, 1), got {prune}")
    t = _index(model, task)
    module = _TaskModule(copy.deepcopy(model.encoders[t]), _core_path(model.core, t, prune),
                         copy.deepcopy(model.decoders[t]))
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, each tensor counted once."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


@torch.no_grad()
def export_task(model: nn.Module, task: str | int, path: str | Path, example: Any, *,
                prune: float = 0.0, atol: float = 1e-5) -> Path:
    """Save task ``task``'s standalone module (:func:`task_module`) to ``path``.

    Args:
        model: a :class:`~flexmtl.models.MultiTaskModel` or a :class:`~flexmtl.use.LoadedRun`.
        example: a batch of inputs of the task (two or more examples), to trace with; the
            batch size stays free in the saved program.
        prune: see :func:`task_module`.
        atol: the saved program's outputs on ``example`` must match the model's to this
            tolerance (with ``prune`` 0), else :class:`~flexmtl.errors.ShapeError`.
    """
    full = getattr(model, "model", model)
    t = _index(full, task)
    module = task_module(full, t, prune=prune)
    x = torch.as_tensor(example).to(torch.float32)
    if x.ndim < 1 or len(x) < 2:
        raise ShapeError("example must be a batch of two or more inputs (the batch size of "
                         "the saved program stays free)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = full.training
    full.eval()
    try:
        expected = full(x, t)
    finally:
        full.train(was_training)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out))
    got = torch.export.load(str(out)).module()(x)
    if prune == 0.0 and not torch.allclose(got, expected, atol=atol, rtol=1e-4):
        raise FlexMTLError(f"the exported task differs from the model by "
                         f"{float((got - expected).abs().max()):.3g} (> {atol}); please report")
    return out
