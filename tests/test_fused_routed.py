"""Fused routed layers (same-kind components run as one op) against the per-component
reference path: same outputs and gradients, in training and evaluation."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from flexmtl import Task
from flexmtl.experiments import get_experiment
from flexmtl.fusion import components as fused_components
from flexmtl.fusion.components import plan_fusion
from flexmtl.sharing.allocation import TemperatureSchedule
from flexmtl.sharing.components import (
    cluster_components,
    conv_gn_block,
    omniglot_components,
    single_conv,
)
from flexmtl.sharing.routed import RoutedLayer

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one thread keeps the run time steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual, expected, msg=None):
    """Tight float32 tolerance, relative to the tensor's scale (sums in another order)."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=msg)


def randomize(module, seed=0):
    """Random weights everywhere (GroupNorm affine included, so a wrong concatenation shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module


def set_probs(layer, probs):
    p = torch.as_tensor(probs, dtype=torch.float32)
    with torch.no_grad():
        layer.allocation.logits.copy_(torch.stack([p.log(), (1 - p).log()], dim=-1))


def run(layer, x, task, fused, seed=0):
    """Output and gradients (parameters by name, and the input) of one forward/backward."""
    layer.fused = fused
    layer.zero_grad(set_to_none=True)
    layer.num_steps.zero_()  # the same temperature for both paths
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same Gumbel noise for both paths
    out = layer(x, task)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    if out.requires_grad:
        (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return out.detach(), grads, x.grad


def assert_paths_agree(layer, x, tasks=None, seeds=(0, 1)):
    for task in range(layer.num_tasks) if tasks is None else tasks:
        for seed in seeds:
            out_f, grads_f, gx_f = run(layer, x, task, fused=True, seed=seed)
            out_r, grads_r, gx_r = run(layer, x, task, fused=False, seed=seed)
            assert_close(out_f, out_r)
            assert grads_f.keys() == grads_r.keys()
            for name in grads_r:
                if grads_r[name] is None:
                    assert grads_f[name] is None, name
                else:
                    assert_close(grads_f[name], grads_r[name], msg=name)
            if gx_r is None:
                assert gx_f is None
            else:
                assert_close(gx_f, gx_r)


def mixed_probs(num_tasks, num_components, seed=0):
    """Connection probabilities from near 0 to near 1; task 0 uses nothing."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(num_tasks, num_components, generator=gen).clamp(0.05, 0.95)
    probs[0] = 1e-6
    return probs


