"""Planted structure (flexmtl.data.planted, flexmtl.analysis.planted, the planted-orders
experiment): the generator's tasks are its teacher's plus the stated noise, the given
blocks are the teacher's layers (one-hot scales on the true orders reproduce the teacher
exactly), and order recovery scores known cases exactly, its chance level by Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexmtl.analysis.planted import order_recovery
from flexmtl.data.planted import planted_orders
from flexmtl.errors import ConfigError, ShapeError
from flexmtl.experiments import get_experiment


def one_hot(orders, layers):
    s = np.zeros((len(orders), layers, len(orders[0])))
    for t, order in enumerate(orders):
        for d, layer in enumerate(order):
            s[t, layer, d] = 1.0
    return s


def test_planted_tasks_are_the_teacher_plus_the_stated_noise():
    data = planted_orders(5, layers=3, width=8, samples=(4000, 100, 100), noise=0.1, seed=3)
    assert len(set(data.orders)) == 5 and all(sorted(o) == [0, 1, 2] for o in data.orders)
    for t in range(5):
        (x, y), (xv, yv), (xt, yt) = data.splits[t]
        assert x.shape == (4000, 8) and xv.shape == xt.shape == (100, 8)
        residual = y - data.teacher(x, t)
        assert residual.std() == pytest.approx(0.1, rel=0.05)  # the noise, nothing else
        # standardised on the training inputs: mean 0, standard deviation 1
        assert data.teacher(x, t).std() == pytest.approx(1.0, rel=1e-4)
        assert data.teacher(x, t).mean() == pytest.approx(0.0, abs=1e-4)
    again = planted_orders(5, layers=3, width=8, samples=(4000, 100, 100), noise=0.1, seed=3)
    assert again.orders == data.orders and np.array_equal(again.splits[0][0][1],
                                                          data.splits[0][0][1])
    # as many tasks as permutations: every permutation once; more: drawn with replacement
    assert len(set(planted_orders(6, layers=3, width=4, samples=(2, 1, 1)).orders)) == 6
    assert len(planted_orders(8, layers=3, width=4, samples=(2, 1, 1)).orders) == 8
    with pytest.raises(ConfigError):
        planted_orders(2, noise=-1.0)


def test_order_recovery_scores_known_cases():
    orders = [(0, 2, 3, 1), (0, 3, 1, 2), (3, 1, 0, 2)]
    perfect = one_hot(orders, 4)
    assert order_recovery(perfect, orders)["order_match"] == 1.0
    assert order_recovery(perfect, orders)["scale_max"] == 1.0
    swapped = perfect[:, [1, 0, 3, 2], :]  # the model's layer 0 plays the true layer 1, ...
    assert order_recovery(swapped, orders)["order_match"] == 0.0
    assert order_recovery(swapped, orders, relabel=True)["order_match"] == 1.0
    uniform = order_recovery(np.full((3, 4, 4), 0.25), orders)
    # argmax of a tie is layer 0, at one depth of each task: 3 of 12 positions
    assert uniform["order_match"] == 0.25 and uniform["scale_max"] == 0.25
    # chance: a uniform layer per position matches with probability 1/4
    assert uniform["order_chance"] == pytest.approx(0.25, abs=0.01)
    assert uniform["order_chance_p95"] > uniform["order_chance"]
    # the best relabelling lifts chance: the statistic is a maximum over 4! relabellings
    assert order_recovery(np.full((3, 4, 4), 0.25), orders, relabel=True)["order_chance"] > 0.4
    with pytest.raises(ShapeError):
        order_recovery(np.zeros((3, 4)), orders)
    with pytest.raises(ConfigError):
        order_recovery(np.zeros((3, 2, 4)), orders)


def test_relabelled_matches_agree_with_the_assignment_solver():
    """Enumerating relabellings (few layers) and linear assignment (many) agree."""
    from flexmtl.analysis import planted as module

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=(4, 5))
    picks = rng.integers(0, 5, size=(20, 4, 5))
    enumerated = module._relabelled_matches(picks, truth, 5)
    old, module._ENUMERATE = module._ENUMERATE, 0
    try:
        assigned = module._relabelled_matches(picks, truth, 5)
    finally:
        module._ENUMERATE = old
    assert np.allclose(enumerated, assigned)


def test_given_blocks_are_the_teachers_layers():
    """With one-hot scales on the true orders, the model's core computes the teacher's last
    layer: its readout over the task's scale equals the teacher's output."""
    exp = get_experiment("planted-orders")
    cfg = exp.resolve_config(overrides={"samples": 40, "num_tasks": 3})
    tasks = exp.build_tasks(cfg, 0)
    model = exp.build_model("soft", tasks, cfg, 0)
    from flexmtl.experiments.planted import _orders_data

    data = _orders_data(cfg)
    frozen = [p for b in model.core.blocks for p in b.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert not any(p.requires_grad for p in model.encoders[0].parameters())
    with torch.no_grad():
        model.core.scale_logits.copy_(torch.from_numpy(one_hot(data.orders, 4) * 60.0 - 30.0))
    model.eval()
    for t, task in enumerate(tasks):
        x, _ = task.test
        h = model.core(model.encoders[t](x), t).double()
        out = (h @ torch.from_numpy(data.readout) - data.offsets[t]) / data.scales[t]
        assert torch.allclose(out.float(), torch.from_numpy(data.teacher(x.numpy(), t)),
                              atol=1e-5)
    # the analysis reads the scales: all positions matched
    assert exp.analyze(model, tasks, cfg)["order_match"] == 1.0
    assert exp.analyze(exp.build_model("parallel", tasks, cfg, 0), tasks, cfg) == {}
    learned = exp.resolve_config(overrides={"samples": 40, "num_tasks": 3, "blocks": "learned"})
    assert all(p.requires_grad for p in exp.build_model("soft", tasks, learned, 0).parameters())
    with pytest.raises(ConfigError, match="blocks"):
        exp.build_tasks(exp.resolve_config(overrides={"blocks": "frozen"}), 0)


def test_planted_groups_share_their_teacher():
    from flexmtl.data.planted import planted_groups

    data = planted_groups(3, 2, features=5, hidden=8, samples=(3000, 10, 10), noise=0.1, seed=1)
    assert data.groups == (0, 0, 1, 1, 2, 2)
    y = np.stack([ys[0] for ys in data.ys])  # train targets of the 6 tasks
    # within a group: the same teacher, so the difference is two noises (sd 0.1 * sqrt 2)
    assert np.std(y[0] - y[1]) == pytest.approx(0.1 * np.sqrt(2), rel=0.05)
    # across groups: unrelated standardised teachers, far apart
    assert np.std(y[0] - y[2]) > 0.5
    # each teacher standardised on the training inputs: targets mean 0, sd sqrt(1 + 0.1^2)
    assert np.abs(y.mean(axis=1)).max() < 0.01
    assert y.std(axis=1) == pytest.approx(np.sqrt(1.01), rel=0.02)
    assert all(x.shape[1] == 5 for x in data.x)
    with pytest.raises(ConfigError):
        planted_groups(0)


def test_adjusted_rand_index_matches_its_definition():
    from flexmtl.analysis.planted import adjusted_rand_index

    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0  # labels are names only
    assert adjusted_rand_index([0, 0, 0], [0, 0, 0]) == 1.0
    assert adjusted_rand_index([4], [2]) == 1.0  # one item (no pairs): the same partition
    assert adjusted_rand_index([], []) == 1.0
    # Hubert & Arabie's worked value: ARI = (index - expected) / (mean - expected)
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    index, rows, cols = 2.0, 6.0, 3.0  # pairs together in both, in a, in b
    expected = rows * cols / 15.0
    assert adjusted_rand_index(a, b) == pytest.approx((index - expected) /
                                                      ((rows + cols) / 2 - expected))
    with pytest.raises(ShapeError):
        adjusted_rand_index([0, 1], [0, 1, 2])


def test_group_recovery_scores_known_embeddings():
    from flexmtl.analysis.planted import group_recovery

    groups = [0, 0, 1, 1, 2, 2]
    exact = np.array([[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0],
                      [0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 0, 1], [1, 0, 1, 0, 0, 1]])
    found = group_recovery(exact, groups)
    assert found["group_ari"] == 1.0 and found["groups_separated"] == 1.0
    assert found["within_group_similarity"] == 1.0 and found["across_group_similarity"] < 0.5
    everyone = group_recovery(np.ones((6, 4)), groups)  # shared bottom: nothing revealed
    assert everyone["group_ari"] == 0.0 and everyone["groups_separated"] == 0.0
    alone = group_recovery(np.eye(6), groups)  # no sharing: every pair orthogonal
    assert alone["within_group_similarity"] == alone["across_group_similarity"] == 0.0
    with pytest.raises(ShapeError):
        group_recovery(np.ones((5, 4)), groups)


def test_planted_groups_experiment_reads_the_routed_core():
    exp = get_experiment("planted-groups")
    cfg = exp.resolve_config(overrides={"samples": 40})
    tasks = exp.build_tasks(cfg, 0)
    assert [t.info["group"] for t in tasks] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    out = exp.analyze(exp.build_model("no-sharing", tasks, cfg, 0), tasks, cfg)
    assert out["active_connections"] == pytest.approx(100 / 9)
    assert out["within_group_similarity"] == 0.0 and out["distinct_embeddings"] == 9


def _probe():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "probes" / "planted_orders.py"
    spec = importlib.util.spec_from_file_location("planted_orders_probe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_probe_finds_orders_by_exhaustive_search_and_its_gates_normalise():
    """probes/planted_orders.py: the hard order chosen on validation is the true one, at the
    noise floor; the Sinkhorn gate is doubly stochastic, the softmax sums over layers, the
    Gumbel gates give hard orders at evaluation."""
    probe = _probe()
    data = planted_orders(2, layers=3, width=6, samples=(400, 200, 200), noise=0.05, seed=0)
    for t in range(2):
        found = probe.exhaustive(data, t)
        assert found["found"] and found["test"] < 0.05 ** 2 * 1.5 < found["others_median"]
    logits = torch.randn(4, 4)
    sink = probe.gate(logits, probe.Remedy("s", "sinkhorn", 0.1), 1.0, True)
    assert torch.allclose(sink.sum(0), torch.ones(4), atol=1e-4)
    assert torch.allclose(sink.sum(1), torch.ones(4), atol=1e-4)
    soft = probe.gate(logits, probe.Remedy("m", "softmax", 0.1), 0.5, True)
    assert torch.allclose(soft.sum(0), torch.ones(4))
    hard = probe.gate(logits, probe.Remedy("g", "gumbel-hard", 0.1), 1.0, False)
    assert torch.equal(hard.argmax(0), logits.argmax(0)) and set(hard.unique().tolist()) <= {0, 1}
