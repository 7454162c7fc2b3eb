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

from flexmtl.analysis.plots import (  # noqa: E402
    plot_learning_curves,
    plot_run,
    plot_scale_trajectories,
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
              "tasks": [{"name": t, "note": ""} for t in TASKS]}
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
