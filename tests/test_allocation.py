"""Identities of learned parameter allocation (Gumbel-Matrix, Maziarz et al., Sec. III)."""

import math

import pytest
import torch
from torch import nn

from flexmtl.analysis.embeddings import cosine_similarity, group_tasks
from flexmtl.errors import ConfigError, ShapeError, UnknownNameError
from flexmtl.models import MultiTaskModel
from flexmtl.sharing.allocation import (
    FixedAllocation,
    GumbelMatrixAllocation,
    TemperatureSchedule,
    make_allocation,
    sample_gumbel,
)
from flexmtl.sharing.routed import RoutedCore, RoutedLayer

W = 5


def linears(n, width=W, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n)]


def set_probs(allocation, probs):
    """Set the logits of a GumbelMatrixAllocation so that P(connected) = probs."""
    p = torch.as_tensor(probs, dtype=torch.float32)
    with torch.no_grad():
        allocation.logits.copy_(torch.stack([p.log(), (1 - p).log()], dim=-1))


class Basis(nn.Module):
    """Ignores its input and outputs the unit vector e_c: a layer's output shows its weights."""

    def __init__(self, c, n):
        super().__init__()
        self.c, self.n = c, n

    def forward(self, h):
        out = h.new_zeros(h.shape[0], self.n)
        out[:, self.c] = 1.0
        return out


class Tripwire(nn.Module):
    """A component that must not be called in evaluation once armed."""

    def __init__(self, width=W):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.armed = False

    def forward(self, h):
        if self.armed and not self.training:
            raise RuntimeError("inactive component was called at evaluation")
        return self.linear(h)


# --------------------------------------------------------------------------- sampling
def test_sample_is_binary_forward_and_soft_backward():
    alloc = GumbelMatrixAllocation(2, 6, p_init=0.3)
    with torch.no_grad():
        alloc.logits.normal_()
    noise = sample_gumbel((6, 2), alloc.logits)
    tau, c = 0.7, torch.randn(6)

    y = alloc.sample(1, tau, noise)
    v = alloc.logits[1].detach() + noise
    assert torch.equal(y, (v[:, 0] >= v[:, 1]).float())  # exactly 0./1., the argmax
    (y * c).sum().backward()
    straight_through = alloc.logits.grad.clone()

    alloc.logits.grad = None
    soft = torch.softmax((alloc.logits[1] + noise) / tau, dim=-1)[:, 0]
    (soft * c).sum().backward()
    torch.testing.assert_close(straight_through, alloc.logits.grad, rtol=0, atol=0)
    assert straight_through[0].abs().sum() == 0  # other tasks get nothing


def test_sample_draws_its_noise_from_the_torch_rng():
    alloc = GumbelMatrixAllocation(1, 8)
    with torch.no_grad():
        alloc.logits.normal_()
    torch.manual_seed(3)
    drawn = alloc.sample(0, 1.0)
    torch.manual_seed(3)
    injected = alloc.sample(0, 1.0, sample_gumbel((8, 2), alloc.logits))
    assert torch.equal(drawn, injected)


def test_sample_frequency_matches_probability():
    alloc = GumbelMatrixAllocation(1, 500, p_init=0.3)
    torch.manual_seed(0)
    freq = torch.stack([alloc.sample(0, 1.0).detach() for _ in range(200)]).mean()
    assert abs(freq.item() - 0.3) < 0.01


def test_init_and_probs():
    alloc = GumbelMatrixAllocation(3, 4, p_init=0.97)
    assert alloc.logits.shape == (3, 4, 2)
    torch.testing.assert_close(alloc.logits[0, 0], torch.tensor([math.log(0.97), math.log(0.03)]))
    torch.testing.assert_close(alloc.probs(), torch.full((3, 4), 0.97))


def test_one_sample_per_task_and_batch():
    n = 6
    layer = RoutedLayer([Basis(c, n) for c in range(n)], 2, (3,), "gumbel", combine="sum")
    layer.train()
    torch.manual_seed(0)
    patterns = set()
    for _ in range(20):
        out = layer(torch.randn(8, 3), task=1)
        assert torch.equal(out, out[:1].expand_as(out))  # every example: the same pattern
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        patterns.add(tuple(out[0].tolist()))
    assert len(patterns) > 1  # but a new one for every batch


