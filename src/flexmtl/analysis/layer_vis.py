"""What one soft-order layer does (Meyerson & Miikkulainen, ICLR 2018, Sec. 5, Table 1, A.5).

With sigmoid scales (``SoftOrdering(gate="sigmoid")``) one scale ``s[t, l, d]`` can be set
anywhere in [0, 1] while all other scales keep their learned values; the model's output for
task ``t`` is then rendered as the scale is swept. Everything here is pure torch, works on
any :class:`~flexmtl.models.MultiTaskModel` with a :class:`~flexmtl.sharing.SoftOrdering`
core, and never changes the model: the scales are passed to the core's forward explicitly.

* :func:`pixel_coordinates` -- the ``(x, y)`` inputs of an image, in [0, 1].
* :func:`predict` -- the model's output for a task, with the core's scales overridden.
* :func:`scale_sweep` -- Table 1: the output while ``s[t, l, d]`` takes each value in turn.
* :func:`layer_switches` -- the output with one scale at 0 and at 1, for every
  (task, layer, depth).
* :func:`effect_metrics` -- Table 1's qualitative claims as numbers (see its docstring).
* :func:`soft_core` -- a model's soft-ordering core (an error for other cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from flexmtl.errors import ConfigError
from flexmtl.sharing import SoftOrdering, find_cores

if TYPE_CHECKING:
    from flexmtl.models import MultiTaskModel

__all__ = [
    "SWEEP_VALUES",
    "effect_metrics",
    "layer_switches",
    "pixel_coordinates",
    "predict",
    "scale_sweep",
    "soft_core",
    "with_scale",
]

#: scale values of the default sweep (Table 1: layer inactive -> layer active)
SWEEP_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """``[height * width, 2]`` inputs ``(x, y) = (column, row) / (size - 1)``, row-major,
    so that outputs reshape to ``(height, width)`` images."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([cols.flatten() / max(width - 1, 1),
                        rows.flatten() / max(height - 1, 1)], dim=1).float()


def soft_core(model: nn.Module) -> SoftOrdering:
    """The model's sharing core, which must be a soft ordering: a core of kind
    ``"soft-order"`` has the scales (``scales()``, ``forward(h, task, scales)``) swept here."""
    cores = find_cores(model)
    if len(cores) != 1 or cores[0].kind != SoftOrdering.kind:
        found = ", ".join(f"{type(c).__name__} ({c.kind})" for c in cores) or "none"
        raise ConfigError("layer visualisation needs a model with one sharing core of kind "
                          f"{SoftOrdering.kind!r} (a soft ordering); found {found}")
    return cast(SoftOrdering, cores[0])  # the kind names the class's contract


def with_scale(scales: torch.Tensor, layer: int, depth: int, value: float) -> torch.Tensor:
    """A copy of ``scales`` ``[layers, depths]`` with ``s[layer, depth] = value``."""
    out = scales.clone()
    out[layer, depth] = value
    return out


@torch.no_grad()
def predict(model: MultiTaskModel, task: int, x: torch.Tensor,
            scales: torch.Tensor | None = None) -> torch.Tensor:
    """``model(x, task)`` in evaluation mode, flattened to ``[N]``; ``scales``
    (``[layers, depths]``) replaces the task's learned scales in the core (Eq. 7)."""
    core = soft_core(model)
    was_training = model.training
    model.eval()
    try:
        h = core(model.encoders[task](x), task, scales=scales)
        return model.decoders[task](h).reshape(len(x))
    finally:
        model.train(was_training)


@torch.no_grad()
def scale_sweep(model: MultiTaskModel, task: int, layer: int, x: torch.Tensor,
                values: Sequence[float] = SWEEP_VALUES,
                depths: Sequence[int] | None = None) -> torch.Tensor:
    """Table 1: outputs ``[len(depths), len(values), N]`` of ``task`` on inputs ``x`` while
    ``s[task, layer, d]`` takes each of ``values`` (all other scales learned), for each
    depth ``d`` (0-based; all depths by default)."""
    core = soft_core(model)
    depths = range(core.depth) if depths is None else depths
    learned = core.scales(task).detach()
    return torch.stack([
        torch.stack([predict(model, task, x, with_scale(learned, layer, d, v)) for v in values])
        for d in depths
    ])


