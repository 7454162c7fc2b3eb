"""Hand-written autograd kernels of the fused paths: one node instead of many small ones.

* :class:`DenseSoftOrder` -- soft ordering (Eq. 7) at every depth for dense ReLU or linear
  blocks (:func:`flexmtl.fusion.orderings.soft_tasks`);
* :class:`StraightThroughRow` -- one straight-through Gumbel-softmax sample of a task's
  allocation row and its mean's weights
  (:meth:`flexmtl.sharing.allocation.GumbelMatrixAllocation.sample_combined`).

Each has a reference made of ordinary autograd ops beside it, and tests that hold them
equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from flexmtl.fusion.masks import bitwise_drop, clear_dropped_, drop_, half_bits, keep_mask

__all__ = ["DenseSoftOrder", "StraightThroughRow", "active_count"]


#: the most mask elements :class:`DenseSoftOrder` draws at once for all depths (int32:
#: 16 MiB); more are drawn depth by depth
_ALL_DEPTH_BITS = 2**22


class DenseSoftOrder(torch.autograd.Function):
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
        bits = (half_bits(size).view(len(scales), n, -1)
                if relu and bitwise_drop(h, p) and n * weight.shape[0] % 64 == 0
                and size <= _ALL_DEPTH_BITS else None)
        for k, s in enumerate(scales):
            z = F.linear(h, weight, bias)  # [N, L*d]: all layers, one GEMM
            if relu:
                z.relu_()
            if bits is not None:  # no saved mask: A > 0 says where dropout kept
                clear_dropped_(z, bits[k])
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
            if grad_s is not None:  # d y / d s_jk = A_j (grad_s is set iff need_s)
                torch.bmm(a, grad.unsqueeze(-1), out=grad_s[k].unsqueeze(-1))
            torch.mul(grad.unsqueeze(1), scales[k].unsqueeze(-1), out=dz)
            if ctx.relu:  # A > 0 exactly where ReLU passed and dropout kept
                dz_k = torch.ops.aten.threshold_backward(dz, a, 0)
            else:
                dz_k = dz.mul_(masks[k].view_as(dz)) if masks else dz
            dz_k = dz_k.view(a.shape[0], -1)
            if grad_w is not None:
                grad_w.addmm_(dz_k.t(), inputs[k])
            if grad_b is not None:
                grad_b.add_(dz_k.sum(0))
            if k or need_h:
                grad = dz_k @ weight
        if grad_s is not None:  # back to [T, L, D]: sum the rows of each task
            depth, _, layers = grad_s.shape
            grad_s = scales.new_zeros(ctx.num_tasks, layers, depth).index_add_(
                0, rows, grad_s.permute(1, 2, 0), alpha=ctx.rescale)
        return (grad if need_h else None), grad_w, grad_b, grad_s, None, None, None, None


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def active_count(weights: torch.Tensor) -> torch.Tensor:
    """``max(sum(weights), 1)``, what a routed layer's mean divides by (the authors' divisor:
    the number of active components, at least 1), with the gradient passed at ``sum >= 1``
    and stopped below, as TensorFlow's ``maximum`` does at a tie. Written out, not as
    ``clamp(min=1)``: torch 2.14 stopped passing clamp's gradient at the boundary, and the
    divisor sits on it whenever exactly one component is active."""
    total = weights.sum()
    return torch.where(total >= 1.0, total, torch.ones_like(total))


class StraightThroughRow(torch.autograd.Function):
    """``w = s / max(sum(s), 1)`` (or ``s`` when not ``mean``) for the straight-through
    sample ``s = hard + (soft - soft.detach())`` of row ``task`` of ``logits`` with
    Gumbel ``noise`` (:meth:`~flexmtl.sharing.allocation.GumbelMatrixAllocation.sample`).

    Forward: ``hard_c = [v_c0 >= v_c1]``, ``v = logits[task] + noise``. Backward, with
    ``soft_c = softmax(v_c / tau)_0 = sigmoid((v_c0 - v_c1) / tau)``, ``S = sum(hard)``,
    ``D = max(S, 1)``: ``dL/ds_k = g_k / D - [S >= 1] <g, hard> / D^2`` (the gradient
    passes at ``S >= 1``, as through :func:`active_count`), ``dL/dv_k0 = -dL/dv_k1 = dL/ds_k
    soft_k (1 - soft_k) / tau``. The same values as autograd through those ops, up to
    rounding; inputs ``logits`` ``[T, C, 2]``, ``noise`` ``[C, 2]``.

    On the CPU the C-element row is worked out with Python floats (``v`` itself is summed
    by torch, so ``hard`` is exactly the reference's): a dozen torch calls on a handful of
    numbers cost more than the arithmetic. Elsewhere it stays on the device (no sync).
    """

    @staticmethod
    def forward(ctx, logits, task, noise, tau, mean):
        ctx.task, ctx.tau, ctx.shape, ctx.mean = task, tau, logits.shape, mean
        v = logits[task] + noise
        if logits.device.type == "cpu":
            rows = v.tolist()
            hard = [1.0 if a >= b else 0.0 for a, b in rows]
            ctx.soft = [_sigmoid((a - b) / tau) for a, b in rows]
            ctx.hard, ctx.total = hard, sum(hard)
            ctx.denom = max(ctx.total, 1.0) if mean else 1.0
            return torch.tensor([x / ctx.denom for x in hard], dtype=logits.dtype)
        ctx.hard = None
        hard = (v[:, 0] >= v[:, 1]).to(logits.dtype)
        soft = torch.sigmoid((v[:, 0] - v[:, 1]) / tau)
        total = hard.sum()
        denom = active_count(hard) if mean else None
        ctx.save_for_backward(hard, soft, total, denom)
        return hard / denom if mean else hard

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        out = grad.new_zeros(ctx.shape)
        if ctx.hard is not None:  # the CPU path's Python floats
            g, hard, soft, denom = grad.tolist(), ctx.hard, ctx.soft, ctx.denom
            if ctx.mean:
                through = (ctx.total >= 1) * sum(a * b for a, b in zip(g, hard)) / denom**2
                g = [x / denom - through for x in g]
            d = [x * s * (1.0 - s) / ctx.tau for x, s in zip(g, soft)]
            out[ctx.task] = torch.tensor([[x, -x] for x in d], dtype=grad.dtype)
            return out, None, None, None, None
        hard, soft, total, denom = ctx.saved_tensors
        if denom is not None:  # through the mean's division
            grad = grad / denom - (total >= 1).to(grad.dtype) * (grad @ hard) / denom**2
        d = grad * soft * (1.0 - soft) / ctx.tau
        out[ctx.task] = torch.stack([d, -d], dim=-1)
        return out, None, None, None, None