# --------------------------------------------------------------------------- combining
def test_shared_bottom_sums_components():
    comps = linears(3)
    layer = RoutedLayer(comps, 2, (W,), "shared-bottom")
    assert layer.combine == "sum"
    x = torch.randn(4, W)
    for mode in (layer.train, layer.eval):
        mode()
        torch.testing.assert_close(layer(x, 1), comps[0](x) + comps[1](x) + comps[2](x))


def test_all_active_gumbel_with_sum_equals_shared_bottom_and_mean_divides():
    comps = linears(3)
    summed = RoutedLayer(comps, 2, (W,), "gumbel", combine="sum")
    mean = RoutedLayer(comps, 2, (W,), "gumbel")
    assert mean.combine == "mean"
    for layer in (summed, mean):
        set_probs(layer.allocation, torch.full((2, 3), 1.0 - 1e-7))
    x = torch.randn(4, W)
    total = comps[0](x) + comps[1](x) + comps[2](x)
    torch.manual_seed(0)
    torch.testing.assert_close(summed(x, 0), total)  # training: a (certain) sample
    torch.testing.assert_close(mean(x, 0), total / 3)


def test_mean_of_active_components_of_a_pattern():
    comps = linears(3)
    layer = RoutedLayer(comps, 2, (W,), [[1, 0, 1], [0, 1, 0]])
    assert layer.combine == "mean"
    x = torch.randn(4, W)
    torch.testing.assert_close(layer(x, 0), (comps[0](x) + comps[2](x)) / 2)
    torch.testing.assert_close(layer(x, 1), comps[1](x))


def test_no_active_component_gives_exact_zero_and_finite_grads():
    comps = linears(3)
    fixed = RoutedLayer(comps, 1, (W,), [[0, 0, 0]])
    x = torch.randn(4, W, requires_grad=True)
    assert torch.equal(fixed(x, 0), torch.zeros(4, W))

    learned = RoutedLayer(comps, 1, (W,), "gumbel")
    set_probs(learned.allocation, torch.full((1, 3), 1e-7))
    learned.train()
    torch.manual_seed(0)
    out = learned(x, 0)
    assert torch.equal(out, torch.zeros(4, W))
    (out * torch.randn(4, W)).sum().backward()
    grads = [p.grad for p in learned.parameters()] + [x.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert learned.allocation.logits.grad.abs().sum() > 0  # inactive, yet learns

    learned.eval()
    assert torch.equal(learned(x, 0), torch.zeros(4, W))


def test_learned_allocation_runs_every_component_in_training():
    comps = linears(3)
    layer = RoutedLayer(comps, 1, (W,), "gumbel")
    set_probs(layer.allocation, [[1 - 1e-7, 1e-7, 1e-7]])
    layer.train()
    layer(torch.randn(4, W), 0).pow(2).sum().backward()
    # the inactive connections learn too (the sole active one has zero gradient: through the
    # mean, d out / d a_0 = f_0 - f_0)
    assert (layer.allocation.logits.grad[0, 1:, 0] != 0).all()
    assert comps[1][0].weight.grad.abs().sum() == 0  # an inactive component is not trained


def test_no_sharing_isolates_tasks():
    core = RoutedCore(
        [RoutedLayer(linears(3, seed=i), 3, (W,), "no-sharing") for i in range(2)], 3, (W,)
    )
    core.train()
    core(torch.randn(4, W), 1).pow(2).sum().backward()
    for layer in core.routed_layers:
        for c, comp in enumerate(layer.components):
            grads = [p.grad for p in comp.parameters()]
            if c == 1:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or g.abs().sum() == 0 for g in grads)
    assert core.active_connections() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- budget
def budget_core():
    """A fixed layer of 2 components (all used) and a gumbel layer of 4 with p = 0.25."""
    fixed = RoutedLayer(linears(2), 2, (W,), "shared-bottom")
    learned = RoutedLayer(linears(4), 2, (W,), "gumbel", p_init=0.25)
    return RoutedCore([fixed, nn.Linear(W, W), learned], 2, (W,))


