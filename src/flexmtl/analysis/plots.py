"""Plots of a run folder (soft ordering: Meyerson & Miikkulainen, ICLR 2018, Figs. 2, 4, 5;
learned allocation: Maziarz et al., Gumbel-Matrix, Figs. 5, 6, 8).

* :func:`plot_learning_curves` -- Fig. 5b: summed validation loss by step, per method.
* :func:`plot_soft_order` -- Fig. 4d: the learned scale of each shared layer at each depth,
  per task, with the strongest path drawn.
* :func:`plot_scale_trajectories` -- Fig. 4b-c: how the scales of tasks diverge and move
  towards a hard ordering over training.
* :func:`plot_sweep` -- Figs. 2 / 4a: test accuracy per method against the swept value.
* :func:`plot_allocation` -- Gumbel-Matrix Fig. 5: the binary task embeddings (tasks x
  components), routed layers and task groups marked.
* :func:`plot_similarity` -- Gumbel-Matrix Fig. 6: pairwise cosine similarity of the task
  embeddings.
* :func:`plot_allocation_trajectories` -- Gumbel-Matrix Fig. 8: the connection
  probabilities of one task over training, one panel per routed layer.
* :func:`plot_run` -- all of the above for a run folder written by
  :func:`flexmtl.runner.run_experiment`, into ``RUN/plots/``.

Importing this module needs matplotlib (``pip install 'flexmtl[plots]'``); the runner
relies on the ImportError to skip plotting when it is absent.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from flexmtl.analysis.embeddings import cosine_similarity  # noqa: E402
from flexmtl.analysis.stats import t_quantile_975  # noqa: E402
from flexmtl.registry import Registry  # noqa: E402
from flexmtl.run_folder import (  # noqa: E402
    ExperimentFolder,
    PlotNames,
    TrainingRun,
    atomic_write,
    read_json,
)

__all__ = [
    "plot_allocation",
    "plot_allocation_trajectories",
    "plot_learning_curves",
    "plot_run",
    "plot_scale_trajectories",
    "plot_similarity",
    "SHARING_PLOTS",
    "plot_soft_order",
    "plot_sweep",
    "strongest_path",
]

DPI = 120
MAX_TASK_PANELS = 10
MAX_PAIR_LINES = 10
_LINESTYLES = ("-", "--", ":", "-.")
_METHOD_COLORS = {"single": "tab:gray", "parallel": "tab:blue", "permuted": "tab:orange",
                  "soft": "tab:green"}

Snapshots = Sequence[tuple[int, Any]]


# ---------------------------------------------------------------------- helpers


def strongest_path(scales_for_task: Any) -> list[int]:
    """The strongest layer at each depth: ``argmax_j s[j, k]`` for ``[layers, depths]`` scales.

    This is the path drawn in Fig. 4d (and :meth:`SoftOrdering.layer_order`).
    """
    s = _numpy(scales_for_task)
    if s.ndim != 2:
        raise ValueError(f"scales of one task must be [layers, depths], got shape {s.shape}")
    return [int(j) for j in s.argmax(axis=0)]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _task_names(names: Sequence[str] | None, n: int) -> list[str]:
    names = list(names or [])
    return [names[t] if t < len(names) else f"task {t}" for t in range(n)]


def _save(fig: plt.Figure, out_path: str | Path) -> Path:
    path = Path(out_path)
    try:  # atomically: a killed run leaves the previous figure, never a torn one
        atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format=path.suffix[1:] or "png"))
    finally:
        plt.close(fig)
    return path


def _color(method: str, index: int) -> str:
    return _METHOD_COLORS.get(method, f"C{(index + 4) % 10}")


def _read_json(path: Path) -> dict | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):  # missing, truncated or corrupt: nothing read from it
        return None
    return data if isinstance(data, dict) else None


def _mean_ci(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% CI half-width over axis 0, ignoring NaN (half-width NaN where n < 2)."""
    n = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / n
        sq = np.nansum((values - mean) ** 2, axis=0)
        std = np.sqrt(sq / (n - 1))
    t = np.array([t_quantile_975(int(k) - 1) if k >= 2 else math.nan for k in n])
    return mean, t * std / np.sqrt(np.maximum(n, 1))


# ---------------------------------------------------------------------- run folder


