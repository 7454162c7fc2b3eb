"""Plots of a run folder (flexmtl.analysis.plots) on a fake run in the runner's layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402
import torch  # noqa: E402

import flexmtl.analysis.plots as plots  # noqa: E402
from flexmtl.analysis.plots import (  # noqa: E402
    plot_allocation,
    plot_allocation_trajectories,
    plot_learning_curves,
    plot_run,
    plot_scale_trajectories,
    plot_similarity,
    plot_soft_order,
    strongest_path,
)

TASKS = ["mnist 0v1", "mnist 2v3", "mnist 4v5"]
METHODS = ["parallel", "soft"]
SEEDS = [0, 1]
LAYERS, DEPTHS = 4, 4


def _summary(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    return {"mean": mean, "ci95": 0.01, "std": 0.01, "n": len(values), "values": values}


def _scales(step: int) -> torch.Tensor:
    """Scales that move from uniform towards a distinct hard order per task."""
    logits = torch.zeros(len(TASKS), LAYERS, DEPTHS)
    for t in range(len(TASKS)):
        for k in range(DEPTHS):
            logits[t, (k + t) % LAYERS, k] = step / 50
    return torch.softmax(logits, dim=1)


def _write_seed(seed_dir: Path, method: str, seed: int) -> None:
    seed_dir.mkdir(parents=True)
    cols = ["step", "loss", "accuracy"] + [f"loss/{t}" for t in TASKS] + [
        f"accuracy/{t}" for t in TASKS]
    with open(seed_dir / "eval_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for step in (50, 100, 150, 200):
            loss = 3.0 / (1 + step / 100) + 0.05 * seed + (0.2 if method == "parallel" else 0)
            w.writerow([step, loss, 1 - loss / 4] + [loss / 3] * 3 + [1 - loss / 4] * 3)
    result = {"method": method, "seed": seed, "best_step": 200, "steps": 200,
              "tasks": [{"name": t, "note": ""} for t in TASKS],
              "sharing": {"kind": "soft-order" if method == "soft" else "fixed-order"}}
    (seed_dir / "result.json").write_text(json.dumps(result))
    if method == "soft" and seed == 0:
        torch.save({"sharing": [(s, _scales(s)) for s in (0, 100, 200)]},
                   seed_dir / "sharing.pt")


def _methods_block() -> dict:
    return {m: {"metrics": {"test_accuracy": _summary([0.8 + 0.01 * s for s in SEEDS])}}
            for m in METHODS}


def _make_run(root: Path, sweep: tuple[str, list[int]] | None) -> Path:
    values = [None] if sweep is None else sweep[1]
    for value in values:
        point = root if value is None else root / f"{sweep[0]}={value}"
        for method in METHODS:
            for seed in SEEDS:
                _write_seed(point / method / f"seed-{seed}", method, seed)
    results = {"experiment": "mnist-pairs", "seeds": SEEDS, "methods": _methods_block(),
               "sweep": None}
    if sweep is not None:
        results["sweep"] = {"key": sweep[0], "primary": sweep[1][-1], "points": [
            {"value": v, "methods": _methods_block()} for v in sweep[1]]}
    (root / "results.json").write_text(json.dumps(results))
    return root


def _check_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_strongest_path_is_argmax():
    s = _scales(200)[1].numpy()
    assert strongest_path(s) == [int(j) for j in s.argmax(axis=0)] == [1, 2, 3, 0]
    assert strongest_path(torch.tensor([[0.1, 0.7], [0.9, 0.3]])) == [1, 0]
    with pytest.raises(ValueError):
        strongest_path(np.zeros(3))


def test_soft_order_draws_the_strongest_path(tmp_path):
    import matplotlib.pyplot as plt

    scales = _scales(200)
    captured = []
    original = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        captured.append([int(v) for v in args[1]])
        return original(ax, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "plot", spy)
        _check_png(plot_soft_order(scales, tmp_path / "order.png", TASKS))
    assert captured == [strongest_path(scales[t]) for t in range(len(TASKS))]


def test_plot_run_without_sweep(tmp_path):
    run = _make_run(tmp_path / "run", None)
    paths = plot_run(run)
    assert sorted(p.name for p in paths) == [
        "learning_curves.png", "scale_trajectories.png", "soft_order.png"]
    for p in paths:
        assert p.parent == run / "plots"
        _check_png(p)


def test_plot_run_with_sweep(tmp_path):
    run = _make_run(tmp_path / "run", ("n", [64, 256, 1024]))
    paths = plot_run(run)
    assert sorted(p.name for p in paths) == [
        "learning_curves.png", "scale_trajectories.png", "soft_order.png", "sweep.png"]
    for p in paths:
        _check_png(p)


def test_plot_run_with_sweep_and_no_test_split(tmp_path, monkeypatch):
    """Tasks without a test split (the UCI protocol): the sweep plot shows the validation
    split's metric, as the runner's table does."""
    import flexmtl.analysis.plots as plots_mod

    run = _make_run(tmp_path / "run", ("dropout", [0, 1]))
    results = json.loads((run / "results.json").read_text())
    for point in results["sweep"]["points"]:
        for entry in point["methods"].values():
            entry["metrics"] = {"val_accuracy": entry["metrics"]["test_accuracy"]}
    (run / "results.json").write_text(json.dumps(results))
    drawn = []
    original = plots_mod.plot_sweep
    monkeypatch.setattr(plots_mod, "plot_sweep", lambda r, out, metric: drawn.append(metric)
                        or original(r, out, metric))
    paths = plot_run(run)
    assert drawn == ["val_accuracy"] and "sweep.png" in [p.name for p in paths]


def test_plot_run_without_results_json_uses_method_folders(tmp_path):
    run = _make_run(tmp_path / "run", None)
    (run / "results.json").unlink()
    assert {p.name for p in plot_run(run)} == {
        "learning_curves.png", "scale_trajectories.png", "soft_order.png"}


def test_plot_run_skips_what_has_no_data(tmp_path):
    assert plot_run(tmp_path) == []
    (tmp_path / "soft" / "seed-0").mkdir(parents=True)
    (tmp_path / "soft" / "seed-0" / "sharing.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "results.json").write_text("{")
    assert plot_run(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        plot_learning_curves(tmp_path, tmp_path / "lc.png")


def test_learning_curves_band_and_accuracy_key(tmp_path):
    run = _make_run(tmp_path / "run", None)
    _check_png(plot_learning_curves(run, tmp_path / "acc.png", key="accuracy"))
    _check_png(plot_learning_curves(run, tmp_path / "task.png", key=f"loss/{TASKS[0]}"))


def test_scale_trajectories_single_task_and_many_pairs(tmp_path):
    snaps = [(s, _scales(s)[:1]) for s in (0, 100)]
    _check_png(plot_scale_trajectories(snaps, tmp_path / "one.png"))
    many = [(s, torch.softmax(torch.randn(6, 3, 3), dim=1)) for s in (0, 10, 20)]
    _check_png(plot_scale_trajectories(many, tmp_path / "many.png"))


def test_figures_are_closed(tmp_path):
    import matplotlib.pyplot as plt

    plot_run(_make_run(tmp_path / "run", None))
    assert plt.get_fignums() == []


# ---------------------------------------------------------------------- allocation (Gumbel-Matrix)

ALLOC_TASKS = ["mnist-0", "fashion-0", "mnist-1", "fashion-1", "mnist-2"]
ALLOC_CLUSTERS = ["mnist", "fashion", "mnist", "fashion", "mnist"]
LAYER_SIZES = [4, 2, 3]
PATTERN = np.array([[1, 0, 1, 0, 1, 1, 0, 0, 1],
                    [0, 1, 0, 1, 0, 1, 1, 1, 0],
                    [1, 0, 1, 0, 1, 1, 0, 0, 1],
                    [0, 0, 0, 0, 0, 0, 0, 0, 0],
                    [1, 1, 1, 0, 1, 0, 0, 1, 1]])


def _spy(mp, name: str) -> list:
    """Record the positional arguments of every ``plt.Axes.<name>`` call."""
    import matplotlib.pyplot as plt

    calls = []
    original = getattr(plt.Axes, name)

    def spy(ax, *args, **kwargs):
        calls.append(args)
        return original(ax, *args, **kwargs)

    mp.setattr(plt.Axes, name, spy)
    return calls


def _numpy_cosine(e: np.ndarray) -> np.ndarray:
    """Cosine similarity written out independently (zero rows: 1 with each other, else 0)."""
    e = e.astype(float)
    norms = np.sqrt((e * e).sum(axis=1))
    out = np.zeros((len(e), len(e)))
    for i in range(len(e)):
        for j in range(len(e)):
            if norms[i] == 0 or norms[j] == 0:
                out[i, j] = float(norms[i] == norms[j] == 0)
            else:
                out[i, j] = float(e[i] @ e[j]) / (norms[i] * norms[j])
    return out


def test_allocation_draws_the_pattern_with_layers_and_groups(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        images, vlines, hlines = _spy(mp, "imshow"), _spy(mp, "axvline"), _spy(mp, "axhline")
        _check_png(plot_allocation(torch.tensor(PATTERN), tmp_path / "plain.png",
                                   ALLOC_TASKS, LAYER_SIZES))
        assert len(images) == 1 and np.array_equal(images[0][0], PATTERN)
        assert [a[0] for a in vlines] == [3.5, 5.5]  # between layers of 4, 2 and 3
        assert hlines == []
        images.clear(), vlines.clear()
        _check_png(plot_allocation(PATTERN, tmp_path / "grouped.png", ALLOC_TASKS,
                                   LAYER_SIZES, groups=ALLOC_CLUSTERS))
    # groups are kept together, in order of their first task: mnist 0, 2, 4, fashion 1, 3
    assert np.array_equal(images[0][0], PATTERN[[0, 2, 4, 1, 3]])
    assert [a[0] for a in hlines] == [2.5]
    with pytest.raises(ValueError):
        plot_allocation(PATTERN, tmp_path / "bad.png", layer_sizes=[4, 4])
    with pytest.raises(ValueError):
        plot_allocation(PATTERN, tmp_path / "bad.png", groups=["a", "b"])
    with pytest.raises(ValueError):
        plot_allocation(PATTERN[0], tmp_path / "bad.png")


def test_similarity_is_the_cosine_of_the_embeddings(tmp_path):
    expected = _numpy_cosine(PATTERN)
    assert np.allclose(np.diag(expected), 1.0) and np.isclose(expected[0, 2], 1.0)
    assert expected[3, 0] == 0.0 and expected[3, 3] == 1.0  # the all-zero row
    with pytest.MonkeyPatch.context() as mp:
        images = _spy(mp, "imshow")
        _check_png(plot_similarity(PATTERN, tmp_path / "sim.png", ALLOC_TASKS))
        _check_png(plot_similarity(PATTERN, tmp_path / "grouped.png", ALLOC_TASKS,
                                   ALLOC_CLUSTERS))
    assert np.allclose(images[0][0], expected)
    order = [0, 2, 4, 1, 3]
    assert np.allclose(images[1][0], expected[np.ix_(order, order)])


def _probabilities(step: int) -> torch.Tensor:
    """``[tasks, components]`` probabilities moving from 0.5 towards the pattern."""
    target = torch.tensor(PATTERN, dtype=torch.float32)
    return 0.5 + (target - 0.5) * min(step / 300, 0.98)


def test_allocation_trajectories_one_line_per_component(tmp_path):
    snaps = [(s, _probabilities(s)) for s in (0, 100, 200, 300)]
    with pytest.MonkeyPatch.context() as mp:
        lines = _spy(mp, "plot")
        _check_png(plot_allocation_trajectories(snaps, tmp_path / "traj.png", LAYER_SIZES,
                                                task=1, task_name=ALLOC_TASKS[1]))
    assert len(lines) == sum(LAYER_SIZES)
    for c, (steps, values) in enumerate(a[:2] for a in lines):
        assert list(steps) == [0, 100, 200, 300]
        assert np.allclose(values, [float(x[1, c]) for _, x in snaps])
    with pytest.raises(ValueError):
        plot_allocation_trajectories(snaps, tmp_path / "bad.png", [4, 4])
    with pytest.raises(ValueError):
        plot_allocation_trajectories(snaps, tmp_path / "bad.png", LAYER_SIZES, task=5)
    with pytest.raises(ValueError):
        plot_allocation_trajectories([], tmp_path / "bad.png", LAYER_SIZES)


def _write_regression_seed(seed_dir: Path, method: str, seed: int, sharing: dict | None,
                           snapshots: list | None) -> None:
    """A seed folder of a routed-core run on regression tasks (accuracy is NaN)."""
    seed_dir.mkdir(parents=True)
    with open(seed_dir / "eval_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "accuracy"])
        for step in (100, 200, 300):
            w.writerow([step, 2.0 / step + 0.01 * seed, float("nan")])
    tasks = [{"name": n, "note": "", "cluster": c} for n, c in zip(ALLOC_TASKS, ALLOC_CLUSTERS)]
    result = {"method": method, "seed": seed, "tasks": tasks, "sharing": sharing,
              "test": {"loss": 0.1, "accuracy": float("nan"), "tasks": {}}}
    (seed_dir / "result.json").write_text(json.dumps(result, allow_nan=True))
    if snapshots is not None:
        torch.save({"sharing": snapshots}, seed_dir / "sharing.pt")


def _make_allocation_run(root: Path) -> Path:
    """A sweep (rho) of a regression experiment: ``gumbel`` (learned allocation, snapshots),
    ``no-sharing`` (fixed allocation: constant snapshots), ``plain`` (no sharing entry)."""
    snaps = [(s, _probabilities(s)) for s in (0, 100, 200, 300)]
    gumbel = {"kind": "allocation", "layer_sizes": LAYER_SIZES,
              "probabilities": _probabilities(300).tolist(), "embeddings": PATTERN.tolist()}
    fixed = {**gumbel, "embeddings": np.eye(5, 9, dtype=int).tolist()}
    loss_only = {"test_loss": _summary([0.1, 0.2])}
    for rho in (0.0, 1.0):
        for seed in (0, 1):
            point = root / f"rho={rho}"
            _write_regression_seed(point / "gumbel" / f"seed-{seed}", "gumbel", seed, gumbel,
                                   snaps)
            _write_regression_seed(point / "no-sharing" / f"seed-{seed}", "no-sharing", seed,
                                   fixed, [(s, torch.eye(5, 9)) for s in (0, 100)])
            _write_regression_seed(point / "plain" / f"seed-{seed}", "plain", seed, None, None)
    results = {"experiment": "synthetic-transfer", "seeds": [0, 1],
               "methods": {m: {"metrics": loss_only} for m in ("gumbel", "no-sharing")},
               "sweep": {"key": "rho", "primary": 1.0, "points": [
                   {"value": v, "methods": {m: {"metrics": loss_only}
                                            for m in ("gumbel", "no-sharing", "plain")}}
                   for v in (0.0, 1.0)]}}
    (root / "results.json").write_text(json.dumps(results))
    return root


def test_plot_run_allocation_method(tmp_path):
    run = _make_allocation_run(tmp_path / "run")
    calls = []
    original = plots.plot_allocation

    def spy(embeddings, out_path, *args, **kwargs):
        calls.append((np.asarray(embeddings), args))
        return original(embeddings, out_path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_allocation", spy)
        paths = plot_run(run)
    assert sorted(p.name for p in paths) == [
        "allocation_gumbel.png", "allocation_no-sharing.png",
        "allocation_trajectories_gumbel.png", "learning_curves.png", "similarity_gumbel.png",
        "similarity_no-sharing.png", "sweep.png"]  # a loss sweep: regression has no accuracy
    # (no trajectories for the fixed allocation: its probabilities never change)
    for p in paths:
        assert p.parent == run / "plots"
        _check_png(p)
    embeddings, (names, sizes, groups) = calls[0][0], calls[0][1][:3]
    assert np.array_equal(embeddings, PATTERN)
    assert (names, list(sizes), groups) == (ALLOC_TASKS, LAYER_SIZES, ALLOC_CLUSTERS)
    with pytest.raises(FileNotFoundError):  # accuracy is NaN throughout
        plot_learning_curves(run, tmp_path / "acc.png", key="accuracy")


def test_plot_run_soft_method_from_sharing_kind(tmp_path):
    run = _make_run(tmp_path / "run", None)
    soft = _read(run / "soft" / "seed-0" / "result.json")
    soft["sharing"] = {"kind": "soft-order", "gate": "softmax", "scales": [],
                       "strongest_path": []}
    (run / "soft" / "seed-0" / "result.json").write_text(json.dumps(soft))
    # a soft-order method under another name is plotted with its name as suffix
    renamed = run / "soft-ordering"
    (run / "soft").rename(renamed)
    assert {p.name for p in plot_run(run)} == {
        "learning_curves.png", "scale_trajectories_soft-ordering.png",
        "soft_order_soft-ordering.png"}
    # the kind decides, never the method's name: no sharing summary, no sharing plots
    renamed.rename(run / "soft")
    for sharing in (None, {"kind": "fixed-order"}):
        soft["sharing"] = sharing
        (run / "soft" / "seed-0" / "result.json").write_text(json.dumps(soft))
        assert {p.name for p in plot_run(run)} == {"learning_curves.png"}
    del soft["sharing"]  # an unfinished or older run
    (run / "soft" / "seed-0" / "result.json").write_text(json.dumps(soft))
    assert {p.name for p in plot_run(run)} == {"learning_curves.png"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())
