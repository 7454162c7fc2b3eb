"""The figure of soft ordering Table 1 (Sec. 5): a soft-order layer swept from off to on.

* :func:`plot_layer_sweep` -- rows = (task, depth), columns = values of ``s[t, l, d]``, plus
  the change from the first to the last value; above it the target images and the
  model's reconstructions.
* :func:`plot_layer_vis_run` -- that figure for a ``layer-vis`` run folder, from the
  selected checkpoint and the experiment's builders (called through
  :func:`flexmtl.experiments.layer_visualization.plot_layer_vis`).

The images are computed by :mod:`flexmtl.analysis.layer_vis` (pure torch); matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flexmtl.analysis.layer_vis import SWEEP_VALUES, predict, scale_sweep, soft_core
from flexmtl.run_folder import ExperimentFolder, PlotNames, atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from flexmtl.models import MultiTaskModel
    from flexmtl.tasks import Task

__all__ = ["plot_layer_sweep", "plot_layer_vis_run"]

EXPERIMENT = "layer-vis"
DPI = 120


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_layer_sweep(
    sweeps: Any,
    values: Sequence[float],
    out_path: str | Path,
    targets: Any | None = None,
    reconstructions: Any | None = None,
    row_labels: Sequence[str] | None = None,
    task_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw Table 1 and write it to ``out_path``.

    Args:
        sweeps: images ``[rows, len(values), H, W]`` (brightness in [0, 1]; shown clipped),
            one row per (task, depth).
        values: the scale value of each column.
        targets, reconstructions: optional ``[tasks, H, W]`` images drawn above the sweep.
        row_labels: one label per row (e.g. ``"four0, depth 1 (learned s=0.62)"``).
        task_names: captions of the target / reconstruction columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = _numpy(sweeps)
    rows, n_values = sweeps.shape[:2]
    if n_values != len(values):
        raise ValueError(f"sweeps have {n_values} columns for {len(values)} values")
    n_tasks = 0 if targets is None else len(targets)
    top_rows = (targets is not None) + (reconstructions is not None)
    cell = 1.1
    cols = n_values + 1  # the sweep, then the change last - first
    width = max(cols, n_tasks) * cell + 1.6
    fig = plt.figure(figsize=(width, (rows + top_rows) * cell + 1.2 + 0.4 * bool(top_rows)),
                     dpi=DPI, layout="constrained")
    sweep_fig: Figure | SubFigure = fig
    if top_rows:
        top_fig, sweep_fig = fig.subfigures(2, 1, squeeze=False,
                                            height_ratios=[top_rows + 0.5, rows + 0.6])[:, 0]
        grid = [(g, name) for g, name in ((targets, "target"), (reconstructions, "model"))
                if g is not None]
        axes = np.atleast_2d(top_fig.subplots(len(grid), n_tasks, squeeze=False))
        for r, (images, name) in enumerate(grid):
            for t, ax in enumerate(axes[r]):
                ax.imshow(_numpy(images[t]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and task_names is not None:
                    ax.set_title(task_names[t], fontsize=7)
            axes[r, 0].set_ylabel(name, fontsize=8)
        top_fig.suptitle("the ten tasks: target images and reconstructions", fontsize=9)
    axes = sweep_fig.subplots(rows, cols, squeeze=False)
    limit = float(np.abs(sweeps[:, -1] - sweeps[:, 0]).max()) or 1.0
    for r in range(rows):
        for c in range(n_values):
            axes[r, c].imshow(sweeps[r, c], cmap="gray", vmin=0, vmax=1)
            if r == 0:
                axes[r, c].set_title(f"s = {values[c]:g}", fontsize=8)
        change = axes[r, -1].imshow(sweeps[r, -1] - sweeps[r, 0], cmap="RdBu_r",
                                    vmin=-limit, vmax=limit)
        if r == 0:
            axes[r, -1].set_title(f"s={values[-1]:g} minus s={values[0]:g}", fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right",
                                  va="center")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    sweep_fig.colorbar(change, ax=axes[:, -1].tolist(), shrink=0.6, label="brightness change")
    sweep_fig.suptitle(title or "layer inactive -> layer active", fontsize=9)
    out_path = Path(out_path)
    try:  # atomically: a killed run leaves the previous figure, never a torn one
        atomic_write(out_path, lambda f: fig.savefig(
            f, bbox_inches="tight", format=out_path.suffix[1:] or "png"))
    finally:
        plt.close(fig)
    return out_path


def plot_layer_vis_run(
    run_dir: str | Path,
    build_tasks: Callable[[dict, int], list[Task]],
    build_model: Callable[[str, list[Task], dict, int], MultiTaskModel],
    tasks: Sequence[int] = (0, 1),
    layer: int = 0,
    values: Sequence[float] = SWEEP_VALUES,
    seed: int = 0,
    method: str = "soft",
    out_path: str | Path | None = None,
) -> list[Path]:
    """Table 1 for a ``layer-vis`` run folder: layer ``layer`` (0-based) swept at every depth
    for ``tasks`` (the paper: the first layer, the first two tasks), from the selected
    checkpoint of ``seed``, with the model rebuilt by the experiment's ``build_tasks`` and
    ``build_model`` (the experiment passes them: analysis does not import experiments).
    Writes ``RUN/plots/layer_sweep_layer{layer+1}.png`` unless ``out_path`` is given; returns
    ``[]`` for other experiments or unfinished runs.
    """

    folder = ExperimentFolder(run_dir)
    manifest = folder.read_manifest()
    if manifest is None:
        return []
    run = folder.run(method, seed)
    finished = run.is_finished() and run.best.exists()
    if manifest.get("experiment") != EXPERIMENT or not finished:
        return []
    cfg = manifest["config"]
    task_list = build_tasks(cfg, seed)
    trained_on = [t.get("note") for t in (run.read_result() or {}).get("tasks", [])]
    if trained_on != [t.note for t in task_list]:
        warnings.warn(f"{run_dir} was trained on other images than the data found now (e.g. "
                      "full MNIST was installed since); its Table 1 figure is not redrawn",
                      stacklevel=2)
        return []
    model = build_model(method, task_list, cfg, seed)
    model.load_state_dict(run.load_best_model())
    shape = tuple(task_list[0].info["image_shape"])
    x = task_list[0].train.x
    assert isinstance(x, torch.Tensor)  # pixel coordinates, in memory
    learned = soft_core(model).scales().detach()
    sweeps, labels = [], []
    for t in tasks:
        sweep = scale_sweep(model, t, layer, x, values)  # [depths, values, N]
        sweeps.append(sweep.reshape(*sweep.shape[:2], *shape))
        labels += [f"{task_list[t].name}, depth {d + 1}\n"
                   f"(learned s={float(learned[t, layer, d]):.2f})" for d in range(sweep.shape[0])]
    targets = torch.stack([t.train.y.reshape(shape) for t in task_list])
    recon = torch.stack([predict(model, t, x).reshape(shape) for t in range(len(task_list))])
    out = Path(out_path) if out_path else folder.plots / PlotNames.layer_sweep(layer)
    title = (f"layer {layer + 1}: s[t, {layer + 1}, d] swept, other scales as learned "
             f"({method}, seed {seed}); right: change from s={values[0]:g} to s={values[-1]:g}")
    return [plot_layer_sweep(torch.cat(sweeps), values, out, targets, recon, labels,
                             [t.name for t in task_list], title)]
