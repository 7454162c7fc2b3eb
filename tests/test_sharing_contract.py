"""The SharingCore contract: a method of one's own is one class plus one registration, and
then runs through the trainer, the runner and the plots without touching them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import flexmtl as fm
from flexmtl.runner import run_experiment
from flexmtl.sharing import METHODS, Method, SharingCore, make_core, register_method
from flexmtl.training.optim import parameter_groups


class ToyGate(SharingCore):
    """Each task learns one gate ``g_t`` per block: ``h <- g_t * block(h) + (1 - g_t) * h``."""

    kind = "toy-gate"

    def __init__(self, blocks, num_tasks, dropout=0.0, penalty=0.01):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.num_tasks = num_tasks
        self.feature_shape = fm.sharing.infer_feature_shape(blocks[0])
        self.output_shape = self.feature_shape
        self.penalty = penalty
        self.gate_logits = nn.Parameter(torch.zeros(num_tasks, len(blocks)))
        self.forward_tasks_calls = 0

    def gates(self):
        return torch.sigmoid(self.gate_logits)

    def forward(self, h, task):
        for j, block in enumerate(self.blocks):
            g = self.gates()[task, j]
            h = g * torch.relu(block(h)) + (1 - g) * h
        return h

    def forward_tasks(self, hs, tasks):
        self.forward_tasks_calls += 1
        return super().forward_tasks(hs, tasks)

    def sharing_parameters(self):
        return [self.gate_logits]

    def sharing_lr(self, lr):
        return 3.0 * lr

    def regularization(self, task):
        return self.penalty * self.gates()[task].sum()

    def sharing_snapshot(self):
        return self.gates()

    @torch.no_grad()
    def summary(self):
        return {"kind": self.kind, "gates": self.gates().tolist()}


def _build(blocks, num_tasks, seed=None, **options):  # nothing to draw from the seed
    return ToyGate(list(blocks), num_tasks, **options)


@pytest.fixture
def toy_method():
    register_method(Method("toy-gate", "ordering", _build, options=("dropout",),
                           summary="a learned gate per task and block"))
    try:
        yield
    finally:
        METHODS.unregister("toy-gate")
    assert "toy-gate" not in METHODS


def _tasks(n=64, features=6):
    rng = np.random.default_rng(0)
    def split():
        x = rng.random((n, features), dtype=np.float32)
        return x, (x[:, 0] > 0.5).astype(np.int64)
    return [fm.Task(name, "multiclass", split(), split(), split(), num_outputs=2)
            for name in ("a", "b")]


def test_registered_method_builds_and_trains(toy_method, tmp_path):
    tasks = _tasks()
    core = make_core("toy-gate", [nn.Linear(8, 8) for _ in range(3)], len(tasks))
    assert isinstance(core, ToyGate)
    model = fm.build_model(tasks, core)
    cfg = fm.TrainConfig(steps=6, eval_every=3, lr=0.01, batch_size=16, progress=False)
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    assert groups["sharing"]["params"] == [core.gate_logits]
    assert groups["sharing"]["lr"] == pytest.approx(0.03) and groups["sharing"]["weight_decay"] == 0

    trainer = fm.Trainer(model, tasks, cfg, out_dir=tmp_path)
    before = core.gate_logits.detach().clone()
    trainer.fit()
    assert core.forward_tasks_calls >= 6  # the model ran the core's all-task forward
    assert not torch.equal(core.gate_logits, before)  # the gates were trained
    snaps = torch.load(tmp_path / "sharing.pt", weights_only=False)["sharing"]
    assert [step for step, _ in snaps] == [0, 3, 6] and snaps[0][1].shape == (2, 3)


def test_regularization_is_added_to_the_training_loss(toy_method):
    tasks = _tasks()
    torch.manual_seed(0)
    core = make_core("toy-gate", [nn.Linear(8, 8) for _ in range(2)], len(tasks), penalty=5.0)
    model = fm.build_model(tasks, core)
    trainer = fm.Trainer(model, tasks, fm.TrainConfig(steps=1, progress=False))
    batches = [(t.train.x[:8], t.train.y[:8]) for t in tasks]
    with torch.no_grad():
        plain = [t.loss(model(x, i), y) for i, (t, (x, y)) in enumerate(zip(tasks, batches))]
    losses = trainer.training_losses([0, 1], batches)
    for i, loss in enumerate(losses):  # gates start at 0.5: 5.0 * (0.5 + 0.5)
        torch.testing.assert_close(loss.detach(), plain[i] + 5.0)


def test_registered_method_runs_in_an_experiment_and_its_plots(toy_method, tmp_path):
    from flexmtl.analysis.plots import SHARING_PLOTS, plot_run

    assert "toy-gate" in fm.experiments.get_experiment("random-tasks").method_names()
    results = run_experiment("random-tasks", methods=["toy-gate", "parallel"], seeds=1, steps=4,
                             out_dir=tmp_path, overrides={"eval_every": 2}, sweep=False,
                             progress=False, plots=False, log=lambda _: None)
    assert set(results["methods"]) == {"toy-gate", "parallel"}
    run = json.loads((tmp_path / "toy-gate" / "seed-0" / "result.json").read_text())
    assert run["sharing"]["kind"] == "toy-gate"
    assert np.array(run["sharing"]["gates"]).shape == (2, 2)
    parallel = json.loads((tmp_path / "parallel" / "seed-0" / "result.json").read_text())
    assert parallel["sharing"] == {"kind": "fixed-order", "orders": [[0, 1], [0, 1]]}

    drawn = []
    def plot_gates(method, seed_dir, result, label, out):
        drawn.append((method, result["sharing"]["gates"]))
        return []

    SHARING_PLOTS.register("toy-gate", plot_gates)
    try:
        names = {p.name for p in plot_run(tmp_path)}
    finally:
        SHARING_PLOTS.unregister("toy-gate")
    assert "learning_curves.png" in names
    assert drawn == [("toy-gate", run["sharing"]["gates"])]


def test_methods_of_a_family_and_unknown_names():
    assert fm.sharing.methods_of("ordering") == ("single", "parallel", "permuted", "soft")
    assert fm.sharing.methods_of("allocation") == ("gumbel", "gumbel-budget", "shared-bottom",
                                                   "no-sharing")
    with pytest.raises(fm.UnknownNameError, match="soft"):
        make_core("sofft", [nn.Linear(4, 4)], 2)
    with pytest.raises(fm.ConfigError, match="already registered"):
        register_method(Method("soft", "ordering", _build))
    with pytest.raises(fm.UnknownNameError):
        fm.experiments.get_experiment("uci").check_methods(["gumbel"])


def test_every_method_builds_through_make_core():
    blocks = lambda: [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)]  # noqa: E731
    for name in fm.sharing.methods_of("ordering"):
        core = make_core(name, blocks(), 2, seed=0, dropout=0.1)
        assert isinstance(core, SharingCore) and core.output_shape == (4,)
    layers = lambda: [[nn.Linear(4, 4) for _ in range(2)], nn.ReLU()]  # noqa: E731
    for name in fm.sharing.methods_of("allocation"):
        options = {"budget": 0.5} if name == "gumbel-budget" else {}
        core = make_core(name, layers(), 2, feature_shape=(4,), **options)
        assert core.kind == "allocation" and core.output_shape == (4,)
        assert (core.regularization(0) is not None) == (name == "gumbel-budget")
    with pytest.raises(fm.ConfigError, match="budget"):
        make_core("gumbel-budget", layers(), 2, feature_shape=(4,))


def test_a_model_needs_a_sharing_core():
    with pytest.raises(fm.ConfigError, match="SharingCore"):
        fm.MultiTaskModel(nn.Linear(4, 4), [nn.Identity()], [nn.Identity()])