def test_expected_active_counts_routed_components_of_the_task():
    core = budget_core()
    # (2 + 4 * 0.25) / 6 components, not the mean of the layer means (0.625)
    torch.testing.assert_close(core.expected_active(0), torch.tensor(0.5))
    set_probs(core.routed_layers[1].allocation, [[0.25] * 4, [1 - 1e-6] * 4])
    torch.testing.assert_close(core.expected_active(0), torch.tensor(0.5))  # only its task


def test_budget_penalty_hinge():
    core = budget_core()
    assert core.budget_penalty(0, budget=0.5, weight=3.0).item() == 0.0
    assert core.budget_penalty(0, budget=0.9, weight=3.0).item() == 0.0
    torch.testing.assert_close(core.budget_penalty(0, 0.4, 2.0), torch.tensor(2 * 0.1))

    lower = core.budget_penalty(0, 0.4).item()
    set_probs(core.routed_layers[1].allocation, [[0.5] * 4, [0.25] * 4])
    assert core.budget_penalty(0, 0.4).item() > lower  # grows with e_c
    torch.testing.assert_close(core.budget_penalty(1, 0.4), torch.tensor(0.1))


def test_budget_penalty_gradient_reaches_only_the_task_logits():
    core = budget_core()
    core.budget_penalty(1, 0.1).backward()
    grad = core.routed_layers[1].allocation.logits.grad
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_regularization_uses_the_configured_budget():
    core = budget_core()
    assert core.regularization(0) is None
    core = RoutedCore(list(budget_core().layers), 2, (W,), budget=0.4, budget_weight=2.0)
    torch.testing.assert_close(core.regularization(0), core.budget_penalty(0, 0.4, 2.0))


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_budget_outside_unit_interval_is_rejected(budget):
    core = budget_core()
    with pytest.raises(ConfigError, match="budget"):
        core.budget_penalty(0, budget)
    with pytest.raises(ConfigError, match="budget"):
        RoutedCore(list(core.layers), 2, (W,), budget=budget)


# --------------------------------------------------------------------------- evaluation
def test_greedy_pattern_is_probs_at_least_half():
    layer = RoutedLayer(linears(6), 3, (W,), "gumbel")
    assert torch.equal(layer.pattern(0), torch.ones(6))  # p_init = 0.5 counts as connected
    torch.manual_seed(0)
    set_probs(layer.allocation, torch.rand(3, 6))
    for t in range(3):
        assert torch.equal(layer.pattern(t), (layer.probs()[t] >= 0.5).float())
    layer.eval()
    x = torch.randn(4, W)
    for t in range(3):
        active = layer.pattern(t).nonzero().flatten().tolist()
        expected = sum(layer.components[c](x) for c in active) / max(len(active), 1)
        torch.testing.assert_close(layer(x, t), expected)
        torch.testing.assert_close(layer(x, t), layer(x, t), rtol=0, atol=0)  # no noise


def test_evaluation_skips_inactive_components():
    wire = Tripwire()
    layer = RoutedLayer([*linears(2), wire], 2, (W,), "gumbel")
    set_probs(layer.allocation, [[0.9, 0.9, 0.1], [0.9, 0.9, 0.9]])
    wire.armed = True
    x = torch.randn(4, W)
    layer.train()
    layer(x, 0)  # training runs every component
    layer.eval()
    layer(x, 0)  # inactive at evaluation: never called
    with pytest.raises(RuntimeError, match="inactive component"):
        layer(x, 1)  # active: called


def test_sample_evaluation_mode_draws_patterns():
    layer = RoutedLayer(
        [Basis(c, 6) for c in range(6)], 1, (3,), "gumbel", combine="sum", eval_mode="sample"
    )
    layer.eval()
    torch.manual_seed(0)
    outs = {tuple(layer(torch.zeros(2, 3), 0)[0].tolist()) for _ in range(10)}
    assert len(outs) > 1 and all(set(o) <= {0.0, 1.0} for o in outs)
    assert int(layer.num_steps) == 0


# --------------------------------------------------------------------------- temperature
def test_temperature_schedule():
    tau = TemperatureSchedule()
    assert tau(0) == 50.0
    assert tau(99) == pytest.approx(5.0)
    assert tau(9999) == pytest.approx(0.5)
    assert tau(10**6) == 0.5
    assert [TemperatureSchedule.constant(2.0)(s) for s in (0, 10, 10**6)] == [2.0] * 3
    with pytest.raises(ConfigError):
        TemperatureSchedule(min_tau=0.0)


