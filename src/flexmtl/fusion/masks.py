"""Dropout masks from random bits, for the fused paths.

Dropout keeps the reference semantics -- an independent mask for every element of every
shared layer's output -- but on CPU draws each element's mask from 1 (``p = 0.5``), 8 or
16 random bits (:func:`keep_mask`): ``bernoulli_`` is several times slower there. In
training the fused paths therefore draw other masks than the reference; in evaluation both
are deterministic and equal up to float rounding.
"""

from __future__ import annotations

import math

import torch

__all__ = ["keep_mask", "keep_masks", "keep_probability", "drop_", "dropout", "half_bits",
           "bitwise_drop", "clear_dropped_"]


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


def _random_words(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` uniformly random int64 words from ``generator`` (None: torch's default CPU
    generator)."""
    return torch.empty(count, dtype=torch.int64).random_(-(2**63), None, generator=generator)


#: left shifts that move bit j of an int32 word into the sign bit, j = 0..31
_SIGN_SHIFTS = 31 - torch.arange(32, dtype=torch.int32)
#: integer dtype of each float dtype's size, for the bitwise mask of :func:`drop_`
_SAME_SIZE_INT = {torch.float32: torch.int32, torch.float64: torch.int64,
                  torch.float16: torch.int16, torch.bfloat16: torch.int16}


def half_bits(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n]`` int32: 0 or -1 (all bits set) with probability 1/2 each, independently: one
    random bit per element, spread by an arithmetic shift (``(w << (31 - j)) >> 31``).
    Drawn from ``generator`` (None: torch's default CPU generator)."""
    words = _random_words(-(-n // 64), generator).view(torch.int32)
    bits = torch.bitwise_left_shift(words.unsqueeze(1), _SIGN_SHIFTS).bitwise_right_shift_(31)
    return bits.view(-1)[:n]


def keep_mask(x: torch.Tensor, p: float, out: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A float mask like ``x``: 1 (keep) or 0 (drop), independently for every element
    (written into ``out`` when given), drawn from ``generator`` (None: torch's default).

    On CPU each element gets one random bit for ``p = 0.5``, 8 when ``p`` is another
    multiple of 2**-8, else 16, so the keep probability is ``1 - p`` rounded to a multiple
    of 2**-16 (see :func:`keep_probability`). The bits come 64, eight or four per 64-bit
    draw and become the mask by arithmetic only: ``bernoulli_``, comparisons and boolean
    masks are all several times slower on CPU.
    """
    out = torch.empty_like(x) if out is None else out
    if x.device.type != "cpu":
        return out.copy_(torch.rand(out.shape, generator=generator, device=out.device,
                                    dtype=out.dtype) >= p)
    keep_masks(tuple(x.shape), p, [generator], out.dtype, out=out.unsqueeze(0))
    return out


def bitwise_drop(x: torch.Tensor, p: float) -> bool:
    """Whether :func:`drop_` clears ``x``'s dropped elements with a bitwise AND."""
    return p == 0.5 and x.device.type == "cpu" and x.dtype in _SAME_SIZE_INT


def keep_masks(shape: tuple[int, ...], p: float, generators: list[torch.Generator | None],
               dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``[R, *shape]`` CPU masks of one draw per generator (written into ``out`` when
    given): entry ``r`` is :func:`keep_mask` of a tensor of ``shape`` drawn from
    ``generators[r]``, built by one pass for all of them (:func:`keep_mask` is this for
    one generator)."""
    runs, n = len(generators), math.prod(shape)
    bits = _code_bits(p)
    out = torch.empty(runs, *shape, dtype=dtype) if out is None else out
    if bits == 1:  # -1 / 0 -> 1 / 0
        return out.copy_(torch.stack([half_bits(n, g) for g in generators])
                         .view(out.shape)).abs_()
    half, keep = 2 ** (bits - 1), round(keep_probability(p, out.device) * 2**bits)
    words = torch.stack([_random_words(-(-n * bits // 64), g) for g in generators])
    codes = words.view(torch.int8 if bits == 8 else torch.int16)[:, :n].reshape(out.shape)
    # codes are uniform integers in [-half, half): keep the top ``keep`` of them
    exact = out.dtype in (torch.float32, torch.float64)  # integers up to 2**16 are exact
    work = out if exact else torch.empty(out.shape, dtype=torch.float32)
    work.copy_(codes).add_(keep - half + 1).clamp_(0.0, 1.0)
    return out if exact else out.copy_(work)


def drop_(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x *= keep_mask(x, p)`` in place (no rescaling); returns ``x``. Drawn from
    ``generator`` (None: torch's default).

    For ``p = 0.5`` on CPU, when autograd does not track ``x``, the dropped elements' bits
    are cleared with one bitwise AND of a 0 / all-ones integer mask (:func:`half_bits`):
    no float mask is made, and a dropped NaN or infinity becomes 0 (``x * 0`` would keep
    it NaN). Tracked tensors are multiplied, so that their gradient sees the mask.
    """
    tracked = torch.is_grad_enabled() and x.requires_grad
    if bitwise_drop(x, p) and x.is_contiguous() and not tracked:
        return clear_dropped_(x, half_bits(x.numel(), generator).view(x.shape))
    return x.mul_(keep_mask(x, p, generator=generator))


def clear_dropped_(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Zero the elements of ``x`` (contiguous, a float dtype of :data:`_SAME_SIZE_INT`)
    where the int32 ``bits`` (:func:`half_bits`) are 0, in place."""
    kind = _SAME_SIZE_INT[x.dtype]
    x.view(kind).bitwise_and_(bits if kind == torch.int32 else bits.to(kind))
    return x


def dropout(x: torch.Tensor, p: float, training: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout of every element of ``x`` (like ``nn.Dropout``), training only;
    drawn from ``generator`` (None: torch's default)."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(x, p, generator=generator).mul_(1.0 / keep_probability(p, x.device))
