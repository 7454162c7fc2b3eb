"""Fused multi-task execution of the orderings (flexmtl.fusion) against the per-task
reference ``core(h, task)``: same outputs and gradients (soft ordering paper, Eqs. 2, 3, 7)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from flexmtl import ShapeError, Task, TrainConfig, Trainer, build_model, make_core
from flexmtl.fusion import kernels, orderings, planning, register_per_example
from flexmtl.fusion.masks import drop_, keep_mask, keep_probability
from flexmtl.fusion.planning import plan_blocks

METHODS = ("soft", "parallel", "permuted", "single")
SIZES = (3, 5, 1, 4)  # unequal batches
TASKS = [2, 0, 3, 1]  # not in order


def dense(n=3, width=6, act=nn.ReLU, bias=True):
    return [nn.Sequential(nn.Linear(width, width, bias=bias), act()) for _ in range(n)]


def conv(n=3, channels=3):
    return [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
            for _ in range(n)]


def build(method, blocks, feature_shape=None, num_tasks=4, dtype=torch.float64, **kwargs):
    """A core with random (not uniform) soft-order scales, in ``dtype``."""
    torch.manual_seed(0)
    core = make_core(method, blocks, num_tasks, seed=0, feature_shape=feature_shape, **kwargs)
    core = core.to(dtype)
    if method == "soft":
        with torch.no_grad():
            core.scale_logits.normal_()
    return core


def inputs(shape, sizes=SIZES, dtype=torch.float64, requires_grad=False):
    torch.manual_seed(1)
    return [torch.randn(n, *shape, dtype=dtype, requires_grad=requires_grad) for n in sizes]


def outputs_and_grads(core, hs, tasks, fused_pass):
    """Outputs and the gradients of a nonlinear loss w.r.t. all parameters (and inputs)."""
    outs = core.forward_tasks(hs, tasks) if fused_pass else [core(h, t) for h, t in zip(hs, tasks)]
    wrt = [p for p in core.parameters() if p.requires_grad]
    wrt += [h for h in hs if h.requires_grad]
    loss = sum((o**3).sum() + o.sum() for o in outs)
    return outs, torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)


def assert_matches_reference(core, hs, tasks=None, atol=1e-10, rtol=1e-9):
    tasks = TASKS[: len(hs)] if tasks is None else tasks
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these cores must fuse without a fallback warning
        fused_out, fused_grads = outputs_and_grads(core, hs, tasks, fused_pass=True)
    ref_out, ref_grads = outputs_and_grads(core, hs, tasks, fused_pass=False)
    assert len(fused_out) == len(ref_out)
    for a, b in zip(fused_out, ref_out):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    for a, b in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------- equal to reference


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("act", [nn.ReLU, nn.Identity, nn.Tanh])
def test_dense_fused_equals_reference(method, act):
    core = build(method, dense(4, act=act))
    assert plan_blocks(core._all_blocks(), core.feature_shape).stacked is not None
    assert_matches_reference(core, inputs((6,), requires_grad=True))


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_soft_gates_depths_and_bias(gate, depth, bias):
    core = build("soft", dense(3, bias=bias), gate=gate, depth=depth)
    assert_matches_reference(core, inputs((6,)))


@pytest.mark.parametrize("method", METHODS)
def test_conv_fused_equals_reference(method):
    core = build(method, conv(4), feature_shape=(3, 5, 5))
    assert plan_blocks(core._all_blocks(), core.feature_shape).stacked is not None
    assert_matches_reference(core, inputs((3, 5, 5), requires_grad=True))


def test_strided_dilated_conv_and_pooling_tail():
    def block():  # shape preserving: padding 2 with dilation 2, then a 3x3 max pool
        return nn.Sequential(nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.LeakyReLU(0.1),
                             nn.MaxPool2d(3, stride=1, padding=1))
    for method in METHODS:
        core = build(method, [block() for _ in range(4)], feature_shape=(2, 4, 4))
        assert plan_blocks(core._all_blocks(), (2, 4, 4)).stacked is not None
        assert_matches_reference(core, inputs((2, 4, 4)))


@pytest.mark.parametrize("method", METHODS)
def test_float32_within_tight_tolerance(method):
    core = build(method, dense(4, width=16), dtype=torch.float32)
    assert_matches_reference(core, inputs((16,), dtype=torch.float32), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["permuted", "single"])
def test_per_task_layers_and_its_alternatives_agree(method, monkeypatch):
    """Stacked per-task weights (small layers) vs block-by-block (large, or very unequal
    batches): both equal the reference."""
    core = build(method, dense(4))
    hs = inputs((6,))
    assert orderings.per_task_pays_off(plan_blocks(core._all_blocks(), (6,)).stacked, hs)
    assert_matches_reference(core, hs)
    monkeypatch.setattr(planning, "CPU_STACK_LIMIT", 0)
    assert_matches_reference(core, hs)
    assert_matches_reference(core, inputs((6,), sizes=(1, 9, 1, 1)))  # padding would x4


@pytest.mark.parametrize("method", ["soft", "parallel", "permuted"])
def test_per_example_blocks_that_do_not_stack_share_calls(method):
    """LayerNorm has parameters after the layer: no stacking, but rows still batch."""
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.GELU()) for _ in range(4)]
    core = build(method, blocks)
    plan = plan_blocks(core._all_blocks(), core.feature_shape)
    assert plan.stacked is None and plan.per_example
    assert_matches_reference(core, inputs((6,)))


def test_repeated_and_single_tasks():
    for method in METHODS:
        core = build(method, dense(4))
        assert_matches_reference(core, inputs((6,), sizes=(2, 3, 2)), tasks=[1, 1, 0])
        assert_matches_reference(core, inputs((6,), sizes=(3,)), tasks=[2])


# ---------------------------------------------------------------------- fallbacks


class Residual(nn.Module):
    """A user block flexmtl cannot know acts on each example alone."""

    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h):
        return h + torch.tanh(self.linear(h))


@pytest.mark.parametrize("method", METHODS)
def test_unknown_user_block_falls_back_with_one_warning(method):
    core = build(method, [Residual(6) for _ in range(4)])
    hs = inputs((6,))
    with pytest.warns(UserWarning, match="Residual"):
        fused_out, fused_grads = outputs_and_grads(core, hs, TASKS, fused_pass=True)
    ref_out, ref_grads = outputs_and_grads(core, hs, TASKS, fused_pass=False)
    for a, b in zip(fused_out + list(fused_grads), ref_out + list(ref_grads)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # the very same loop
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core.forward_tasks(hs, TASKS)  # warned once


def test_registered_user_block_is_fused(monkeypatch):
    monkeypatch.setattr(planning, "_PER_EXAMPLE", set(planning._PER_EXAMPLE))
    register_per_example(Residual)
    core = build("soft", [Residual(6) for _ in range(3)])
    assert plan_blocks(core.blocks, (6,)).per_example
    assert_matches_reference(core, inputs((6,)))


def test_batch_norm_fuses_only_in_eval_mode():
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU()) for _ in range(3)]
    core = build("soft", blocks)
    hs = inputs((6,), sizes=(3, 5, 4))
    with pytest.warns(UserWarning, match="BatchNorm1d.*batch statistics"):
        core.forward_tasks(hs, [0, 1, 2])  # training: each task's own batch statistics
    core.eval()
    assert_matches_reference(core, hs, tasks=[0, 1, 2])


def test_batch_mixing_tail_is_not_stacked():
    for tail in (nn.Softmax(dim=0), nn.Softmax(dim=None), nn.Flatten(0)):
        plan = plan_blocks([nn.Sequential(nn.Linear(4, 4), tail)], (4,))
        assert plan.stacked is None and not plan.per_example


def test_fused_false_is_the_reference_loop():
    core = build("soft", dense(3), fused=False)
    hs = inputs((6,), sizes=(3, 5, 4))
    for a, b in zip(core.forward_tasks(hs, [0, 1, 2]), [core(h, t) for t, h in enumerate(hs)]):
        assert torch.equal(a, b)


def test_hooks_registered_later_are_honoured():
    core = build("soft", dense(3))
    hs = inputs((6,), sizes=(3, 5, 4))
    core.forward_tasks(hs, [0, 1, 2])  # plan cached: stacked
    calls = []
    core.blocks[1].register_forward_hook(lambda *args: calls.append(1))
    assert_matches_reference(core, hs, tasks=[0, 1, 2])
    assert calls  # the stacked path would have skipped the hook


def test_checks_inputs():
    core = build("soft", dense(3))
    with pytest.raises(ShapeError):
        core.forward_tasks([torch.zeros(2, 5, dtype=torch.float64)], [0])
    with pytest.raises(ShapeError):
        core.forward_tasks([torch.zeros(2, 6, dtype=torch.float64)], [0, 1])
    with pytest.raises(IndexError):
        core.forward_tasks([torch.zeros(2, 6, dtype=torch.float64)], [4])
    assert core.forward_tasks([], []) == []


# ---------------------------------------------------------------------- dropout


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("act", [nn.ReLU, nn.Identity])
def test_dropout_train_finite_and_eval_equals_reference(method, act):
    core = build(method, dense(4, act=act), dropout=0.5)
    hs = inputs((6,))
    outs = core.forward_tasks(hs, TASKS)
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.sum() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters() if p.grad is not None)
    core.eval()
    first = core.forward_tasks(hs, TASKS)
    assert all(torch.equal(a, b) for a, b in zip(first, core.forward_tasks(hs, TASKS)))
    assert_matches_reference(core, hs)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Identity])
def test_hand_written_soft_backward_equals_autograd_with_dropout(act, monkeypatch):
    """The dense ReLU/linear fast path and the generic autograd path draw the same masks
    from the same seed: equal outputs and gradients in training mode."""
    core = build("soft", dense(3, act=act), dropout=0.3, depth=4)
    hs = inputs((6,), requires_grad=True)
    results = []
    for generic in (False, True):
        if generic:
            monkeypatch.setattr(orderings, "_dense_activation", lambda stacked: None)
        torch.manual_seed(7)
        results.append(outputs_and_grads(core, hs, TASKS, fused_pass=True))
    for a, b in zip(results[0][0] + list(results[0][1]), results[1][0] + list(results[1][1])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_dropout_masks_each_layer_output_of_each_example_independently():
    """Soft ordering, one depth, identity layers and all scales 1/L: each unit of the
    output is the mean over layers of independent masks / keep."""
    layers, p = 8, 0.5
    blocks = [nn.Linear(4, 4, bias=False) for _ in range(layers)]
    for block in blocks:
        nn.init.eye_(block.weight)
    core = build("soft", blocks, num_tasks=1, dtype=torch.float32, depth=1, dropout=p)
    nn.init.zeros_(core.scale_logits)  # equal scales 1/L
    torch.manual_seed(0)
    with torch.no_grad():
        (out,) = core.forward_tasks([torch.ones(4000, 4)], [0])
    kept = out * layers * (1 - p)  # number of layers that kept this unit
    assert set(kept.round().unique().tolist()) <= set(range(layers + 1))
    # Binomial(L, 1-p) counts: independent across layers, examples and units
    counts = torch.bincount(kept.round().long().flatten(), minlength=layers + 1).double()
    expected = torch.distributions.Binomial(layers, torch.tensor(1 - p)).log_prob(
        torch.arange(layers + 1.0)).exp() * kept.numel()
    assert ((counts - expected) ** 2 / expected).sum() < 40  # chi-square, 8 dof
    corr = np.corrcoef(kept[:, 0].numpy(), kept[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.1


@pytest.mark.parametrize("p", [0.5, 0.8, 0.1, 0.3])
def test_keep_mask_rate(p):
    x = torch.empty(200_000)
    mask = keep_mask(x, p)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(keep_probability(p, x.device) - (1 - p)) < 2**-16
    assert abs(mask.mean().item() - keep_probability(p, x.device)) < 0.005


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_drop_in_place(dtype):
    """drop_ zeroes about half the elements at p = 0.5 (bitwise path), keeps the others
    bit for bit, and draws like keep_mask; other p and layouts go through keep_mask."""
    x = torch.rand(400, 500, dtype=dtype) + 0.5
    kept = drop_(x.clone(), 0.5)
    dropped = kept == 0
    assert torch.equal(kept[~dropped], x[~dropped])
    assert abs(dropped.double().mean().item() - 0.5) < 0.005
    torch.manual_seed(3)
    a = drop_(x.clone(), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, x * keep_mask(x, 0.5))  # the same bits, the same elements
    for p in (0.5, 0.3):  # not contiguous: the keep_mask path
        strided = x.clone().t()
        out = drop_(strided, p)
        assert out is strided and abs((out == 0).double().mean().item() - p) < 0.01
    assert set(keep_mask(x, 0.5).unique().tolist()) == {0.0, 1.0}
    assert not torch.signbit(keep_mask(x, 0.5)).any()  # no -0.0


def test_drop_of_a_tracked_tensor_has_the_masks_gradient():
    w = torch.ones(64, 64, requires_grad=True)
    z = w * 2.0
    drop_(z, 0.5)
    z.sum().backward()
    torch.testing.assert_close(w.grad, (z != 0).float() * 2.0)  # dropped: no gradient
    assert 0.4 < (w.grad == 0).float().mean() < 0.6


def test_dense_soft_order_draws_one_mask_per_depth():
    """The all-depth draw of DenseSoftOrder (p = 0.5, ReLU) is the same stream as one
    drop_ per depth."""
    gen = torch.Generator().manual_seed(0)
    h, w, b = (torch.randn(*s, generator=gen, dtype=torch.float64)
               for s in ((48, 8), (32, 8), (32,)))
    task_scales = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64)
    rows = torch.arange(48) % 3
    torch.manual_seed(7)
    out = kernels.DenseSoftOrder.apply(h, w, b, task_scales, rows, 2.0, True, 0.5)
    torch.manual_seed(7)
    y = h
    for k in range(5):
        a = drop_(torch.relu(y @ w.t() + b), 0.5).view(48, 4, 8)
        y = (a * (task_scales[rows, :, k] * 2.0).unsqueeze(-1)).sum(1)
    torch.testing.assert_close(out, y)


# ---------------------------------------------------------------------- through the trainer


def make_tasks():
    rng = np.random.default_rng(0)
    tasks = []
    for i, (n, f) in enumerate([(40, 5), (6, 7), (40, 5)]):  # task 1: batches of 6, not 8
        x = rng.random((n + 10, f)).astype(np.float32)
        y = (x[:, 0] > 0.5).astype(np.int64)
        tasks.append(Task(f"t{i}", "multiclass", (x[:n], y[:n]), (x[n:], y[n:]), None,
                          num_outputs=2))
    return tasks


@pytest.mark.parametrize("method", METHODS)
def test_training_trajectory_equals_reference(method):
    tasks = make_tasks()
    states = []
    for use_fused in (True, False):
        torch.manual_seed(0)
        core = make_core(method, dense(3, width=8), len(tasks), seed=0, fused=use_fused)
        model = build_model(tasks, core, encoder="learned")
        cfg = TrainConfig(steps=5, batch_size=8, eval_every=5, progress=False, seed=1)
        trainer = Trainer(model, tasks, cfg)
        trainer.fit()
        states.append(trainer.final_state)
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], atol=1e-5, rtol=1e-5,
                                   msg=key)