def test_num_steps_counts_training_forwards_and_is_restored():
    seen = []

    def tau(step):
        seen.append(step)
        return 1.0

    layer = RoutedLayer(linears(3), 2, (W,), "gumbel", temperature=tau)
    x = torch.randn(4, W)
    layer.train()
    for t in (0, 1, 0):
        layer(x, t)
    layer.eval()
    layer(x, 0)
    assert int(layer.num_steps) == 3 and seen == [0, 1, 2, 3]

    core = RoutedCore([layer], 2, (W,))
    state = core.state_dict()
    assert int(state["layers.0.num_steps"]) == 3
    fresh = RoutedCore([RoutedLayer(linears(3), 2, (W,), "gumbel", temperature=tau)], 2, (W,))
    fresh.load_state_dict(state)
    fresh.train()
    seen.clear()
    fresh(x, 0)
    assert seen == [3] and int(fresh.routed_layers[0].num_steps) == 4


# --------------------------------------------------------------------------- bad input
def test_component_output_shape_mismatch():
    comps = [nn.Linear(W, W), nn.Linear(W, W + 1)]
    with pytest.raises(ShapeError, match=r"component 1 \(Linear\).*\(6,\).*\(5,\)"):
        RoutedLayer(comps, 2, (W,))
    with pytest.raises(ShapeError, match="component 0"):
        RoutedLayer([nn.Linear(W + 2, W)], 2, (W,))


def test_bad_allocations():
    with pytest.raises(ConfigError, match="as many components as tasks"):
        RoutedLayer(linears(3), 2, (W,), "no-sharing")
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="p_init"):
            RoutedLayer(linears(3), 2, (W,), "gumbel", p_init=p)
    with pytest.raises(UnknownNameError) as err:
        RoutedLayer(linears(3), 2, (W,), "gumbell")
    assert "gumbel" in err.value.suggestions
    with pytest.raises(ConfigError, match="binary"):
        RoutedLayer(linears(2), 2, (W,), [[1, 0.5], [0, 1]])
    with pytest.raises(ShapeError, match=r"\[2, 3\]"):
        RoutedLayer(linears(2), 2, (W,), torch.ones(2, 3))
    with pytest.raises(ConfigError, match="combine"):
        RoutedLayer(linears(2), 2, (W,), combine="max")
    with pytest.raises(ConfigError, match="eval_mode"):
        RoutedLayer(linears(2), 2, (W,), eval_mode="argmax")


def test_core_checks_shapes_and_tasks():
    with pytest.raises(ShapeError, match="layer 1"):
        RoutedCore([nn.Linear(W, 3), RoutedLayer(linears(2), 2, (W,))], 2, (W,))
    with pytest.raises(ConfigError, match="tasks"):
        RoutedCore([RoutedLayer(linears(2), 3, (W,))], 2, (W,))
    with pytest.raises(ConfigError, match="RoutedLayer"):
        RoutedCore([nn.Linear(W, W)], 2, (W,))
    core = RoutedCore([RoutedLayer(linears(2), 2, (W,))], 2, (W,))
    with pytest.raises(ShapeError, match="encoder"):
        core(torch.randn(3, W + 1), 0)


def test_fixed_allocation_helpers():
    assert torch.equal(FixedAllocation.shared_bottom(2, 3).probs(), torch.ones(2, 3))
    assert torch.equal(FixedAllocation.no_sharing(3, 3).probs(), torch.eye(3))
    alloc = FixedAllocation([[1, 0], [1, 1]])
    assert make_allocation(alloc, 2, 2) is alloc
    assert isinstance(make_allocation("gumbel", 2, 2), GumbelMatrixAllocation)


# --------------------------------------------------------------------------- embeddings
def test_embeddings_snapshot_and_active_connections():
    a = RoutedLayer(linears(2), 3, (W,), [[1, 0], [1, 1], [1, 0]])
    b = RoutedLayer(linears(3), 3, (W,), "gumbel")
    set_probs(b.allocation, [[0.9, 0.2, 0.6], [0.1, 0.1, 0.1], [0.9, 0.2, 0.6]])
    core = RoutedCore([a, nn.Tanh(), b], 3, (W,))
    expected = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]]).float()
    assert torch.equal(core.embeddings(), expected)
    assert core.active_connections() == pytest.approx(8 / 15)
    snap = core.sharing_snapshot()
    assert snap.shape == (3, 5)
    torch.testing.assert_close(snap[:, 2:], b.probs())
    assert group_tasks(core.embeddings(), ["x", "y", "z"]) == [["x", "z"], ["y"]]