@torch.no_grad()
def layer_switches(model: MultiTaskModel, x: torch.Tensor,
                   tasks: Sequence[int] | None = None) -> torch.Tensor:
    """``[tasks, layers, depths, 2, N]``: the output with ``s[t, l, d] = 0`` (layer off) and
    with ``s[t, l, d] = 1`` (layer fully on), all other scales as learned."""
    core = soft_core(model)
    tasks = range(core.num_tasks) if tasks is None else tasks
    return torch.stack([
        torch.stack([scale_sweep(model, t, layer, x, (0.0, 1.0))
                     for layer in range(core.num_layers)])
        for t in tasks
    ])


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two 1-D tensors (no ties expected); 0 when one is constant."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0


def _standardised(images: torch.Tensor) -> torch.Tensor:
    """Each row centred and scaled to unit norm (a zero row stays zero): dot products of
    rows are then Pearson correlations over pixels."""
    centred = images.double() - images.double().mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def effect_metrics(switches: torch.Tensor, targets: torch.Tensor, image_shape: Sequence[int],
                   layer: int = 0) -> dict[str, float]:
    """Table 1's claims as numbers, from :func:`layer_switches` ``[T, L, D, 2, N]``.

    ``targets`` are the task images ``[T, N]`` (row-major ``image_shape``), brightness in
    [0, 1]. ``Delta = on - off`` is what switching layer ``l`` on at depth ``d`` changes.

    * ``effect_depth{d}`` (d = 1..D): mean over tasks and layers of the mean absolute pixel
      change ``|Delta|``.
    * ``shape_change_depth{d}``: mean over tasks and layers of ``1 - corr(off, on)``
      (Pearson over pixels): the change a contrast-normalised rendering shows, blind to a
      global gain or offset (App. A.5 sees "no observable effect at depth four").
    * ``depth_trend``: mean over (task, layer) of the rank correlation between depth and
      ``|Delta|``; -1 when the effect always shrinks with depth ("the magnitude of the
      effect decreases with depth").
    * ``decreasing_fraction``: fraction of (task, layer) whose ``|Delta|`` strictly
      decreases from depth 1 to depth D.
    * ``primitive_similarity``: mean correlation between the ``Delta`` images of the SAME
      layer in two different (task, depth) contexts ("similar function in each context");
      ``other_layer_similarity``: the same for DIFFERENT layers, the baseline to beat.
    * ``left_share_layer{layer+1}``: share of the brightness the layer adds (positive part
      of ``Delta``, all tasks and depths) that lies left of the target digit's centre column
      ("expands the left side of the 4"); ``left_share_digit``: the same share of the
      target images' own ink, what a change spread evenly over the digit would give.
    """
    T, L, D, _, N = switches.shape
    height, width = image_shape
    if N != height * width or targets.shape != (T, N):
        raise ConfigError(f"switches {tuple(switches.shape)} and targets {tuple(targets.shape)} "
                          f"do not match images of shape {tuple(image_shape)}")
    off, on = switches.double().unbind(dim=3)  # [T, L, D, N]
    effects = on - off
    magnitude = effects.abs().mean(dim=-1)  # [T, L, D]
    shape_change = 1 - (_standardised(off) * _standardised(on)).sum(dim=-1)
    out = {f"effect_depth{d + 1}": float(magnitude[:, :, d].mean()) for d in range(D)}
    out.update({f"shape_change_depth{d + 1}": float(shape_change[:, :, d].mean())
                for d in range(D)})
    depth = torch.arange(D, dtype=torch.double)
    flat = magnitude.reshape(T * L, D)
    out["depth_trend"] = sum(_rank_correlation(depth, m) for m in flat) / (T * L)
    out["decreasing_fraction"] = float((flat.diff(dim=1) < 0).all(dim=1).double().mean())

    unit = _standardised(effects.reshape(T * L * D, N))
    corr = unit @ unit.T
    index = torch.arange(T * L * D)
    t_of, l_of, d_of = index // (L * D), (index // D) % L, index % D
    other_context = (t_of[:, None] != t_of[None]) | (d_of[:, None] != d_of[None])
    same_layer = l_of[:, None] == l_of[None]
    out["primitive_similarity"] = float(corr[other_context & same_layer].mean())
    out["other_layer_similarity"] = float(corr[other_context & ~same_layer].mean())

    columns = torch.arange(width, dtype=torch.double).repeat(height)  # column of each pixel
    ink = targets.double()
    centre = (ink * columns).sum(dim=1) / ink.sum(dim=1).clamp_min(1e-12)  # [T]
    left = (columns[None] < centre[:, None]).double()  # [T, N]
    added = effects[:, layer].clamp_min(0)  # [T, D, N]
    total = added.sum()
    out[f"left_share_layer{layer + 1}"] = (
        float((added * left[:, None]).sum() / total) if total > 0 else float("nan"))
    out["left_share_digit"] = float((ink * left).sum() / ink.sum().clamp_min(1e-12))
    return out
