r"""Many runs in one step: R models of one shape trained as one, stacked along a run dimension.

A study trains the same model several times -- one run per seed. :class:`RunStack` holds
the parameters of R such models (:class:`~flexmtl.models.MultiTaskModel` of one structure)
stacked along a leading run dimension, as the leaves one optimiser trains, and runs the
training forward of every task of every run at once: each kernel of a step runs once for
all runs (a ``bmm`` over the runs where a run alone has an ``mm``), and each run draws its
dropout masks from its own random stream, in the order and sizes its run alone draws them.
Each run's model is written back from the stack (:meth:`RunStack.to_models`) whenever its
trainer evaluates or checkpoints; :class:`~flexmtl.training.batched.StackAdam` updates
the stack.

Two promises, held by ``tests/test_batched_runs.py``:

* a run's values do not depend on its batch: the same bit for bit beside any other runs,
  at any place, or in a batch of one (checked on one thread, as a study's workers train;
  several threads split large elementwise kernels by size). Every kernel used gives each
  run's slice the same values whatever the number of runs: ``bmm`` does except for a
  product with a dimension of 1, which :func:`_products` pads; elementwise kernels on all
  runs' rows (a vectorised body and a scalar tail, which round ``exp``, ``log`` or fused
  multiply-adds differently) only where each element is one IEEE operation -- the losses
  are computed run by run, and Adam is written out (``StackAdam``);
* a run equals the same run trained alone by :meth:`~flexmtl.training.Trainer.fit` up
  to float rounding: the same functions, other kernels (the tests hold parameters and
  metrics after 12 steps within 1e-12 in float64, 1e-5 in float32).

What batches (:func:`runs_batch_reason` says why not otherwise): fused
:class:`~flexmtl.models.MultiTaskModel`\ s whose core is one of the four orderings of
:mod:`flexmtl.sharing.ordering` on dense blocks ``Linear [-> ReLU]`` (every soft-ordering
experiment of the paper on vectors), and whose encoders and decoders are dense
``[Flatten ->] Linear [-> ReLU]`` or parameter-free; hard orderings other than parallel
need equal batch sizes of all tasks (their run alone draws one mask over the tasks' rows
side by side). Alike encoders (and decoders) of tasks with one batch size are stacked
together too: one product for all of them in all runs. A frozen dense encoder (the
mnist-pairs experiments' fixed random projections) is a fixed function of its input:
:meth:`RunStack.encode` applies it to a run's whole training set once, and the batch's
steps take its rows (:class:`~flexmtl.training.batched.RunBatch`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from flexmtl.fusion.dense import dense_parts, dense_signature
from flexmtl.fusion.hooks import global_hooks, has_hooks
from flexmtl.fusion.kernels import _ALL_DEPTH_BITS
from flexmtl.fusion.masks import (
    _code_bits,
    bitwise_drop,
    clear_dropped_,
    half_bits,
    keep_masks,
    keep_probability,
)
from flexmtl.fusion.orderings import _dense_activation, per_task_pays_off
from flexmtl.fusion.planning import StackedLayers, stack_pays_off

__all__ = ["RunStack", "RunsDenseSoftOrder", "runs_batch_reason"]


def _stacked(core) -> StackedLayers | None:
    return core._fusion_plan().stacked


def _modules_reason(modules: Iterable[nn.Module], what: str) -> str | None:
    for module in modules:
        if dense_parts(module) is None and any(True for _ in module.parameters()):
            return (f"a task {what} ({type(module).__name__}) is neither a dense "
                    "[Flatten ->] Linear [-> ReLU] layer nor free of parameters")
    return None


def runs_batch_reason(models: Sequence[nn.Module], batch_sizes: Sequence[int]) -> str | None:
    """Why ``models`` (one per run; ``batch_sizes`` the per-task batch sizes, equal in every
    run) cannot train as one :class:`RunStack`, or None when they can."""
    from flexmtl.models import MultiTaskModel
    from flexmtl.sharing.ordering import (
        ParallelOrdering,
        PermutedOrdering,
        SingleTaskCore,
        SoftOrdering,
    )

    if not models:
        return "no runs"
    if min(batch_sizes, default=2) < 2:  # (see _products)
        return "a task's batches have one example"
    if not all(type(m) is MultiTaskModel and m.fused for m in models):
        return "only fused flexmtl MultiTaskModels batch"
    if global_hooks() or any(has_hooks(module) for m in models for module in m.modules()):
        return "a module has hooks (the batch would not call them)"
    kinds = {type(m.core) for m in models}
    if len(kinds) != 1:
        return "the runs' cores are of different classes"
    kind = kinds.pop()
    if kind not in (ParallelOrdering, PermutedOrdering, SingleTaskCore, SoftOrdering):
        return f"the core {kind.__name__} has no batched path (the orderings have)"
    runs = cast("Sequence[Any]", models)  # MultiTaskModels (checked above)
    first = runs[0]
    names = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in first.named_parameters()]
    for m in runs:
        core = m.core
        if not core.fused:
            return "a core is built with fused=False"
        stacked = _stacked(core)
        if stacked is None or _dense_activation(stacked) is None:
            return "the shared blocks are not dense Linear [-> ReLU] layers"
        if min(stacked.layers[0].weight.shape) < 2:  # (see _products)
            return "the shared blocks have a width of 1"
        if (core.num_tasks, core.depth, core.num_layers, core.dropout.p) != (
                first.core.num_tasks, first.core.depth, first.core.num_layers,
                first.core.dropout.p):
            return "the runs' cores differ in shape or dropout"
        if kind is SoftOrdering and core.gate != first.core.gate:
            return "the runs' soft orderings use different gates"
        if [(n, tuple(p.shape), p.dtype, p.requires_grad)
                for n, p in m.named_parameters()] != names:
            return "the runs' models have different parameters"
        reason = (_modules_reason(m.encoders, "encoder")
                  or _modules_reason(m.decoders, "decoder"))
        if reason:
            return reason
    if len({p.dtype for p in first.parameters()}) != 1:
        return "the model's parameters have several dtypes"
    if kind in (PermutedOrdering, SingleTaskCore):
        # the run alone: one batched product (and one mask) over the tasks side by side
        hs = [torch.empty(b, 0) for b in batch_sizes]
        if len(set(batch_sizes)) != 1 or not per_task_pays_off(_stacked(first.core), hs):
            return ("the tasks' batch sizes differ (or their layers are too large to stack), "
                    "so a run alone draws its masks otherwise")
    return None


class _Heads:
    """The encoders (or decoders) of the tasks, run for all runs at once: the tasks whose
    dense modules are alike (:func:`~flexmtl.fusion.dense.stacked_groups`' rule) are one
    group, one product over every run and task (``[R*G, B, in]``); a module of its own is
    one product over the runs (``[R, B, in]``); a parameter-free module runs on the rows of
    all runs at once. ``shapes``: each task's per-example input shape; ``batch_sizes``: its
    batch size."""

    def __init__(self, modules: Sequence[nn.Module], shapes: Sequence[tuple],
                 batch_sizes: Sequence[int], dtype: torch.dtype):
        self.modules = list(modules)
        keys: dict[tuple, list[int]] = {}
        for t, module in enumerate(self.modules):
            x = torch.empty(batch_sizes[t], *shapes[t], dtype=dtype)
            key = dense_signature(dense_parts(module), x)
            if key is not None and len(self.modules) >= 2:
                keys.setdefault(key, []).append(t)
        stacked = [tasks for tasks in keys.values() if len(tasks) >= 2
                   and stack_pays_off(cast("tuple", dense_parts(self.modules[tasks[0]]))[1]
                                      .weight, len(tasks))]
        grouped = {t for tasks in stacked for t in tasks}
        #: groups of tasks: (tasks, stacked), one product for all runs when stacked
        self.groups = [(tasks, True) for tasks in stacked] + [
            ([t], False) for t in range(len(self.modules)) if t not in grouped]
        self._parts = [dense_parts(module) for module in self.modules]

    def forward(self, leaves: dict[str, torch.Tensor], prefix: str, names: dict[int, str],
                xs: list[torch.Tensor], given: Collection[int] = ()) -> list[torch.Tensor]:
        """``xs[t]`` ``[R, B_t, *shape]`` -> the modules' outputs ``[R, B_t, *out]``, the
        parameters the stack's leaves (``names``: a parameter's id -> its leaf key); the
        tasks in ``given`` pass through (their ``xs`` are the modules' outputs already)."""
        outs: list[torch.Tensor | None] = [xs[t] if t in given else None
                                           for t in range(len(xs))]
        for tasks, stacked in self.groups:
            tasks = [t for t in tasks if t not in given]
            if not tasks:
                continue
            module = self.modules[tasks[0]]
            parts = self._parts[tasks[0]]
            runs = xs[tasks[0]].shape[0]
            if parts is None:  # parameter-free: all runs' rows at once
                x = xs[tasks[0]]
                outs[tasks[0]] = module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
                continue
            flatten, _, tail = parts
            layers = [cast("tuple", self._parts[t])[1] for t in tasks]
            w = [leaves[names[id(m.weight)]] for m in layers]  # each [R, out, in]
            b = None if layers[0].bias is None else [leaves[names[id(m.bias)]] for m in layers]
            if stacked:  # [R*G, B, in]: the run alone's batched product, for every run
                x = torch.stack([xs[t] for t in tasks], 1)
                x = (x.flatten(3) if flatten else x).flatten(0, 1)
                wt = torch.stack(w, 1).flatten(0, 1).transpose(1, 2)
                y = _products(x, wt, None if b is None else torch.stack(b, 1).flatten(0, 1))
                y = y.relu_() if tail else y
                for i, part in enumerate(y.unflatten(0, (runs, len(tasks))).unbind(1)):
                    outs[tasks[i]] = part
                continue
            x = xs[tasks[0]]  # one module: one product over the runs
            x = x.flatten(2) if flatten else x
            wt = w[0].transpose(1, 2)
            y = _products(x, wt, None if b is None else b[0])
            outs[tasks[0]] = torch.relu(y) if tail else y
        return cast("list[torch.Tensor]", outs)


class RunStack:
    """The parameters of R runs' models (:func:`runs_batch_reason` None) stacked along a
    run dimension, as leaf tensors (:attr:`leaves`; those of frozen parameters without
    gradient), and their batched training forward (:meth:`forward`).

    The models keep their own parameters: the stack starts from their values (a resumed
    run's included) and :meth:`to_models` writes the stack's values back into them (before
    a run evaluates or checkpoints). ``batch_sizes``, ``shapes``: each task's batch size
    and per-example input shape (equal in every run).
    """

    def __init__(self, models: Sequence[nn.Module], batch_sizes: Sequence[int],
                 shapes: Sequence[Sequence[int]]):
        self.models = list(models)
        self.runs = len(self.models)
        first: Any = self.models[0]  # a MultiTaskModel (runs_batch_reason)
        dtype = next(first.parameters()).dtype
        inputs = [tuple(shape) for shape in shapes]
        self.encoders = _Heads(list(first.encoders), inputs, batch_sizes, dtype)
        self.decoders = _Heads(list(first.decoders), [tuple(first.core.output_shape)] *
                               len(inputs), batch_sizes, dtype)
        stacked = _stacked(first.core)
        assert stacked is not None  # runs_batch_reason
        # leaf key -> per-run member parameter names (a leaf [R, G, ...] has G members;
        # a leaf of one parameter [R, ...] has the name alone, as a str)
        names = {id(p): n for n, p in first.named_parameters()}
        self.members: dict[str, str | list[str]] = {}
        self.members["core.weight"] = [names[id(m.weight)] for m in stacked.layers]
        if stacked.layers[0].bias is not None:
            self.members["core.bias"] = [names[id(cast(torch.Tensor, m.bias))]
                                         for m in stacked.layers]
        grouped = {n for m in self.members.values() for n in m}
        for name, _ in first.named_parameters():
            if name not in grouped:
                self.members[name] = name
        self._params = [dict(m.named_parameters()) for m in self.models]
        #: a parameter of the first model (by id) -> its leaf key, for the heads
        self._names = {id(p): n for n, p in first.named_parameters()}
        self.leaves: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, member in self.members.items():
                leaf = torch.stack([self._gather(r, member) for r in range(self.runs)])
                trainable = self._params[0][member if isinstance(member, str)
                                            else member[0]].requires_grad
                self.leaves[key] = leaf.requires_grad_(trainable)

    def _gather(self, run: int, member: str | list[str]) -> torch.Tensor:
        params = self._params[run]
        if isinstance(member, str):
            return params[member].detach().clone()
        return torch.stack([params[n].detach() for n in member])

    def _members(self, key: str) -> list[tuple[str, tuple]]:
        """``(parameter name, index into leaf[r])`` of the leaf's members."""
        member = self.members[key]
        if isinstance(member, str):
            return [(member, ())]
        return [(n, (j,)) for j, n in enumerate(member)]

    @torch.no_grad()
    def to_models(self, runs: Iterable[int] | None = None) -> None:
        """Write the stack's values into the models' own parameters."""
        for r in range(self.runs) if runs is None else runs:
            for key, leaf in self.leaves.items():
                for name, at in self._members(key):
                    self._params[r][name].copy_(leaf[(r,) + at])

    def trainable(self) -> dict[str, torch.Tensor]:
        """The leaves the optimiser trains (those of frozen parameters left out)."""
        return {k: v for k, v in self.leaves.items() if v.requires_grad}

    def member_names(self, key: str) -> list[str]:
        return [name for name, _ in self._members(key)]

    def views(self, tensor: torch.Tensor, key: str) -> list[torch.Tensor]:
        """``tensor`` (shaped like the leaf ``key``: the leaf, its gradient or a state)
        as one view per (run, member), run-major: each of its member parameter's shape."""
        if isinstance(self.members[key], str):
            return list(tensor.unbind(0))
        return list(tensor.flatten(0, 1).unbind(0))

    # ------------------------------------------------------------------ the forward
    def fixed_encoders(self) -> list[int]:
        """The tasks whose encoder is a dense layer with every parameter frozen: a fixed
        function of the input, which :meth:`encode` can apply to a whole data set once."""
        return [t for t, parts in enumerate(self.encoders._parts)
                if parts is not None and not any(
                    p.requires_grad for p in self.encoders.modules[t].parameters())]

    @torch.no_grad()
    def encode(self, task: int, run: int, x: torch.Tensor) -> torch.Tensor:
        """Run ``run``'s encoder of ``task`` (one of :meth:`fixed_encoders`) on the rows of
        ``x`` ``[N, *shape]`` -> ``[N, *out]``, by the stack's own product for one run (the
        same values whatever the number of runs)."""
        flatten, layer, tail = cast("tuple", self.encoders._parts[task])
        w = self.leaves[self._names[id(layer.weight)]][run : run + 1]
        b = (None if layer.bias is None
             else self.leaves[self._names[id(layer.bias)]][run : run + 1])
        y = _products((x.flatten(1) if flatten else x).unsqueeze(0), w.transpose(1, 2), b)[0]
        return y.relu_() if tail else y

    def forward(self, xs: Sequence[torch.Tensor],
                streams: Sequence[torch.Generator | None],
                encoded: Collection[int] = ()) -> list[torch.Tensor]:
        """A joint training step of every task of every run in one pass: ``xs[t]``
        ``[R, B_t, *shape]`` (task ``t``'s batch of each run) -> ``[R, B_t, *out]``, row
        ``r`` equal to ``models[r](xs[t][r], t)``. Run ``r`` draws its dropout masks from
        ``streams[r]`` (None: torch's default generator). For the tasks in ``encoded``,
        ``xs[t]`` is the encoder's output already (:meth:`encode`)."""
        hs = self.encoders.forward(self.leaves, "encoders.", self._names, list(xs), encoded)
        counts = [h.shape[1] for h in hs]
        h = _core_runs([m.core for m in self.models], self.leaves, torch.cat(hs, 1), counts,
                       list(streams))
        return self.decoders.forward(self.leaves, "decoders.", self._names,
                                     list(h.split(counts, 1)))


def _core_runs(cores: list, leaves: dict[str, torch.Tensor], h: torch.Tensor,
               counts: list[int], streams: list[torch.Generator | None]) -> torch.Tensor:
    """The cores of the runs on ``h`` ``[R, N, d]`` (the tasks' rows side by side), with
    the stack's parameters (the cores give the structure: blocks, gate, orders)."""
    from flexmtl.sharing.ordering import SoftOrdering

    core = cores[0]
    stacked = _stacked(core)
    assert stacked is not None
    phi = _dense_activation(stacked)
    p = core.dropout.p if core.dropout.training else 0.0
    rescale = 1.0 / keep_probability(p, h.device) if p else 1.0
    runs, n, _ = h.shape
    weights, biases = leaves["core.weight"], leaves.get("core.bias")  # [R, K, out, in]
    tasks = len(counts)
    if isinstance(core, SoftOrdering):
        logits = leaves["core.scale_logits"]  # [R, T, L, D]
        scales = (torch.softmax(logits, dim=-2) if core.gate == "softmax"
                  else torch.sigmoid(logits))
        rows = torch.repeat_interleave(torch.arange(tasks, device=h.device),
                                       torch.tensor(counts, device=h.device), output_size=n)
        return RunsDenseSoftOrder.apply(
            h, weights.flatten(1, 2), None if biases is None else biases.flatten(1, 2),
            scales, rows, rescale, phi == "relu", p, streams)
    # hard orderings: the block of each task at each depth, per run (permutations differ)
    orders = [[_hard_order(c, t) for t in range(tasks)] for c in cores]
    blocks = weights.shape[1]
    shapes: list[tuple[int, int] | None] = []
    index: list[list[int]] = []
    for k in range(len(orders[0][0])):
        at = [[order[k] for order in run] for run in orders]
        if all(len(set(run)) == 1 for run in at):  # one block per run: [R, N, d]
            shapes.append(None)
            index.append([r * blocks + run[0] for r, run in enumerate(at)])
        else:  # each task its own block: [R*T, B, d] (equal batch sizes)
            shapes.append((runs * tasks, counts[0]))
            index.append([r * blocks + j for r, run in enumerate(at) for j in run])
    picks = [torch.tensor(i, device=h.device) for i in index]
    ws = _GatherBlocks.apply(weights, picks)
    bs = (None,) * len(picks) if biases is None else _GatherBlocks.apply(biases, picks)
    for shape, w, b in zip(shapes, ws, bs):
        # one block per run on all its rows ([R, N, d]), or each task its own ([R*T, B, d])
        x = h if shape is None else h.reshape(*shape, -1)
        wt = w.transpose(1, 2)
        y = _products(x, wt, b)
        if phi == "relu":
            y = torch.relu(y)
        h = y.reshape(runs, n, -1)
        if p:
            h = h * keep_masks(tuple(h.shape[1:]), p, streams, h.dtype).mul_(rescale)
    return h


def _products(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """``x @ wt (+ bias)``: ``[M, B, K] @ [M, K, N] (+ [M, N])`` as one ``bmm``, each matrix's
    product the same whatever ``M``. ``bmm`` rounds a product with an output or inner
    dimension of 1 differently by the number of matrices, so an ``N`` or ``K`` of 1 is
    padded with zeros to 2 (the rows ``B`` are at least 2: :func:`runs_batch_reason`)."""
    n = wt.shape[-1]
    if wt.shape[-2] == 1:
        x, wt = F.pad(x, (0, 1)), F.pad(wt, (0, 0, 0, 1))
    if n == 1:
        wt = F.pad(wt, (0, 1))
        bias = None if bias is None else F.pad(bias, (0, 1))
    y = torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)
    return y if n != 1 else y[..., :1]


class _GatherBlocks(torch.autograd.Function):
    """``[params.flatten(0, 1)[i] for i in index]``: each depth's blocks, gathered from a
    leaf ``[R, K, ...]`` by flat indices ``r * K + block``. The backward sums the gradients
    of a block used several times in the order a run alone's autograd does (the last depth
    first, tasks in order, one after the other), so that the sum rounds alike."""

    @staticmethod
    def forward(ctx, params, index):
        ctx.shape, ctx.index = params.shape, index
        flat = params.flatten(0, 1)
        return tuple(flat.index_select(0, i) for i in index)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        shape = ctx.shape
        out = grads[0].new_zeros(shape[0] * shape[1], *shape[2:])
        for i, g in zip(reversed(ctx.index), reversed(grads)):
            if g is not None:
                out.index_add_(0, i, g)
        return out.view(shape), None


def _hard_order(core, task: int) -> list[int]:
    """The index (in ``core._all_blocks()``) of the block ``task`` applies at each depth."""
    from flexmtl.sharing.ordering import SingleTaskCore

    if isinstance(core, SingleTaskCore):
        depth = core.num_layers
        return [task * depth + k for k in range(depth)]
    return core.layer_order(task)


class RunsDenseSoftOrder(torch.autograd.Function):
    """:class:`~flexmtl.fusion.kernels.DenseSoftOrder` for R runs at once: the same forward
    and backward with a leading run dimension (``bmm`` where it has ``mm``), and each run's
    masks drawn from its own stream exactly as its run alone draws them.

    Inputs: ``h`` ``[R, N, d]``; ``weight`` ``[R, L*d, d]``; ``bias`` ``[R, L*d]`` or None;
    ``scales`` ``[R, T, L, D]``; ``rows`` ``[N]`` (the task of each row, the same in every
    run); ``rescale``, ``relu``, ``p`` as there; ``streams`` one generator (or None) per run.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, task_scales, rows, rescale, relu, p, streams):
        # each row's scales, [D, R, N, L]
        scales = task_scales.index_select(1, rows).permute(3, 0, 1, 2).contiguous()
        scales.mul_(rescale)
        runs, n = h.shape[0], h.shape[1]
        depth, layers, width = scales.shape[0], scales.shape[3], weight.shape[1]
        size = depth * n * width
        bits = (torch.stack([half_bits(size, g).view(depth, n, width) for g in streams], 1)
                if relu and bitwise_drop(h, p) and n * width % 64 == 0
                and size <= _ALL_DEPTH_BITS else None)  # [D, R, N, L*d]
        # otherwise each run's masks of all depths in one draw from its stream, when few and
        # each depth takes whole 64-bit words (the stream of one draw per depth, as alone)
        every = (keep_masks((depth, n, width), p, streams, h.dtype)
                 if p and bits is None and size <= _ALL_DEPTH_BITS
                 and n * width * _code_bits(p) % 64 == 0 else None)  # [R, D, ...]
        inputs, acts, masks = [], [], []
        for k, s in enumerate(scales):
            z = _products(h, weight.transpose(1, 2), bias)
            if relu:
                z.relu_()
            if bits is not None:
                clear_dropped_(z, bits[k])
            elif p:
                kept = (every[:, k] if every is not None
                        else keep_masks((n, width), p, streams, h.dtype))
                z.mul_(kept)
                if not relu:  # (with ReLU, A > 0 says where dropout kept)
                    masks.append(kept)
            a = z.view(runs, n, layers, -1)
            inputs.append(h)
            acts.append(a)
            h = a[:, :, 0] * s[:, :, :1]
            for j in range(1, layers):
                h.addcmul_(a[:, :, j], s[:, :, j : j + 1])
        ctx.relu, ctx.rescale, ctx.num_tasks = relu, rescale, task_scales.shape[1]
        ctx.save_for_backward(weight, bias, scales, rows, *inputs, *acts, *masks)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, bias, scales, rows, *saved = ctx.saved_tensors
        depth, runs, n, layers = scales.shape
        inputs, acts, masks = saved[:depth], saved[depth : 2 * depth], saved[2 * depth :]
        need_h, need_w, need_b, need_s = ctx.needs_input_grad[:4]
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        grad_s = torch.empty_like(scales) if need_s else None
        dz = torch.empty_like(acts[0])
        for k in reversed(range(depth)):
            a = acts[k]
            if grad_s is not None:
                # <A_j, dy> per row: a sum over each row's own d elements (a bmm with an
                # output column of 1 rounds by the number of rows, and is slower)
                torch.sum(torch.mul(a, grad.view(runs, n, 1, -1)), -1, out=grad_s[k])
            torch.mul(grad.unsqueeze(2), scales[k].unsqueeze(-1), out=dz)
            if ctx.relu:
                dz_k = torch.ops.aten.threshold_backward(dz, a, 0)
            else:
                dz_k = dz.mul_(masks[k].view_as(dz)) if masks else dz
            dz_k = dz_k.view(runs, n, -1)
            if grad_w is not None:
                grad_w.baddbmm_(dz_k.transpose(1, 2), inputs[k])
            if grad_b is not None:
                grad_b.add_(dz_k.sum(1))
            if k or need_h:
                grad = torch.bmm(dz_k, weight)
        if grad_s is not None:  # back to [R, T, L, D]: sum the rows of each task, per run
            per_row = grad_s.permute(1, 2, 3, 0)  # [R, N, L, D]
            grad_s = scales.new_zeros(runs, ctx.num_tasks, layers, depth)
            grad_s.index_add_(1, rows, per_row, alpha=ctx.rescale)
        return ((grad if need_h else None), grad_w, grad_b, grad_s, None, None, None, None,
                None)
