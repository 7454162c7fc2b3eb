"""The fusion engine's switch (set_fused / is_fused) and its one notion of alike modules."""

import numpy as np
import pytest
import torch
from torch import nn

import flexmtl.models
import flexmtl.sharing.allocation
import flexmtl.sharing.ordering
import flexmtl.sharing.routed
import flexmtl.training.trainer
from flexmtl import Task, TrainConfig, Trainer, build_model, make_core
from flexmtl.fusion import Fusable, is_fused, planning, set_fused
from flexmtl.fusion.components import op_signature, plan_fusion
from flexmtl.fusion.dense import stacked_dense
from flexmtl.fusion.orderings import per_task_pays_off
from flexmtl.fusion.planning import layer_signature, plan_blocks
from flexmtl.sharing import RoutedCore, RoutedLayer

B = 5


def tasks_of(n=3, features=6, rows=24):
    rng = np.random.default_rng(0)
    return [Task(f"t{i}", "multiclass", (rng.random((rows, features)), rng.integers(0, 3, rows)),
                 num_outputs=3) for i in range(n)]


def dense_blocks(n=3, width=6):
    return [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(n)]


def soft_model(tasks, **kwargs):
    torch.manual_seed(0)
    core = make_core("soft", dense_blocks(), len(tasks), seed=0, dropout=0.0, **kwargs)
    return build_model(tasks, core)


def routed_model(tasks):
    torch.manual_seed(0)
    layer = RoutedLayer(dense_blocks(), len(tasks), (6,))
    return build_model(tasks, RoutedCore([layer, nn.ReLU()], len(tasks), (6,)))


def fusable(model):
    return [m for m in model.modules() if isinstance(m, Fusable)]


@pytest.mark.parametrize("build", [soft_model, routed_model])
def test_set_fused_switches_every_fusable_module(build):
    model = build(tasks_of())
    kinds = {type(m).__name__ for m in fusable(model)}
    assert "MultiTaskModel" in kinds and kinds & {"SoftOrdering", "RoutedLayer"}
    assert is_fused(model) and all(m.fused for m in fusable(model))
    assert set_fused(model, False)
    assert not is_fused(model) and not any(m.fused for m in fusable(model))
    assert not is_fused(model.core) and not is_fused(nn.Sequential(model.core))
    assert set_fused(model, True)
    assert is_fused(model) and all(m.fused for m in fusable(model))
    assert not set_fused(nn.Linear(2, 2), False)  # nothing to switch
    assert is_fused(nn.Linear(2, 2))


def test_the_constructor_argument_is_the_same_switch():
    core = make_core("soft", dense_blocks(), 3, fused=False)
    assert isinstance(core, Fusable) and not is_fused(core)
    layer = RoutedLayer(dense_blocks(), 3, (6,), fused=False)
    assert not is_fused(layer)


def _refuse(*args, **kwargs):
    raise AssertionError("a fused path ran after set_fused(model, False)")


@pytest.fixture
def no_fused_paths(monkeypatch):
    """Every fused forward, kernel and stacked loss, as the method files call them, fails."""
    for module, names in ((flexmtl.sharing.ordering, ("parallel_tasks", "soft_tasks",
                                                      "grouped_rows_tasks", "per_task_layers")),
                          (flexmtl.sharing.routed, ("combine_components",)),
                          (flexmtl.models, ("stacked_groups",)),
                          (flexmtl.training.trainer, ("task_losses",))):
        for name in names:
            monkeypatch.setattr(module, name, _refuse)
    monkeypatch.setattr(flexmtl.sharing.allocation.StraightThroughRow, "apply", _refuse)


@pytest.mark.parametrize("build", [soft_model, routed_model])
def test_switched_off_model_runs_the_per_task_reference(build, no_fused_paths):
    """After set_fused(model, False) a training step runs nothing fused: outputs and losses
    are exactly the per-task loop's, and training steps run."""
    tasks = tasks_of()
    model = build(tasks)
    set_fused(model, False)
    torch.manual_seed(1)
    xs = [torch.randn(B, 6) for _ in range(4)]
    order = [2, 0, 1, 2]
    model.eval()  # the same allocation pattern in both passes
    for out, x, t in zip(model.forward_tasks(xs, order), xs, order):
        torch.testing.assert_close(out, model(x, t), atol=0, rtol=0)
    model.train()
    trainer = Trainer(model, tasks, TrainConfig(steps=2, batch_size=B, progress=False))
    outs = [model(x, t) for x, t in zip(xs, order)]
    ys = [torch.randint(0, 3, (B,)) for _ in order]
    for loss, t, out, y in zip(trainer.losses_of(order, outs, ys), order, outs, ys):
        torch.testing.assert_close(loss, tasks[t].loss(out, y), atol=0, rtol=0)
    for _ in range(2):
        trainer.train_step()


def test_switched_off_training_equals_fused_training():
    tasks = tasks_of()
    cfg = TrainConfig(steps=3, batch_size=B, eval_every=3, progress=False, seed=2)
    states = []
    for fused in (True, False):
        model = soft_model(tasks)
        set_fused(model, fused)
        trainer = Trainer(model, tasks, cfg)
        for _ in range(3):
            trainer.train_step()
        states.append(model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], atol=1e-5, rtol=1e-5, msg=k)


# ---------------------------------------------------------------------- one notion of alike


def test_one_stacking_limit_for_cores_encoders_and_heads(monkeypatch):
    """Stacked per-task core layers and stacked encoders stop at the same size."""
    layers = [nn.Linear(6, 6).double() for _ in range(4)]
    hs = [torch.randn(B, 6, dtype=torch.float64) for _ in layers]
    stacked = plan_blocks(layers, (6,)).stacked
    for limit, stacks in ((4 * 36 - 1, False), (4 * 36, True)):
        monkeypatch.setattr(planning, "CPU_STACK_LIMIT", limit)
        assert per_task_pays_off(stacked, hs) is stacks
        assert (stacked_dense(layers, hs) is not None) is stacks


@pytest.mark.parametrize("other, alike", [
    (lambda: nn.Linear(6, 6), True),
    (lambda: nn.Linear(6, 6, bias=False), False),
    (lambda: nn.Linear(6, 6).double(), False),
    (lambda: nn.Linear(6, 5), False),
])
def test_blocks_components_and_heads_agree_on_alike_layers(other, alike):
    """The orderings' planner, the routed-component planner and the stacked encoders and
    heads decide alike by the same layer signature."""
    torch.manual_seed(0)
    first, second = nn.Linear(6, 6), other()
    assert (layer_signature(first) == layer_signature(second)) is alike
    assert (op_signature(first) == op_signature(second)) is alike
    if second.weight.shape == first.weight.shape:  # blocks must fit at every depth
        assert (plan_blocks([first, second], (6,)).stacked is not None) is alike
    assert (len(plan_fusion([first, second], (6,)).groups) == 1) is alike
    xs = [torch.randn(B, 6, dtype=first.weight.dtype), torch.randn(B, 6,
                                                                   dtype=second.weight.dtype)]
    assert (stacked_dense([first, second], xs) is not None) is alike