def check_layer(components, input_shape, batch=4, num_tasks=3, seed=0):
    """Gumbel layer (train: every component runs; eval: greedy, only active ones), both
    combines, and fixed patterns with an empty row."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    comps = [randomize(c, seed + i) for i, c in enumerate(components)]
    c = len(comps)
    for combine, seeds in (("mean", (0, 1)), ("sum", (0,))):
        layer = RoutedLayer(comps, num_tasks, input_shape, "gumbel", combine=combine,
                            temperature=TemperatureSchedule.constant(0.7))
        set_probs(layer, mixed_probs(num_tasks, c, seed))
        layer.train()
        assert_paths_agree(layer, x, seeds=seeds)
        layer.eval()
        assert_paths_agree(layer, x, seeds=(0,))
    pattern = torch.zeros(num_tasks, c)
    pattern[1, ::2] = 1  # every other component
    pattern[2] = 1
    fixed = RoutedLayer(comps, num_tasks, input_shape, pattern)  # task 0: none active
    for mode in (fixed.train, fixed.eval):
        mode()
        assert_paths_agree(fixed, x, seeds=(0,))
        assert torch.equal(fixed(x, 0), torch.zeros(batch, *fixed.output_shape))
    return layer


# --------------------------------------------------------------------------- planning
def test_plan_groups_same_kind_components():
    four = plan_fusion([single_conv(4, 4, 3) for _ in range(4)], (4, 12, 12))
    assert [g.indices for g in four.groups] == [(0, 1, 2, 3)] and four.singles == []

    clusters = plan_fusion(cluster_components(8, stride=2), (8, 32, 32))
    assert [g.indices for g in clusters.groups] == [tuple(range(8)), tuple(range(8, 16))]

    stock = plan_fusion(omniglot_components(8, stride=2), (8, 16, 16))
    assert stock.groups == [] and stock.singles == list(range(7))  # no two of a kind

    mixed = [conv_gn_block(8, 3), conv_gn_block(8, 5), conv_gn_block(8, 3), nn.MaxPool2d(3, 1, 1),
             conv_gn_block(8, 5, stride=2)]
    plan = plan_fusion(mixed, (8, 16, 16))
    assert [g.indices for g in plan.groups] == [(0, 2)] and plan.singles == [1, 3, 4]


def test_plan_leaves_unknown_hooked_and_subclassed_modules_alone():
    class MyConv(nn.Conv2d):
        pass

    hooked = single_conv(4, 4, 3)
    hooked[0].register_forward_hook(lambda *args: None)
    comps = [single_conv(4, 4, 3), single_conv(4, 4, 3),
             nn.Sequential(MyConv(4, 4, 3), nn.ReLU()), nn.Sequential(MyConv(4, 4, 3), nn.ReLU()),
             hooked, nn.Sequential(nn.Conv2d(4, 4, 3), nn.Dropout(0.1)),
             nn.Sequential(nn.Conv2d(4, 4, 3), nn.Dropout(0.1))]
    plan = plan_fusion(comps, (4, 8, 8))
    assert [g.indices for g in plan.groups] == [(0, 1)] and plan.singles == [2, 3, 4, 5, 6]
    # a dense chain on image inputs, or a conv chain on vectors, is not fused
    assert plan_fusion([nn.Linear(4, 4), nn.Linear(4, 4)], (3, 4)).groups == []


# --------------------------------------------------------------------------- layers
def test_four_mnists_layers():
    check_layer([single_conv(1, 4, 5) for _ in range(4)], (1, 28, 28), num_tasks=4)
    check_layer([single_conv(4, 4, 3) for _ in range(4)], (4, 12, 12), num_tasks=4)
    check_layer([single_conv(4, 4, 3) for _ in range(4)], (4, 5, 5), num_tasks=4)


def test_cluster_layer_with_group_norm():
    check_layer(cluster_components(8, stride=2), (8, 12, 12))


def test_cluster_layer_of_full_size_uses_the_large_conv_path():
    layer = RoutedLayer(cluster_components(8, stride=2), 2, (8, 32, 32), "gumbel")
    randomize(layer)
    set_probs(layer, mixed_probs(2, 16))
    layer.train()
    assert_paths_agree(layer, torch.randn(32, 8, 32, 32), tasks=[1], seeds=(0,))


def test_omniglot_layers_mixed():
    check_layer(omniglot_components(4, stride=2), (4, 9, 9), batch=2)  # all one by one
    # two of each kind: the conv blocks (two convs, grouped), factorized blocks and strided
    # 1x1 identities fuse in pairs, the pools run one by one
    components = omniglot_components(4, stride=2) + omniglot_components(4, stride=2)
    layer = check_layer(components, (4, 9, 9), batch=2)
    assert [g.indices for g in layer.plan.groups] == [(0, 7), (1, 8), (2, 9), (3, 10), (6, 13)]


def test_interleaved_kinds_and_non_contiguous_groups():
    components = [conv_gn_block(8, 3 + 2 * (i % 2), groups=2) for i in range(6)]
    layer = check_layer(components, (8, 8, 8))
    assert [g.indices for g in layer.plan.groups] == [(0, 2, 4), (1, 3, 5)]


def test_dense_components():
    d, h = 6, 5
    components = (
        [nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
         for _ in range(3)]
        + [nn.Sequential(nn.Linear(d, h), nn.Tanh()) for _ in range(2)]
        + [nn.Sequential(nn.Linear(d, h, bias=False), nn.Sigmoid(), nn.Linear(h, h, bias=False))
           for _ in range(2)]
        + [nn.Linear(d, h)]
    )
    layer = check_layer(components, (d,), batch=7)
    assert [g.indices for g in layer.plan.groups] == [(0, 1, 2), (3, 4), (5, 6)]
    assert layer.plan.singles == [7]


def test_one_layer_groups(monkeypatch):
    """Groups of one Conv2d / Linear (+ ReLU): with and without bias and ReLU, strided and
    padded, and through the generic convolution as well as the im2col one."""
    d, h = 6, 5
    dense = ([nn.Linear(d, h) for _ in range(2)]
             + [nn.Sequential(nn.Linear(d, h, bias=False), nn.ReLU()) for _ in range(3)])
    layer = check_layer(dense, (d,), batch=7)
    assert [g.indices for g in layer.plan.groups] == [(0, 1), (2, 3, 4)]
    convs = ([nn.Conv2d(3, 2, 3, bias=False) for _ in range(2)]
             + [nn.Sequential(nn.Conv2d(3, 2, 3, stride=1, padding=1), nn.ReLU())
                for _ in range(2)])
    for small in (fused_components.SMALL_CONV_MACS, 0):  # im2col, then the generic path
        monkeypatch.setattr(fused_components, "SMALL_CONV_MACS", small)
        check_layer(convs[:2], (3, 6, 6))
        check_layer(convs[2:], (3, 6, 6))
    strided = [nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.ReLU())
               for _ in range(3)]
    layer = check_layer(strided, (3, 7, 7))
    assert [g.indices for g in layer.plan.groups] == [(0, 1, 2)]


def test_fused_sample_leaves_hooks_modes_and_double_backward_to_the_reference():
    """The fused path's one-node sample runs only where it gives what the allocation module
    would: hooks on the allocation and an allocation in eval mode take the module's own
    forward; a second derivative through it raises instead of being silently wrong."""
    comps = [randomize(single_conv(2, 3, 3), i) for i in range(4)]
    layer = RoutedLayer(comps, 2, (2, 6, 6), "gumbel")
    set_probs(layer, mixed_probs(2, 4))
    x = torch.randn(2, 2, 6, 6)
    calls = []
    handle = layer.allocation.register_forward_hook(lambda *args: calls.append(1))
    layer.train()
    assert_paths_agree(layer, x, seeds=(0,))
    assert len(calls) == 2 * layer.num_tasks  # the fused path called the module too
    handle.remove()
    layer.allocation.eval()  # greedy pattern, the layer still training
    assert_paths_agree(layer, x, seeds=(0,))
    layer.train()
    layer.fused = True  # assert_paths_agree ends on the reference
    out = layer(x.requires_grad_(), 1)
    (grad,) = torch.autograd.grad(out.sum(), layer.allocation.logits, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_sample_evaluation_mode_and_shared_bottom():
    comps = [randomize(single_conv(2, 3, 3), i) for i in range(4)]
    x = torch.randn(2, 2, 6, 6)
    sampled = RoutedLayer(comps, 2, (2, 6, 6), "gumbel", eval_mode="sample")
    set_probs(sampled, mixed_probs(2, 4))
    sampled.eval()
    assert_paths_agree(sampled, x)
    shared = RoutedLayer(comps, 2, (2, 6, 6), "shared-bottom")
    for mode in (shared.train, shared.eval):
        mode()
        assert_paths_agree(shared, x, seeds=(0,))


def test_no_active_component_in_training_zero_output_and_logit_gradient():
    layer = RoutedLayer([randomize(single_conv(2, 3, 3), i) for i in range(4)], 1, (2, 6, 6))
    set_probs(layer, torch.full((1, 4), 1e-7))
    layer.train()
    out, grads, _ = run(layer, torch.randn(3, 2, 6, 6), 0, fused=True)
    assert torch.equal(out, torch.zeros_like(out))
    assert grads["allocation.logits"].abs().sum() > 0  # inactive, yet learns
    assert all(g.abs().sum() == 0 for name, g in grads.items() if name.startswith("components"))
    assert_paths_agree(layer, torch.randn(3, 2, 6, 6))


def test_evaluation_skips_inactive_components_of_a_fused_group():
    comps = [randomize(single_conv(2, 3, 3), i) for i in range(4)]
    layer = RoutedLayer(comps, 2, (2, 6, 6), [[1, 0, 1, 0], [0, 1, 1, 1]])
    with torch.no_grad():
        comps[1][0].weight.fill_(float("nan"))  # inactive for task 0
    layer.eval()
    x = torch.randn(2, 2, 6, 6)
    out = layer(x, 0)
    assert torch.isfinite(out).all()  # the NaN component never ran, not even times 0
    torch.testing.assert_close(out, (comps[0](x) + comps[2](x)) / 2, **TOL)
    assert torch.isnan(layer(x, 1)).all()


def test_fused_flag_state_dict_and_deepcopy():
    layer = RoutedLayer([single_conv(2, 3, 3) for _ in range(3)], 2, (2, 6, 6), [[1, 1, 0],
                                                                                 [1, 1, 1]])
    assert layer.fused
    reference = RoutedLayer([single_conv(2, 3, 3) for _ in range(3)], 2, (2, 6, 6),
                            [[1, 1, 0], [1, 1, 1]], fused=False)
    assert not reference.fused
    assert layer.state_dict().keys() == reference.state_dict().keys()

    twin = copy.deepcopy(layer)  # the plan follows the copied components
    randomize(twin, seed=5)
    x = torch.randn(2, 2, 6, 6)
    expected = (twin.components[0](x) + twin.components[1](x)) / 2
    torch.testing.assert_close(twin(x, 0), expected, **TOL)


# --------------------------------------------------------------------------- a model
def four_mnists_model():
    rng = np.random.default_rng(0)
    tasks = [Task(f"t{i}", "multiclass", (rng.random((32, 1, 28, 28)).astype(np.float32),
                                          rng.integers(0, 10, 32)), num_outputs=10)
             for i in range(4)]
    exp = get_experiment("four-mnists")
    torch.manual_seed(0)
    return exp.build_model("gumbel", tasks, exp.resolve_config(), 0), tasks


def train_round_robin(model, tasks, fused, steps=3):
    for layer in model.core.routed_layers:
        layer.fused = fused
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    model.train()
    torch.manual_seed(1)  # Gumbel noise and dropout: the same draws on both paths
    order = torch.Generator().manual_seed(2)
    for step in range(steps):
        for t in torch.randperm(len(tasks), generator=order).tolist():
            batch = slice(step * 8, (step + 1) * 8)
            x, y = tasks[t].train.x[batch], tasks[t].train.y[batch]
            loss = tasks[t].loss(model(x, t), y)
            penalty = model.core.regularization(t)  # None without a budget
            loss = loss if penalty is None else loss + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def test_four_mnists_model_trains_the_same_fused_and_reference():
    fused, tasks = four_mnists_model()
    reference = copy.deepcopy(fused)
    start = copy.deepcopy(fused.state_dict())
    assert all(layer.fused for layer in fused.core.routed_layers)
    train_round_robin(fused, tasks, fused=True)
    train_round_robin(reference, tasks, fused=False)
    state_f, state_r = fused.state_dict(), reference.state_dict()
    assert state_f.keys() == state_r.keys()
    for name in state_r:
        torch.testing.assert_close(state_f[name], state_r[name], rtol=1e-4, atol=1e-5, msg=name)
    assert all(not torch.equal(state_f[n], start[n]) for n, _ in fused.named_parameters())
    fused.eval()
    reference.eval()
    for layer in reference.core.routed_layers:
        layer.fused = False
    x = tasks[0].train.x[:8]
    for t in range(4):
        torch.testing.assert_close(fused(x, t), reference(x, t), **TOL)


@pytest.mark.parametrize("dtype", [torch.float64])
def test_double_precision(dtype):
    layer = RoutedLayer([single_conv(2, 3, 3) for _ in range(4)], 2, (2, 6, 6)).to(dtype)
    randomize(layer)
    set_probs(layer, mixed_probs(2, 4))
    layer.train()
    x = torch.randn(2, 2, 6, 6, dtype=dtype)
    out_f, grads_f, _ = run(layer, x, 1, fused=True)
    out_r, grads_r, _ = run(layer, x, 1, fused=False)
    torch.testing.assert_close(out_f, out_r, rtol=1e-12, atol=1e-12)
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-12, atol=1e-12)


def test_the_plan_follows_hooks_and_replaced_components():
    """Hooks added after the layer was built still run (their component leaves its group),
    and a replaced component is planned again."""
    comps = [randomize(single_conv(2, 3, 3), i) for i in range(3)]
    layer = RoutedLayer(comps, 2, (2, 6, 6), "shared-bottom")
    x = torch.randn(2, 2, 6, 6)
    assert [g.indices for g in layer.plan.groups] == [(0, 1, 2)]
    calls = []
    handle = layer.components[1].register_forward_hook(lambda *args: calls.append(1))
    assert [g.indices for g in layer.plan.groups] == [(0, 2)]
    assert_paths_agree(layer, x, seeds=(0,))
    assert len(calls) == 2 * layer.num_tasks  # fused and reference, every task
    handle.remove()
    assert [g.indices for g in layer.plan.groups] == [(0, 1, 2)]
    backward = []
    layer.components[0][0].register_full_backward_hook(lambda *args: backward.append(1))
    assert [g.indices for g in layer.plan.groups] == [(1, 2)]
    layer.fused = True
    layer(x.requires_grad_(), 1).sum().backward()
    assert backward == [1]
    with torch.nn.modules.module.register_module_forward_hook(lambda *args: None):
        assert layer.plan.groups == []  # every module must run its own forward
    with torch.nn.modules.module.register_module_full_backward_hook(lambda *args: None):
        assert layer.plan.groups == []
    assert [g.indices for g in layer.plan.groups] == [(1, 2)]
    layer.components[2] = nn.Sequential(nn.MaxPool2d(1), nn.Conv2d(2, 3, 3))
    assert layer.plan.groups == [] and layer.plan.singles == [0, 1, 2]


class Doubler(nn.Module):  # a user op the planner does not know
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return 2 * self.conv(x)


def test_alike_components_that_cannot_fuse_warn_once():
    layer = RoutedLayer([Doubler(), Doubler(), single_conv(2, 3, 3)], 2, (2, 6, 6),
                        "shared-bottom")
    x = torch.randn(2, 2, 6, 6)
    with pytest.warns(UserWarning, match=r"components \[0, 1\] \(Doubler\) one by one"):
        layer(x, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.eval()  # a new plan: still no second warning
        layer(x, 1)
        # components left alone only for their hooks are not reported
        hooked = RoutedLayer([single_conv(2, 3, 3) for _ in range(3)], 1, (2, 6, 6),
                             "shared-bottom")
        with torch.nn.modules.module.register_module_forward_hook(lambda *args: None):
            hooked(x, 0)
        # one unknown component among known ones (the pools of the Omniglot layers) is
        # not a missed fusion: no warning
        RoutedLayer(omniglot_components(2), 1, (2, 8, 8))(torch.randn(2, 2, 8, 8), 0)


def test_the_mean_divisor_passes_its_gradient_at_one_active_component():
    """max(S, 1) with the gradient at S >= 1 (the authors' TensorFlow maximum), on every torch:
    torch 2.14 made clamp(min=1) stop the gradient at the boundary, where the divisor sits
    whenever exactly one component is active."""
    from flexmtl.fusion.kernels import active_count

    for values, slope in (([1.0, 0.0, 0.0], 1.0), ([1.0, 1.0, 0.0], 1.0), ([0.0, 0.0, 0.0], 0.0)):
        w = torch.tensor(values, requires_grad=True)
        count = active_count(w)
        count.backward()
        assert count.detach().item() == max(sum(values), 1.0)
        assert w.grad.tolist() == [slope] * 3, values
