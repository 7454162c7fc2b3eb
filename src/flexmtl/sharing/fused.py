"""Fused multi-task execution of the shared-layer orderings (soft ordering paper, Sec. 3).

The reference cores in :mod:`flexmtl.sharing.ordering` run ``core(h, task)`` one task at a
time: soft ordering (Eq. 7) then launches T x D x L small operations per training step,
and on small layers the interpreter and kernel-launch overhead dominate. The functions
here run ALL tasks of a step through each depth together; the cores call them from
``forward_tasks(hs, tasks)``. How much can be fused depends on the blocks:

* **stacked** -- every block is one ``nn.Linear`` or ``nn.Conv{1,2,3}d`` (groups 1, zero
  padding) followed by parameter-free modules that act on each example alone (ReLU,
  pooling, ...), all of the same structure. The layers' weights are read from the blocks
  at every call and stacked (``torch.stack`` is differentiable, so ``state_dict``,
  optimisers and the reference path are untouched):

  - soft ordering: the L layers of a depth are ONE matrix product ``H @ [W_1 .. W_L]^T``
    (one convolution with ``L x C`` output channels) over the rows of all tasks, then the
    per-row mix of Eq. 7. Dense ReLU or linear blocks (every soft-ordering experiment of
    the paper) run all depths in one autograd node with a hand-written backward
    (:class:`_DenseSoftOrder`): on CPU the step is bound by passes over the ``[N, L*d]``
    activations, not by the products;
  - permuted ordering / single task: each task's own layer at a depth is one batched
    matrix product over tasks (one grouped convolution with ``groups=T``), when
    :func:`per_task_pays_off`; otherwise each block runs on the rows that use it.

* **rows** -- the blocks act on each example alone (built-in torch layers, or classes
  declared with :func:`register_per_example`): the tasks' rows are concatenated and each
  block is called once per depth on all the rows that use it (L calls per depth for soft
  ordering instead of T x L). Parallel ordering (Eq. 2) always works this way.

* anything else (e.g. batch norm in training mode, or an unknown ``nn.Module`` subclass)
  falls back to the per-task loop; the core warns once, naming the block type.

Dropout keeps the reference semantics -- an independent mask for every element of every
shared layer's output, applied before the soft-order scaling -- but on CPU draws each
element's mask from 1 (``p = 0.5``), 8 or 16 random bits (:func:`keep_mask`):
``bernoulli_`` is several times slower there. In training the fused path therefore draws
other masks than the reference; in evaluation both are deterministic and equal up to float
rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.utils.rnn import pad_sequence

__all__ = [
    "BlockPlan",
    "has_hooks",
    "any_hooks",
    "global_hooks",
    "StackedLayers",
    "plan_blocks",
    "blocks_state",
    "register_per_example",
    "keep_mask",
    "keep_probability",
    "drop_",
    "dropout",
    "parallel_tasks",
    "soft_tasks",
    "grouped_rows_tasks",
    "per_task_layers",
    "per_task_pays_off",
]


def _torch_classes(module, exclude: Sequence[str] = ()) -> tuple[type, ...]:
    return tuple(getattr(module, name) for name in module.__all__ if name not in exclude)


#: module classes whose forward acts on every example of a batch independently
_PER_EXAMPLE: set[type[nn.Module]] = {
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle,
    *_torch_classes(nn.modules.activation, exclude=("MultiheadAttention",)),
    *_torch_classes(nn.modules.pooling),
    *_torch_classes(nn.modules.padding),
    *_torch_classes(nn.modules.dropout),
}
#: layers whose weights can be stacked, and the functional form of each
_STACKABLE = {nn.Linear: F.linear, nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d,
              nn.Conv3d: F.conv3d}


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) has forward or backward hooks: a fused
    path that skips its ``forward`` would skip them."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def any_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or any of its submodules has hooks (:func:`has_hooks`)."""
    return any(map(has_hooks, module.modules()))