def _point_dir(run_dir: Path) -> tuple[Path, str | None]:
    """Folder of the primary sweep point (or ``run_dir`` itself) and its label."""
    folder = ExperimentFolder(run_dir)
    results = _read_json(folder.results)
    sweep = (results or {}).get("sweep")
    if sweep:
        key, value = sweep["key"], sweep["primary"]
    else:
        config = _read_json(folder.manifest) or {}
        manifest_sweep = config.get("sweep") if results is None else None
        if not manifest_sweep:
            return run_dir, None
        key = manifest_sweep["key"]
        value = (config.get("config") or {}).get(key, manifest_sweep["values"][-1])
    point = folder.point(key, value)
    return point, point.name


def _method_dirs(point_dir: Path, run_dir: Path) -> dict[str, Path]:
    """Method folders (those holding ``seed-*`` folders), in the run's method order."""
    found = ExperimentFolder.method_dirs(point_dir)
    folder = ExperimentFolder(run_dir)
    listed = list((_read_json(folder.results) or {}).get("methods") or {})
    listed += (_read_json(folder.manifest) or {}).get("methods") or []
    order = [m for m in dict.fromkeys(listed) if m in found] + sorted(set(found) - set(listed))
    return {m: found[m] for m in order}


def _seed_dirs(method_dir: Path) -> list[Path]:
    return [run.path for run in ExperimentFolder.seed_runs(method_dir)]