def test_no_sharing_active_connections_is_one_over_tasks():
    core = RoutedCore([RoutedLayer(linears(4), 4, (W,), "no-sharing") for _ in range(3)], 4, (W,))
    assert core.active_connections() == 0.25  # Table I


def test_cosine_similarity_and_groups_on_hand_made_patterns():
    e = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    sim = cosine_similarity(e)
    assert sim.shape == (5, 5)
    torch.testing.assert_close(sim[0], torch.tensor([1.0, 1.0, 0.0, 1 / math.sqrt(2), 0.0]))
    assert sim[4, 4] == 1.0 and sim[2, 2] == pytest.approx(1.0)
    names = ["a", "b", "c", "d", "e"]
    assert group_tasks(e, names) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert group_tasks(e, names, threshold=0.7) == [["a", "b", "d"], ["c"], ["e"]]
    zeros = torch.zeros(2, 3)
    assert group_tasks(zeros, ["p", "q"]) == [["p", "q"]]
    with pytest.raises(ConfigError):
        group_tasks(e, names[:3])


def test_identical_large_embeddings_group_despite_rounding():
    torch.manual_seed(0)
    row = (torch.rand(1000) < 0.7).float()
    other = row.clone()
    other[0] = 1 - other[0]
    e = torch.stack([row, row, other])
    assert group_tasks(e, ["a", "b", "c"]) == [["a", "b"], ["c"]]


# --------------------------------------------------------------------------- model
def test_routed_core_in_a_multitask_model():
    layers = [
        RoutedLayer(linears(3), 2, (W,), "gumbel"),
        nn.Dropout(0.5),
        RoutedLayer(linears(3, seed=1), 2, (W,), "gumbel", p_init=0.9),
        nn.Flatten(),
    ]
    core = RoutedCore(layers, 2, (W,), budget=0.5)
    assert core.output_shape == (W,)
    model = MultiTaskModel(core, [nn.Identity()] * 2, [nn.Linear(W, 2) for _ in range(2)])
    model.train()
    loss = model(torch.randn(4, W), 1).sum() + model.core.regularization(1)
    loss.backward()
    assert core.routed_layers[1].allocation.logits.grad[1].abs().sum() > 0
    model.eval()
    assert model(torch.randn(4, W), 0).shape == (4, 2)


def test_trainer_uses_allocation_lr_budget_and_step_counter():
    import numpy as np

    from flexmtl import Task, TrainConfig, Trainer, build_model
    from flexmtl.training.optim import parameter_groups

    rng = np.random.default_rng(0)
    tasks = []
    for i in range(3):
        x = rng.random((40, 4)).astype(np.float32)
        y = (x[:, i] > 0.5).astype(np.int64)
        tasks.append(Task(f"t{i}", "multiclass", (x[:30], y[:30]), (x[30:], y[30:]), None, 2))
    torch.manual_seed(0)
    layers = [RoutedLayer(linears(4, width=6), 3, (6,), "gumbel") for _ in range(2)]
    core = RoutedCore(layers, 3, (6,), budget=0.25, budget_weight=100.0)
    model = build_model(tasks, core)
    groups = {g["name"]: g for g in parameter_groups(model, TrainConfig(lr=0.01))}
    assert groups["sharing"]["params"] == core.sharing_parameters()
    assert groups["sharing"]["lr"] == pytest.approx(0.03)  # tasks x lr
    before = core.sharing_snapshot().detach().clone()
    cfg = TrainConfig(steps=4, batch_size=8, eval_every=2, schedule="round-robin",
                      progress=False)
    trainer = Trainer(model, tasks, cfg)
    trainer.fit()
    last = trainer.final_state  # (the model itself is reset to the best checkpoint)
    assert [int(last[f"core.layers.{i}.num_steps"]) for i in (0, 1)] == [4 * 3] * 2
    step, probs = trainer.sharing[-1]
    assert step == 4 and probs.shape == (3, 8)
    assert (probs < before).all()  # the budget pulls every p below its start