def global_hooks() -> bool:
    """Whether forward or backward hooks are registered for every module
    (``register_module_forward_hook``, ``register_module_full_backward_hook``, ...)."""
    module = nn.modules.module
    return bool(module._global_forward_hooks or module._global_forward_pre_hooks
                or module._global_backward_hooks or module._global_backward_pre_hooks)


def register_per_example(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare that ``cls`` (and subclasses that keep its ``forward``) acts on every
    example of a batch independently, so that blocks containing it can run the rows of
    all tasks in one call. Usable as a class decorator."""
    _PER_EXAMPLE.add(cls)
    return cls


def _known(module: nn.Module, classes: Collection[type]) -> type | None:
    """The class of ``classes`` that ``module`` is, without an overridden ``forward``."""
    for cls in type(module).__mro__:
        if cls in classes:
            return cls if type(module).forward is cls.forward else None
    return None


def _mixing_reason(module: nn.Module, ndim: int) -> str | None:
    """Why ``module`` may mix the examples of a batch of ``ndim``-D inputs; None if not."""
    if type(module) is nn.Sequential:
        return next(filter(None, (_mixing_reason(m, ndim) for m in module)), None)
    name = type(module).__name__
    if isinstance(module, _BatchNorm):  # per example only with running statistics
        if module.training or module.running_mean is None:
            return f"{name} normalises with batch statistics in training mode"
        return None
    if isinstance(module, _InstanceNorm) and module.training and module.track_running_stats:
        return f"{name} updates running statistics over the batch"
    if _known(module, _PER_EXAMPLE) is None:
        return (f"{name} is not known to act on each example independently (declare it "
                "with flexmtl.sharing.fused.register_per_example)")
    if isinstance(module, nn.Softmax2d) and ndim != 4:
        return f"{name} acts along dimension -3, which is the batch for {ndim}-D inputs"
    for attr in ("dim", "start_dim"):  # e.g. Softmax(dim=0), Flatten(0) mix the batch
        if hasattr(module, attr):
            dim = getattr(module, attr)
            if not isinstance(dim, int) or dim in (0, -ndim):
                return f"{name} acts along dimension {dim}, which may be the batch"
    return None


@dataclass(frozen=True)
class StackedLayers:
    """Blocks ``W_j`` = one dense/conv layer + a parameter-free tail ``phi``, all alike.

    ``layers`` holds each block's layer (weights read live); ``tail`` is the first block's
    tail, applied to all (the blocks' tails are equal, parameter-free modules).
    """

    layers: tuple[nn.Module, ...]
    tail: tuple[nn.Module, ...]

    @property
    def _first(self) -> nn.Module:
        return self.layers[0]

    def _layer_fn(self) -> Callable:
        return _STACKABLE[_known(self._first, _STACKABLE)]

    def weight(self, index: Sequence[int] | None = None) -> torch.Tensor:
        """Weights of the layers stacked, ``[len(index), out, in, *kernel]``."""
        layers = self.layers if index is None else [self.layers[i] for i in index]
        return torch.stack([layer.weight for layer in layers])

    def bias(self, index: Sequence[int] | None = None) -> torch.Tensor | None:
        if self._first.bias is None:
            return None
        layers = self.layers if index is None else [self.layers[i] for i in index]
        return torch.stack([layer.bias for layer in layers])

    def _conv_args(self) -> dict:
        c = self._first
        return {"stride": c.stride, "padding": c.padding, "dilation": c.dilation}

    def _apply_tail(self, y: torch.Tensor) -> torch.Tensor:
        for module in self.tail:
            y = module(y)
        return y

    def all_layers(self, h: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
        """``phi(W_j h)`` for every layer j, ``[N, L, *feature]``: ONE product with the
        concatenated weights (``[L*out, in, ...]``, from :meth:`weight` reshaped)."""
        n, num = h.shape[0], weight.shape[0] // self._first.weight.shape[0]
        if isinstance(self._first, _ConvNd):
            y = self._layer_fn()(h, weight, bias, **self._conv_args())
        else:
            y = F.linear(h, weight, bias)
        y = self._apply_tail(y.reshape(n * num, -1, *y.shape[2:]))  # one example per row
        return y.reshape(n, num, *y.shape[1:])

    def per_task(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        """Each task's own layer on its rows: ``weight`` ``[T, out, in, ...]``.

        Dense: ``x`` is ``[T, B, in]`` (one batched matrix product). Conv: ``x`` is
        ``[B, T*C, *spatial]`` (one convolution with ``groups=T``). Same layout out.
        """
        num = weight.shape[0]
        if isinstance(self._first, _ConvNd):
            b = None if bias is None else bias.reshape(-1)
            y = self._layer_fn()(x, weight.reshape(-1, *weight.shape[2:]), b,
                                 groups=num, **self._conv_args())
            rows = y.shape[0]
            y = self._apply_tail(y.reshape(rows * num, -1, *y.shape[2:]))
            return y.reshape(rows, num * y.shape[1], *y.shape[2:])
        w = weight.transpose(1, 2)
        y = torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)
        return self._apply_tail(y.reshape(-1, y.shape[-1])).reshape(num, x.shape[1], -1)


@dataclass(frozen=True)
class BlockPlan:
    """How a list of blocks can run for many tasks at once (see the module docstring).

    ``stacked`` is set when the blocks' weights can be stacked; ``reason`` (with the
    offending ``block_type``) is set when the rows of several tasks cannot share a call.
    """

    stacked: StackedLayers | None
    reason: str | None = None
    block_type: str = ""

    @property
    def per_example(self) -> bool:
        return self.reason is None


def _split_block(block: nn.Module, ndim: int) -> tuple[nn.Module, tuple[nn.Module, ...]] | None:
    """``(layer, tail)`` when ``block`` is a stackable layer (+ parameter-free tail)."""
    parts = list(block) if type(block) is nn.Sequential else [block]
    if not parts or _known(parts[0], _STACKABLE) is None or any_hooks(block):
        return None
    layer, tail = parts[0], tuple(parts[1:])
    if isinstance(layer, _ConvNd):
        if layer.groups != 1 or layer.padding_mode != "zeros" or ndim != layer.weight.ndim:
            return None
    elif ndim != 2:  # dense layers on vectors only: [N, d]
        return None
    for module in tail:
        if (any(True for _ in module.parameters()) or any(True for _ in module.buffers())
                or _mixing_reason(module, ndim) is not None):
            return None
    return layer, tail


def _signature(layer: nn.Module, tail: tuple[nn.Module, ...]) -> tuple:
    w = layer.weight
    conv = (layer.stride, layer.padding, layer.dilation) if isinstance(layer, _ConvNd) else ()
    return (_known(layer, _STACKABLE), w.shape, w.dtype, w.device, layer.bias is None,
            conv, tuple((type(m), m.extra_repr(), m.training) for m in tail))


def blocks_state(blocks: Sequence[nn.Module]) -> tuple:
    """What :func:`plan_blocks` depends on beyond the blocks' classes: identity, training
    mode and hooks of every module (a cheap key to cache plans by; it is computed at every
    fused call, so it walks ``_modules`` directly instead of ``Module.modules()``). The key
    holds the modules themselves: they compare by identity and stay alive while cached."""
    return (global_hooks(),
            *[(m, m.training, has_hooks(m)) for m in _all_modules(blocks, [], set())])


def _all_modules(modules: Iterable[nn.Module | None], out: list[nn.Module],
                 seen: set[int]) -> list[nn.Module]:
    """``modules`` and all their submodules, depth first, each once (as
    ``Module.modules()``), appended to ``out``."""
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
            if m._modules:
                _all_modules(m._modules.values(), out, seen)
    return out


def plan_blocks(blocks: Sequence[nn.Module], feature_shape: Sequence[int]) -> BlockPlan:
    """Decide how ``blocks`` (acting on per-example ``feature_shape``) can be fused."""
    ndim = len(feature_shape) + 1
    for block in blocks:
        reason = _mixing_reason(block, ndim)
        if reason is not None:
            return BlockPlan(None, reason, type(block).__name__)
    if global_hooks():
        return BlockPlan(None)
    parts = [_split_block(b, ndim) for b in blocks]
    if any(p is None for p in parts) or len({_signature(*p) for p in parts}) != 1:
        return BlockPlan(None)
    return BlockPlan(StackedLayers(tuple(p[0] for p in parts), parts[0][1]))


# ---------------------------------------------------------------------- dropout


def _code_bits(p: float) -> int:
    if p == 0.5:
        return 1
    return 8 if float(p * 256).is_integer() else 16


def keep_probability(p: float, device: torch.device) -> float:
    """The exact keep probability of :func:`keep_mask` for drop probability ``p``."""
    if device.type != "cpu":
        return 1.0 - p
    levels = 2 ** _code_bits(p)
    return min(max(round((1.0 - p) * levels), 1), levels) / levels


def _random_words(count: int) -> torch.Tensor:
    """``count`` uniformly random int64 words from torch's default CPU generator."""
    return torch.empty(count, dtype=torch.int64).random_(-(2**63), None)


#: left shifts that move bit j of an int32 word into the sign bit, j = 0..31
_SIGN_SHIFTS = 31 - torch.arange(32, dtype=torch.int32)
#: integer dtype of each float dtype's size, for the bitwise mask of :func:`drop_`
_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float64: torch.int64,
                  torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _half_bits(n: int) -> torch.Tensor:
    """``[n]`` int32: 0 or -1 (all bits set) with probability 1/2 each, independently: one
    random bit per element, spread by an arithmetic shift (``(w << (31 - j)) >> 31``)."""
    words = _random_words(-(-n // 64)).view(torch.int32)
    bits = torch.bitwise_left_shift(words.unsqueeze(1), _SIGN_SHIFTS).bitwise_right_shift_(31)
    return bits.view(-1)[:n]


def keep_mask(x: torch.Tensor, p: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """A float mask like ``x``: 1 (keep) or 0 (drop), independently for every element
    (written into ``out`` when given).

    On CPU each element gets one random bit for ``p = 0.5``, 8 when ``p`` is another
    multiple of 2**-8, else 16, so the keep probability is ``1 - p`` rounded to a multiple
    of 2**-16 (see :func:`keep_probability`). The bits come 64, eight or four per 64-bit
    draw and become the mask by arithmetic only: ``bernoulli_``, comparisons and boolean
    masks are all several times slower on CPU.
    """
    out = torch.empty_like(x) if out is None else out
    if x.device.type != "cpu":
        return out.copy_(torch.rand_like(out) >= p)
    bits = _code_bits(p)
    n = x.numel()
    if bits == 1:  # -1 / 0 -> 1 / 0
        return out.copy_(_half_bits(n).view(x.shape)).abs_()
    half, keep = 2 ** (bits - 1), round(keep_probability(p, x.device) * 2**bits)
    words = _random_words(-(-n * bits // 64))
    codes = words.view(torch.int8 if bits == 8 else torch.int16)[:n].view(x.shape)
    # codes are uniform integers in [-half, half): keep the top ``keep`` of them
    exact = out.dtype in (torch.float32, torch.float64)  # integers up to 2**16 are exact
    work = out if exact else torch.empty(out.shape, dtype=torch.float32)
    work.copy_(codes).add_(keep - half + 1).clamp_(0.0, 1.0)
    return out if exact else out.copy_(work)


def _bitwise_drop(x: torch.Tensor, p: float) -> bool:
    """Whether :func:`drop_` clears ``x``'s dropped elements with a bitwise AND."""
    return p == 0.5 and x.device.type == "cpu" and x.dtype in _SAME_SIZE_INT


def drop_(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x *= keep_mask(x, p)`` in place (no rescaling); returns ``x``.

    For ``p = 0.5`` on CPU, when autograd does not track ``x``, the dropped elements' bits
    are cleared with one bitwise AND of a 0 / all-ones integer mask (:func:`_half_bits`):
    no float mask is made, and a dropped NaN or infinity becomes 0 (``x * 0`` would keep
    it NaN). Tracked tensors are multiplied, so that their gradient sees the mask.
    """
    tracked = torch.is_grad_enabled() and x.requires_grad
    if _bitwise_drop(x, p) and x.is_contiguous() and not tracked:
        return _clear_dropped_(x, _half_bits(x.numel()).view(x.shape))
    return x.mul_(keep_mask(x, p))


def _clear_dropped_(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Zero the elements of ``x`` (contiguous, a float dtype of :data:`_SAME_SIZE_INT`)
    where the int32 ``bits`` (:func:`_half_bits`) are 0, in place."""
    kind = _SAME_SIZE_INT[x.dtype]
    x.view(kind).bitwise_and_(bits if kind == torch.int32 else bits.to(kind))
    return x


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout of every element of ``x`` (like ``nn.Dropout``), training only."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(x, p).mul_(1.0 / keep_probability(p, x.device))


# ---------------------------------------------------------------------- orderings


def parallel_tasks(blocks: Sequence[nn.Module], hs: Sequence[torch.Tensor], p: float,
                   training: bool) -> list[torch.Tensor]:
    """Eq. 2: every task applies ``W_1 .. W_D`` in order, so all rows go through each
    block in one call."""
    h = torch.cat(list(hs))
    for block in blocks:
        h = dropout(block(h), p, training)
    return list(h.split([x.shape[0] for x in hs]))


def soft_tasks(plan: BlockPlan, blocks: Sequence[nn.Module], hs: Sequence[torch.Tensor],
               tasks: Sequence[int], scales: torch.Tensor, p: float,
               training: bool) -> list[torch.Tensor]:
    """Eq. 7 for all tasks: ``y_i^k = sum_j s[i, j, k] * drop(phi(W_j y_i^{k-1}))``.

    ``scales`` ``[T, L, D]``; ``hs[i]`` belongs to task ``tasks[i]``. The rows of all
    inputs are concatenated; at each depth all L layers run on all rows in one product
    (stacked blocks) or one call per block, and each row mixes them with its task's scales
    (times ``1 / keep probability``: the dropout rescaling, folded into the scales).
    """
    counts = [x.shape[0] for x in hs]
    h = torch.cat(list(hs))
    p = p if training else 0.0
    rescale = 1.0 / keep_probability(p, h.device) if p else 1.0
    per_row = torch.repeat_interleave(torch.tensor(tasks, device=h.device),
                                      torch.tensor(counts, device=h.device), output_size=len(h))
    stacked = plan.stacked
    phi = _dense_activation(stacked) if stacked is not None else None
    if phi is not None:  # dense ReLU / linear blocks: hand-written forward and backward
        w = torch.cat([layer.weight for layer in stacked.layers])  # [L*d, d]
        b = None if stacked.layers[0].bias is None else torch.cat(
            [layer.bias for layer in stacked.layers])
        h = _DenseSoftOrder.apply(h, w, b, scales, per_row, rescale, phi == "relu", p)
        return list(h.split(counts))
    s = scales.index_select(0, per_row).permute(2, 0, 1).contiguous() * rescale  # [D, N, L]
    if stacked is not None:
        w, b = stacked.weight(), stacked.bias()
        w = w.reshape(-1, *w.shape[2:])  # [L*out, in, ...]: one product for all layers
        b = None if b is None else b.reshape(-1)
        all_layers = lambda x: stacked.all_layers(x, w, b)  # noqa: E731
    else:
        all_layers = lambda x: torch.stack([block(x) for block in blocks], 1)  # noqa: E731
    for s_k in s:
        y = all_layers(h)  # [N, L, ...] (the shape may shrink with depth, e.g. pooling)
        if p:
            y = y * keep_mask(y, p)
        h = (y * s_k.reshape(*s_k.shape, *(1,) * (y.ndim - 2))).sum(1)
    return list(h.split(counts))


def _dense_activation(stacked: StackedLayers) -> str | None:
    """``"relu"`` / ``"linear"`` for dense blocks whose tail is ReLU / nothing, else None."""
    if isinstance(stacked.layers[0], _ConvNd):
        return None
    tail = [m for m in stacked.tail if type(m) is not nn.Identity]
    if not tail:
        return "linear"
    return "relu" if len(tail) == 1 and type(tail[0]) is nn.ReLU else None


#: the most mask elements :class:`_DenseSoftOrder` draws at once for all depths (int32:
#: 16 MiB); more are drawn depth by depth
_ALL_DEPTH_BITS = 2**22


class _DenseSoftOrder(torch.autograd.Function):
    """Eq. 7 at every depth for dense blocks ``phi(W_j y + b_j)``, ``phi`` ReLU or identity.

    Forward, per depth k: ``Z = y W_cat^T + b_cat`` (one GEMM for the L layers), ``A =
    phi(Z) * mask`` (in place), ``y = sum_j s_jk * A_j``. Backward, per depth: ``ds_jk =
    <A_j, dy>``, ``dZ_j = s_jk dy`` where ``A_j > 0`` (ReLU; times the mask if linear),
    ``dW_cat += dZ^T y``, ``dy = dZ W_cat``. Same values as autograd through the same ops,
    without its temporaries: the step is bound by passes over the ``[N, L*d]`` tensors.

    Inputs: ``h`` ``[N, d]``; ``weight`` ``[L*d, d]``; ``bias`` ``[L*d]`` or None;
    ``scales`` ``[T, L, D]``; ``rows`` ``[N]`` the task of each row; ``rescale`` (the
    dropout's ``1 / keep probability``, folded into the scales); ``relu``; ``p`` the drop
    probability (0: no dropout).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, task_scales, rows, rescale, relu, p):
        # each row's scales, [D, N, L]
        scales = task_scales.index_select(0, rows).permute(2, 0, 1).contiguous().mul_(rescale)
        n, layers = h.shape[0], scales.shape[2]
        inputs, acts, masks = [], [], []
        # p = 0.5 with ReLU on the CPU: every depth's bits in one draw when they are few
        # (the same stream as one draw per depth: each depth takes whole 64-bit words)
        size = len(scales) * n * weight.shape[0]
        bits = (_half_bits(size).view(len(scales), n, -1)
                if relu and _bitwise_drop(h, p) and n * weight.shape[0] % 64 == 0
                and size <= _ALL_DEPTH_BITS else None)
        for k, s in enumerate(scales):
            z = F.linear(h, weight, bias)  # [N, L*d]: all layers, one GEMM
            if relu:
                z.relu_()
            if bits is not None:  # no saved mask: A > 0 says where dropout kept
                _clear_dropped_(z, bits[k])
            elif p and relu:
                drop_(z, p)
            elif p:
                kept = keep_mask(z, p)
                z.mul_(kept)
                masks.append(kept)
            a = z.view(n, layers, -1)
            inputs.append(h)
            acts.append(a)
            h = a[:, 0] * s[:, :1]  # Eq. 7 mix, without an [N, L, d] temporary
            for j in range(1, layers):
                h.addcmul_(a[:, j], s[:, j : j + 1])
        ctx.relu, ctx.rescale, ctx.num_tasks = relu, rescale, task_scales.shape[0]
        ctx.save_for_backward(weight, bias, scales, rows, *inputs, *acts, *masks)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, bias, scales, rows, *saved = ctx.saved_tensors
        depth = scales.shape[0]
        inputs, acts, masks = saved[:depth], saved[depth : 2 * depth], saved[2 * depth :]
        need_h, need_w, need_b, need_s = ctx.needs_input_grad[:4]
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        grad_s = torch.empty_like(scales) if need_s else None
        dz = torch.empty_like(acts[0])  # reused at every depth: stays in cache
        for k in reversed(range(depth)):
            a = acts[k]
            if need_s:  # d y / d s_jk = A_j
                torch.bmm(a, grad.unsqueeze(-1), out=grad_s[k].unsqueeze(-1))
            torch.mul(grad.unsqueeze(1), scales[k].unsqueeze(-1), out=dz)
            if ctx.relu:  # A > 0 exactly where ReLU passed and dropout kept
                dz_k = torch.ops.aten.threshold_backward(dz, a, 0)
            else:
                dz_k = dz.mul_(masks[k].view_as(dz)) if masks else dz
            dz_k = dz_k.view(a.shape[0], -1)
            if need_w:
                grad_w.addmm_(dz_k.t(), inputs[k])
            if need_b:
                grad_b.add_(dz_k.sum(0))
            if k or need_h:
                grad = dz_k @ weight
        if need_s:  # back to [T, L, D]: sum the rows of each task
            depth, _, layers = grad_s.shape
            grad_s = scales.new_zeros(ctx.num_tasks, layers, depth).index_add_(
                0, rows, grad_s.permute(1, 2, 0), alpha=ctx.rescale)
        return (grad if need_h else None), grad_w, grad_b, grad_s, None, None, None, None


def grouped_rows_tasks(blocks: Sequence[nn.Module], hs: Sequence[torch.Tensor],
                       orders: Sequence[Sequence[int]], p: float,
                       training: bool) -> list[torch.Tensor]:
    """Hard orderings (Eq. 3): input i applies ``blocks[orders[i][k]]`` at depth k. At each
    depth the rows of the inputs that use the same block are concatenated: one call per
    block used."""
    xs = list(hs)
    for k in range(len(orders[0]) if orders else 0):
        users: dict[int, list[int]] = {}
        for i, order in enumerate(orders):
            users.setdefault(order[k], []).append(i)
        for j, members in users.items():
            x = torch.cat([xs[i] for i in members]) if len(members) > 1 else xs[members[0]]
            y = dropout(blocks[j](x), p, training)
            for i, part in zip(members, y.split([xs[i].shape[0] for i in members])):
                xs[i] = part
    return xs


#: on CPU, per-task stacked weights pay off while one depth's fit in cache (elements)
CPU_STACK_LIMIT = 2**16


def per_task_pays_off(stacked: StackedLayers | None, hs: Sequence[torch.Tensor]) -> bool:
    """Whether :func:`per_task_layers` should run these inputs: the blocks stack, padding
    at most doubles the rows and, on CPU, the per-task weights of a depth are small
    (copying larger ones costs more than the separate products it saves; measured)."""
    if stacked is None:
        return False
    weight = stacked.layers[0].weight
    if weight.device.type == "cpu" and len(hs) * weight.numel() > CPU_STACK_LIMIT:
        return False
    return len(hs) * max(x.shape[0] for x in hs) <= 2 * sum(x.shape[0] for x in hs)


def per_task_layers(stacked: StackedLayers, hs: Sequence[torch.Tensor],
                    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                    p: float, training: bool) -> list[torch.Tensor]:
    """Input i applies its own layer ``weights[k][i]`` at depth k (permuted ordering,
    Eq. 3, and single-task copies): ONE batched product (grouped convolution) per depth.

    ``weights[k]`` ``[len(hs), out, in, ...]``, ``biases[k]`` ``[len(hs), out]`` or None.
    Batches are padded to the largest one; padded rows are computed, then dropped.
    """
    counts = [x.shape[0] for x in hs]
    conv = isinstance(stacked.layers[0], _ConvNd)
    if conv:  # [B, T*C, *spatial]: the tasks side by side along the channels
        x = pad_sequence(list(hs))
        x = x.reshape(x.shape[0], -1, *x.shape[3:])
    else:  # [T, B, d]
        x = pad_sequence(list(hs), batch_first=True)
    for w, b in zip(weights, biases):
        x = dropout(stacked.per_task(x, w, b), p, training)
    if conv:
        per_task = x.reshape(x.shape[0], len(hs), -1, *x.shape[2:]).unbind(1)
    else:
        per_task = x.unbind(0)
    return [y if n == len(y) else y[:n] for y, n in zip(per_task, counts)]