def _read_eval_log(path: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of column ``key`` of an ``eval_log.csv`` (empty when unreadable)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    out = {}
    for row in rows:
        try:
            out[int(row["step"])] = float(row[key])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _curves(run_dir: Path, key: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str | None]:
    """Per method: steps and the ``[seeds, steps]`` matrix (NaN where a seed lacks a step)."""
    point, label = _point_dir(run_dir)
    curves = {}
    for method, mdir in _method_dirs(point, run_dir).items():
        logs = [_read_eval_log(run.eval_log, key) for run in ExperimentFolder.seed_runs(mdir)]
        logs = [log for log in logs if log]
        if not logs:
            continue
        steps = np.array(sorted(set().union(*logs)))
        values = np.array([[log.get(int(s), math.nan) for s in steps] for log in logs])
        if np.isnan(values).all():
            continue
        curves[method] = (steps, values)
    return curves, label


# ---------------------------------------------------------------------- figures


def plot_learning_curves(run_dir: str | Path, out_path: str | Path, key: str = "loss") -> Path:
    """Fig. 5b: validation ``key`` by step, mean over seeds with a shaded 95% CI, per method.

    ``key`` is an ``eval_log.csv`` column: ``loss`` (summed over tasks), ``accuracy`` (mean
    over tasks), or ``loss/<task>`` / ``accuracy/<task>``. Sweep runs show the primary point.
    Raises FileNotFoundError when no method folder has an eval log with a value in that
    column (regression tasks log NaN accuracy).
    """
    run_dir = Path(run_dir)
    curves, label = _curves(run_dir, key)
    if not curves:
        raise FileNotFoundError(f"no eval_log.csv with a (non-NaN) column {key!r} under "
                                f"{run_dir}")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for i, (method, (steps, values)) in enumerate(curves.items()):
        mean, ci = _mean_ci(values)
        color = _color(method, i)
        seeds = f"{len(values)} seed{'s' * (len(values) > 1)}"
        ax.plot(steps, mean, color=color, lw=1.8, label=f"{method} ({seeds})")
        ok = ~np.isnan(ci)
        if ok.any():
            ax.fill_between(steps[ok], (mean - ci)[ok], (mean + ci)[ok], color=color,
                            alpha=0.2, lw=0)
    what = {"loss": "validation loss (sum over tasks)",
            "accuracy": "validation accuracy (mean over tasks)"}.get(key, f"validation {key}")
    ax.set_xlabel("step")
    ax.set_ylabel(what)
    ax.set_title(f"{what} by step" + (f" [sweep point {label}]" if label else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="mean ± 95% CI over seeds", fontsize=8, title_fontsize=8)
    return _save(fig, out_path)


def plot_soft_order(scales: Any, out_path: str | Path,
                    task_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Fig. 4d: per task, the scale of each shared layer (rows) at each depth (columns).

    ``scales`` is ``[tasks, layers, depths]``; shading uses one colour scale over [0, 1] and
    the strongest path (:func:`strongest_path`) is drawn on top. At most
    ``MAX_TASK_PANELS`` tasks are shown.
    """
    s = _numpy(scales)
    if s.ndim != 3:
        raise ValueError(f"scales must be [tasks, layers, depths], got shape {s.shape}")
    tasks, layers, depths = s.shape
    shown = min(tasks, MAX_TASK_PANELS)
    names = _task_names(task_names, tasks)
    ncols = min(shown, 5)
    nrows = math.ceil(shown / ncols)
    cell = min(0.55, 6.0 / max(layers, depths))
    width, height = cell * depths + 0.8, cell * layers + 0.8
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True,
                             figsize=(max(width * ncols + 1.4, 6.4), height * nrows + 0.6),
                             layout="constrained")
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(h_pad=0.1, hspace=0.06)
    image = None
    for t, ax in enumerate(axes.flat):
        if t >= shown:
            ax.set_visible(False)
            continue
        image = ax.imshow(s[t], origin="lower", cmap="Greys", vmin=0.0, vmax=1.0,
                          aspect="equal", interpolation="nearest")
        ax.plot(range(depths), strongest_path(s[t]), color="tab:red", lw=2, marker="o",
                ms=5, label="strongest path")
        ax.set_title(names[t], fontsize=9)
        ax.set_xticks(range(depths))
        ax.set_yticks(range(layers))
        if t % ncols == 0:
            ax.set_ylabel("shared layer")
        if t // ncols == nrows - 1 or t + ncols >= shown:
            ax.set_xlabel("depth")
    assert image is not None  # at least one task is shown
    fig.colorbar(image, ax=axes, shrink=0.9, label="scale $s_{t,j,k}$")
    extra = f" (first {shown} of {tasks} tasks)" if shown < tasks else ""
    fig.suptitle((title or "learned soft order; red: strongest layer at each depth") + extra,
                 fontsize=10)
    return _save(fig, out_path)


def _pair_distances(s: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Task pairs and ``[snapshots, pairs]`` mean over depths of ``||s[t,:,k] - s[u,:,k]||``."""
    pairs = list(itertools.combinations(range(s.shape[1]), 2))
    d = np.array([[np.linalg.norm(snap[t] - snap[u], axis=0).mean() for t, u in pairs]
                  for snap in s]).reshape(len(s), len(pairs))
    return pairs, d


def plot_scale_trajectories(snapshots: Snapshots, out_path: str | Path,
                            task_names: Sequence[str] | None = None) -> Path:
    """Fig. 4b-c: the scales over training.

    Top left (Fig. 4b): per pair of tasks, the layer-wise L2 distance between their scale
    vectors ``s[t, :, k]``, averaged over depths (the mean and range over pairs when there
    are more than ``MAX_PAIR_LINES`` pairs). Top right (Fig. 4c): the hardness
    ``max_j s[t, j, k]`` averaged over depths, per task (1 = a hard ordering). Bottom: every
    scale ``s[t, j, k]`` of the first two tasks (colour: layer j, line style: depth k).
    """
    if not snapshots:
        raise ValueError("no scale snapshots to plot")
    steps = np.array([int(step) for step, _ in snapshots])
    s = np.stack([_numpy(x) for _, x in snapshots])  # [snapshots, tasks, layers, depths]
    if s.ndim != 4:
        raise ValueError(f"snapshots must be [tasks, layers, depths], got {s.shape[1:]}")
    _, tasks, layers, depths = s.shape
    names = _task_names(task_names, tasks)
    detail = min(tasks, 2)
    fig = plt.figure(figsize=(11, 7.4), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    ax_dist, ax_hard = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])

    pairs, dist = _pair_distances(s)
    if not pairs:
        ax_dist.text(0.5, 0.5, "one task: no pairs", ha="center", va="center",
                     transform=ax_dist.transAxes)
    elif len(pairs) <= MAX_PAIR_LINES:
        for p, (t, u) in enumerate(pairs):
            ax_dist.plot(steps, dist[:, p], marker=".", label=f"{names[t]} vs {names[u]}")
        ax_dist.legend(fontsize=7, ncols=2 if len(pairs) > 5 else 1)
    else:
        ax_dist.fill_between(steps, dist.min(axis=1), dist.max(axis=1), alpha=0.2,
                             color="C0", lw=0, label="range over pairs")
        ax_dist.plot(steps, dist.mean(axis=1), color="C0", marker=".",
                     label=f"mean over {len(pairs)} pairs")
        ax_dist.legend(fontsize=8)
    ax_dist.set(xlabel="step", ylabel="distance (mean over depths)",
                title="(b) layer-wise distance between tasks' scales")

    hard = s.max(axis=2).mean(axis=2)  # [snapshots, tasks]
    if tasks <= 5:
        for t in range(tasks):
            ax_hard.plot(steps, hard[:, t], marker=".", label=names[t])
    else:
        ax_hard.fill_between(steps, hard.min(axis=1), hard.max(axis=1), color="k", alpha=0.12,
                             lw=0, label="range over tasks")
    ax_hard.plot(steps, hard.mean(axis=1), color="k", lw=2.2, label="mean over tasks")
    if np.allclose(s.sum(axis=2), 1.0, atol=1e-3):  # softmax gate: uniform start is 1/L
        ax_hard.axhline(1.0 / layers, color="gray", ls=":", lw=1, label="uniform (1/L)")
    ax_hard.set_ylim(0, 1.05)
    ax_hard.set(xlabel="step", ylabel="hardness (max over layers, mean over depths)",
                title="(c) move towards a hard ordering (1 = hard)")
    ax_hard.legend(fontsize=7, loc="lower right")

    for t in range(detail):
        ax = fig.add_subplot(grid[1, t] if detail == 2 else grid[1, :])
        for j, k in itertools.product(range(layers), range(depths)):
            ax.plot(steps, s[:, t, j, k], color=f"C{j % 10}",
                    ls=_LINESTYLES[k % len(_LINESTYLES)], lw=1.4)
        ax.set_ylim(0, 1.05)
        ax.set(xlabel="step", ylabel="scale $s_{t,j,k}$", title=f"(c) scales of {names[t]}")
        handles = [Line2D([], [], color=f"C{j % 10}", label=f"layer {j}") for j in range(layers)]
        handles += [Line2D([], [], color="k", ls=_LINESTYLES[k % len(_LINESTYLES)],
                           label=f"depth {k}") for k in range(depths)]
        ax.legend(handles=handles, fontsize=7, ncols=2, loc="best")
    fig.suptitle("soft-order scales over training", fontsize=11)
    return _save(fig, out_path)


def plot_sweep(results: dict, out_path: str | Path, metric: str = "test_accuracy") -> Path:
    """Figs. 2 / 4a: ``metric`` (mean ± 95% CI over seeds) per method vs the swept value."""
    sweep = results.get("sweep") or {}
    points = sweep.get("points") or []
    if not points:
        raise ValueError("results have no sweep points")
    values = [p["value"] for p in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = np.array(values, dtype=float) if numeric else np.arange(len(values), dtype=float)
    methods = list(dict.fromkeys(m for p in points for m in p["methods"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    log_x = numeric and x.min() > 0 and x.max() / x.min() >= 8
    for i, method in enumerate(methods):
        dodge = 0.03 * (i - (len(methods) - 1) / 2)  # keep error bars of methods apart
        xm = x * 2 ** dodge if log_x else x + dodge * (np.ptp(x) or 1.0)
        summ = [p["methods"].get(method, {}).get("metrics", {}).get(metric) for p in points]
        mean = np.array([m["mean"] if m else math.nan for m in summ], dtype=float)
        ci = np.array([m.get("ci95", math.nan) if m else math.nan for m in summ], dtype=float)
        ax.errorbar(xm, mean, yerr=np.nan_to_num(ci), color=_color(method, i), marker="o",
                    capsize=3, lw=1.6, label=method)
    if log_x:
        ax.set_xscale("log", base=2 if all(float(v).is_integer() for v in values) else 10)
    ax.set_xticks(x, [str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(str(sweep.get("key", "sweep value")))
    over = " (sum over tasks)" if metric.endswith("_loss") else (
        " (mean over tasks)" if metric.endswith("_accuracy") else "")
    ax.set_ylabel(metric.replace("_", " ") + over)
    ax.set_title(f"{results.get('experiment', '')}: {metric.replace('_', ' ')} "
                 "(mean ± 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


# ---------------------------------------------------------------------- allocation


def _binary(embeddings: Any) -> np.ndarray:
    e = _numpy(embeddings)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be [tasks, components], got shape {e.shape}")
    return e


def _layer_sizes(layer_sizes: Sequence[int] | None, components: int) -> list[int]:
    sizes = [components] if layer_sizes is None else [int(c) for c in layer_sizes]
    if sum(sizes) != components or any(c < 1 for c in sizes):
        raise ValueError(f"layer sizes {sizes} do not add up to the {components} components")
    return sizes


def _group_order(groups: Sequence[Any] | None,
                 tasks: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Row order that keeps groups together, and the ``(label, start, stop)`` runs of rows.

    Groups are ordered by their first task, tasks within a group by index (the identity when
    the groups are already contiguous). No groups: the identity and no runs.
    """
    if groups is None:
        return np.arange(tasks), []
    groups = list(groups)
    if len(groups) != tasks:
        raise ValueError(f"{len(groups)} group labels for {tasks} tasks")
    rank = {g: i for i, g in reversed(list(enumerate(groups)))}
    order = np.array(sorted(range(tasks), key=lambda t: rank[groups[t]]), dtype=int)
    runs: list[tuple[str, int, int]] = []
    for row, t in enumerate(order):
        if runs and runs[-1][0] == str(groups[t]):
            runs[-1] = (runs[-1][0], runs[-1][1], row + 1)
        else:
            runs.append((str(groups[t]), row, row + 1))
    return order, runs


def _label_step(count: int, cell_pt: float, font_pt: float) -> int:
    """Label every k-th row/column so that labels of ``font_pt`` fit in cells of ``cell_pt``."""
    return max(1, math.ceil(font_pt * 1.15 / max(cell_pt, 1e-9))) if count > 1 else 1


def _task_ticks(axis, order: np.ndarray, names: list[str], cell_pt: float) -> None:
    font = min(8.0, max(5.0, 0.8 * cell_pt))
    step = _label_step(len(order), cell_pt, font)
    rows = list(range(0, len(order), step))
    axis.set_ticks(rows, [names[order[r]] for r in rows], fontsize=font)


def _mark_groups(ax, runs: list[tuple[str, int, int]], cell_pt: float, columns: bool) -> None:
    """Lines between groups of rows (and of columns when ``columns``), labels on the right
    (and on top)."""
    if len(runs) < 2:
        return
    for _, start, _ in runs[1:]:
        ax.axhline(start - 0.5, color="red", lw=1.6)
        if columns:
            ax.axvline(start - 0.5, color="red", lw=1.6)
    font = min(9.0, max(6.0, 0.8 * cell_pt * min(stop - start for _, start, stop in runs)))
    centers = [(start + stop - 1) / 2 for _, start, stop in runs]
    labels = [f"{label} ({stop - start})" for label, start, stop in runs]
    right = ax.secondary_yaxis("right")
    right.set_ticks(centers, labels, fontsize=font)
    right.tick_params(length=0)
    if columns:
        top = ax.secondary_xaxis("top")
        narrowest = min((stop - start) * cell_pt / (len(text) * 0.62 * font)
                        for text, (_, start, stop) in zip(labels, runs))
        top.set_ticks(centers, labels, fontsize=font, rotation=0 if narrowest >= 1 else 90)
        top.tick_params(length=0)


def _legend_below(fig: plt.Figure, **kwargs: Any) -> None:
    """A figure legend below the axes, outside them (layout-aware from matplotlib 3.7)."""
    try:
        fig.legend(loc="outside lower center", **kwargs)
    except ValueError:  # matplotlib 3.6 has no "outside" locations: leave room by hand
        engine = fig.get_layout_engine()
        if isinstance(engine, ConstrainedLayoutEngine):
            engine.set(rect=(0, 0.08, 1, 0.92))
        fig.legend(loc="lower center", **kwargs)


def _cell_inches(rows: int, columns: int) -> float:
    return float(np.clip(8.0 / max(rows, columns, 1), 0.14, 0.45))


def plot_allocation(embeddings: Any, out_path: str | Path,
                    task_names: Sequence[str] | None = None,
                    layer_sizes: Sequence[int] | None = None,
                    groups: Sequence[Any] | None = None, title: str | None = None) -> Path:
    """Gumbel-Matrix Fig. 5: the binary task embeddings ``[tasks, components]``.

    Rows are tasks, columns the components of all routed layers in order (yellow: the
    component is allocated to the task). ``layer_sizes`` (components per routed layer) draws
    white lines between layers and labels them on top. ``groups`` (one label per task, e.g.
    the true cluster) keeps the tasks of a group together (ordered by their first task), draws
    red lines between groups and labels them on the right.
    """
    e = _binary(embeddings)
    tasks, components = e.shape
    sizes = _layer_sizes(layer_sizes, components)
    order, runs = _group_order(groups, tasks)
    names = _task_names(task_names, tasks)
    cell = _cell_inches(tasks, components)
    cell_pt = cell * 72
    fig, ax = plt.subplots(figsize=(max(components * cell + 3.4, 6.4),
                                    max(tasks * cell + 2.0, 3.0)), layout="constrained")
    ax.imshow(e[order], cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal",
              interpolation="nearest")
    bounds = np.cumsum([0] + sizes)
    for b in bounds[1:-1]:
        ax.axvline(b - 0.5, color="white", lw=2.2)
    # x: component index within its layer; top: the layers
    font = min(8.0, max(5.0, 0.8 * cell_pt))
    step = _label_step(max(sizes), cell_pt, font)
    xs = [int(b + i) for b, c in zip(bounds, sizes) for i in range(0, c, step)]
    ax.set_xticks(xs, [str(x - bounds[np.searchsorted(bounds, x, "right") - 1]) for x in xs],
                  fontsize=font)
    ax.set_xlabel("component (index within its routed layer)")
    if len(sizes) > 1 or layer_sizes is not None:
        top = ax.secondary_xaxis("top")
        top.set_ticks([b + (c - 1) / 2 for b, c in zip(bounds, sizes)],
                      [f"layer {i}" for i in range(len(sizes))], fontsize=9)
        top.tick_params(length=0)
    _task_ticks(ax.yaxis, order, names, cell_pt)
    ax.set_ylabel("task")
    _mark_groups(ax, runs, cell_pt, columns=False)
    cmap = plt.get_cmap("viridis")
    _legend_below(fig, handles=[Patch(color=cmap(1.0), label="1: allocated"),
                                Patch(color=cmap(0.0), label="0: not allocated")],
                  ncols=2, fontsize=8, frameon=False)
    active = 100.0 * float(e.mean()) if e.size else 0.0
    distinct = len({tuple(row) for row in e.tolist()})
    fig.suptitle((title or "task embeddings (binary allocations)")
                 + f"\n{active:.0f}% of connections active, {distinct} distinct embeddings"
                 f" of {tasks} tasks", fontsize=10)
    return _save(fig, out_path)


def plot_similarity(embeddings: Any, out_path: str | Path,
                    task_names: Sequence[str] | None = None,
                    groups: Sequence[Any] | None = None, title: str | None = None) -> Path:
    """Gumbel-Matrix Fig. 6: pairwise cosine similarity ``[tasks, tasks]`` of the embeddings.

    Uses :func:`flexmtl.analysis.embeddings.cosine_similarity` (two all-zero embeddings count
    as identical). ``groups`` orders and separates the tasks as in :func:`plot_allocation`.
    With at most 12 tasks each cell shows its value.
    """
    e = _binary(embeddings)
    tasks = e.shape[0]
    sim = cosine_similarity(torch.as_tensor(e, dtype=torch.float64)).numpy()
    order, runs = _group_order(groups, tasks)
    names = _task_names(task_names, tasks)
    cell = _cell_inches(tasks, tasks)
    cell_pt = cell * 72
    side = tasks * cell
    fig, ax = plt.subplots(figsize=(max(side + 3.6, 5.6), max(side + 2.4, 4.4)),
                           layout="constrained")
    shown = sim[np.ix_(order, order)]
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal",
                      interpolation="nearest")
    _task_ticks(ax.yaxis, order, names, cell_pt)
    _task_ticks(ax.xaxis, order, names, cell_pt)
    if max(len(n) for n in names) * 0.62 * 8 > cell_pt:  # labels wider than a cell
        plt.setp(ax.get_xticklabels(), rotation=90)
    if tasks <= 12:
        for i, j in itertools.product(range(tasks), repeat=2):
            ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if shown[i, j] > 0.6 else "white")
    _mark_groups(ax, runs, cell_pt, columns=True)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity of task embeddings")
    fig.suptitle((title or "pairwise cosine similarity of the task embeddings")
                 + "\n(1: same components, 0: disjoint)", fontsize=10)
    return _save(fig, out_path)


def plot_allocation_trajectories(snapshots: Snapshots, out_path: str | Path,
                                 layer_sizes: Sequence[int], task: int = 0,
                                 task_name: str | None = None,
                                 title: str | None = None) -> Path:
    """Gumbel-Matrix Fig. 8: the connection probabilities of one task over training.

    ``snapshots`` are ``(step, probabilities [tasks, components])`` with the components of all
    routed layers concatenated (``sharing.pt`` of a routed core); one panel per routed layer
    shows the probability of each of its components against the step.
    """
    if not snapshots:
        raise ValueError("no allocation snapshots to plot")
    steps = np.array([int(step) for step, _ in snapshots])
    p = np.stack([_numpy(x) for _, x in snapshots])  # [snapshots, tasks, components]
    if p.ndim != 3:
        raise ValueError(f"snapshots must be [tasks, components], got {p.shape[1:]}")
    if not 0 <= task < p.shape[1]:
        raise ValueError(f"task {task} out of range for {p.shape[1]} tasks")
    sizes = _layer_sizes(layer_sizes, p.shape[2])
    bounds = np.cumsum([0] + sizes)
    ncols = min(len(sizes), 4)
    nrows = math.ceil(len(sizes) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True,
                             figsize=(max(3.2 * ncols, 6.4), 2.6 * nrows + 1.3),
                             layout="constrained")
    many = max(sizes) > 10
    colors = [plt.get_cmap("tab20" if many else "tab10")(i % (20 if many else 10))
              for i in range(max(sizes))]
    for k, ax in enumerate(axes.flat):
        if k >= len(sizes):
            ax.set_visible(False)
            continue
        for c in range(sizes[k]):
            ax.plot(steps, p[:, task, bounds[k] + c], color=colors[c], lw=1.4,
                    marker="." if len(steps) <= 30 else None, ms=4)
        ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"layer {k} ({sizes[k]} components)", fontsize=9)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("connection probability")
        if k + ncols >= len(sizes):
            ax.set_xlabel("step")
            ax.xaxis.set_tick_params(labelbottom=True)
    handles = [Line2D([], [], color=colors[c], lw=1.4, label=str(c)) for c in range(max(sizes))]
    _legend_below(fig, handles=handles, fontsize=7, frameon=False,
                  ncols=min(len(handles), 16), title="component (index within its layer)",
                  title_fontsize=8)
    name = task_name or f"task {task}"
    fig.suptitle(title or f"connection probabilities of {name} over training", fontsize=10)
    return _save(fig, out_path)


# ---------------------------------------------------------------------- run


def _sharing_kind(result: dict | None) -> str | None:
    """The ``kind`` of what a run learned about sharing (``result.json``'s ``sharing``, the
    core's :meth:`~flexmtl.sharing.SharingCore.summary`); None for unfinished runs."""
    sharing = (result or {}).get("sharing")
    kind = sharing.get("kind") if isinstance(sharing, dict) else None
    return kind if isinstance(kind, str) else None


def _task_groups(tasks: list[dict], count: int) -> list[str] | None:
    """The ``cluster`` of every task, when ``result.json`` names one for each."""
    clusters = [t.get("cluster") for t in tasks if isinstance(t, dict)]
    if len(clusters) != count or any(c is None for c in clusters):
        return None
    return [str(c) for c in clusters]


def _plot_soft(method: str, seed_dir: Path, result: dict, label: str | None,
               out: Path) -> list[Path]:
    snaps = [(step, x) for step, x in TrainingRun(seed_dir).sharing_snapshots()
             if _numpy(x).ndim == 3]
    if not snaps:
        return []
    names = [t.get("name", "") for t in result.get("tasks") or []] or None
    step, final = snaps[-1]
    where = f"{method}, {seed_dir.name}" + (f", {label}" if label else "")
    return [
        plot_soft_order(final, out / PlotNames.soft_order(method), names,
                        title=f"learned soft order at step {step} ({where}); red: strongest path"),
        plot_scale_trajectories(snaps, out / PlotNames.scale_trajectories(method), names),
    ]


def _plot_allocation(method: str, seed_dir: Path, result: dict, label: str | None,
                     out: Path) -> list[Path]:
    sharing = result["sharing"]
    try:
        embeddings = _binary(sharing["embeddings"])
        sizes = _layer_sizes(sharing.get("layer_sizes"), embeddings.shape[1])
    except (KeyError, TypeError, ValueError):  # a malformed entry: nothing to plot from it
        return []
    tasks = [t for t in result.get("tasks") or [] if isinstance(t, dict)]
    names = [t.get("name", "") for t in tasks] or None
    groups = _task_groups(tasks, embeddings.shape[0])
    where = f"{method}, {seed_dir.name}" + (f", {label}" if label else "")
    written = [
        plot_allocation(embeddings, out / PlotNames.allocation(method), names, sizes, groups,
                        title=f"task embeddings of the selected checkpoint\n({where})"),
        plot_similarity(embeddings, out / PlotNames.similarity(method), names, groups,
                        title=f"cosine similarity of the task embeddings\n({where})"),
    ]
    snaps = [(step, x) for step, x in TrainingRun(seed_dir).sharing_snapshots()
             if tuple(_numpy(x).shape) == embeddings.shape]
    history = np.stack([_numpy(x) for _, x in snaps]) if snaps else np.zeros((0, 0))
    moving = len(snaps) > 1 and bool(np.ptp(history, axis=0).max() > 0)
    if moving:  # a fixed allocation (shared bottom, no sharing) has no trajectory to show
        name = (names or [None])[0]
        written.append(plot_allocation_trajectories(
            snaps, out / PlotNames.allocation_trajectories(method), sizes, 0, name,
            title=f"connection probabilities of {name or 'task 0'} over training ({where})"))
    return written


#: a run's sharing plots by the ``kind`` of its core's summary:
#: ``fn(method, seed_dir, result, sweep_label, out_dir) -> written paths``
SharingPlot = Callable[[str, Path, dict, "str | None", Path], list[Path]]
SHARING_PLOTS: Registry[SharingPlot] = Registry("sharing plot")
SHARING_PLOTS.register("soft-order", _plot_soft)
SHARING_PLOTS.register("allocation", _plot_allocation)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the plots of a run folder into ``run_dir/plots`` and return their paths.

    ``learning_curves.png`` (Fig. 5b) when any eval log exists. For each method, from seed 0
    at the primary sweep point:

    What a method's core learned is drawn by the plot registered in :data:`SHARING_PLOTS`
    for the ``kind`` of its ``result.json`` sharing summary (other kinds: none):

    * soft ordering (kind ``soft-order``): ``soft_order.png`` (Fig. 4d, final snapshot) and
      ``scale_trajectories.png`` (Fig. 4b-c), suffixed ``_<method>`` for a method not named
      ``soft``;
    * learned allocation (sharing kind ``allocation``): ``allocation_<method>.png``
      (Gumbel-Matrix Fig. 5), ``similarity_<method>.png`` (Fig. 6), tasks grouped by their
      ``cluster`` when ``result.json`` names one, and ``allocation_trajectories_<method>.png``
      (Fig. 8, first task) when ``sharing.pt`` holds snapshots in which the probabilities
      change (not for fixed allocations).

    A ``layer-vis`` run's ``layer_sweep_layer1.png`` (soft ordering Table 1) needs its model
    rebuilt: :func:`flexmtl.experiments.layer_visualization.plot_layer_vis` draws it.

    For sweeps ``sweep.png`` (Figs. 2 / 4a): test accuracy, or test loss where no method has
    an accuracy (regression). What has no data is skipped.
    """
    run_dir = Path(run_dir)
    out = ExperimentFolder(run_dir).plots
    written: list[Path] = []
    if _curves(run_dir, "loss")[0]:
        written.append(plot_learning_curves(run_dir, out / PlotNames.LEARNING_CURVES))

    point, label = _point_dir(run_dir)
    for method, mdir in _method_dirs(point, run_dir).items():
        seeds = _seed_dirs(mdir)
        if not seeds:
            continue
        seed_dir = next((p for p in seeds if TrainingRun(p).seed == 0), seeds[0])
        result = _read_json(TrainingRun(seed_dir).result)
        kind = _sharing_kind(result)
        if kind is not None and kind in SHARING_PLOTS:
            written += SHARING_PLOTS.get(kind)(method, seed_dir, result or {}, label, out)

    results = _read_json(ExperimentFolder(run_dir).results) or {}
    points = (results.get("sweep") or {}).get("points") or []
    # the test split's metric, or the validation split's where the tasks have none (the
    # UCI protocol), as the runner's table reports them
    for metric in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        if any(metric in (m.get("metrics") or {}) for p in points
               for m in (p.get("methods") or {}).values()):
            written.append(plot_sweep(results, out / PlotNames.SWEEP, metric))
            break
    return written
