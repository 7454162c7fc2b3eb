"""Batched per-task encoders, decoders and losses (MultiTaskModel.forward_tasks, the
trainer's loss) against the per-task loop: same outputs, losses and gradients."""

import numpy as np
import pytest
import torch
from torch import nn

from flexmtl import Task, TrainConfig, Trainer, build_model, make_core
from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.fusion import dense, planning
from flexmtl.fusion.dense import stacked_dense
from flexmtl.fusion.losses import stacked_losses
from flexmtl.models import dense_encoder, make_decoder

T, B = 4, 5


def modules(make, n=T, dtype=torch.float64):
    torch.manual_seed(0)
    return [make().to(dtype) for _ in range(n)]


def inputs(shape, n=T, batch=B, dtype=torch.float64, requires_grad=True):
    torch.manual_seed(1)
    return [torch.randn(batch, *shape, dtype=dtype, requires_grad=requires_grad)
            for _ in range(n)]


def grads(outs, mods, xs):
    """Gradients of a nonlinear function of the outputs w.r.t. parameters and inputs."""
    wrt = [p for m in mods for p in m.parameters() if p.requires_grad]
    wrt += [x for x in xs if x.requires_grad]
    loss = sum((o**3).sum() + o.sum() for o in outs)
    return torch.autograd.grad(loss, wrt)


def assert_stacked_equals_loop(mods, xs):
    stacked = stacked_dense(mods, xs)
    assert stacked is not None
    loop = [m(x) for m, x in zip(mods, xs)]
    torch.testing.assert_close(stacked, torch.stack(loop), atol=1e-12, rtol=1e-12)
    for a, b in zip(grads(list(stacked.unbind(0)), mods, xs), grads(loop, mods, xs)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------- stacked_dense


@pytest.mark.parametrize("shape", [(7,), (1, 3, 4)])
def test_dense_encoders_run_as_one_product(shape):
    assert_stacked_equals_loop(modules(lambda: dense_encoder(shape, 6)), inputs(shape))


def test_frozen_encoders_and_inputs_without_gradient():
    mods = modules(lambda: dense_encoder((7,), 6, frozen=True))
    xs = inputs((7,), requires_grad=False)
    out = stacked_dense(mods, xs)
    assert out is not None and not out.requires_grad
    torch.testing.assert_close(out, torch.stack([m(x) for m, x in zip(mods, xs)]),
                               atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "linear"])
def test_dense_heads_run_as_one_product(kind):
    assert_stacked_equals_loop(modules(lambda: make_decoder(kind, (6,), 3)), inputs((6,)))


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(6, 3, bias=False),
    lambda: nn.Sequential(nn.Linear(6, 3), nn.ReLU()),
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 3, bias=False), nn.ReLU()),
])
def test_bare_and_bias_free_layers(make):
    assert_stacked_equals_loop(modules(make), inputs((6,)))


def test_large_weights_are_not_stacked_on_the_cpu(monkeypatch):
    mods = modules(lambda: dense_encoder((7,), 6))
    monkeypatch.setattr(planning, "CPU_STACK_LIMIT", 4 * 6 * 7 - 1)
    assert stacked_dense(mods, inputs((7,))) is None
    monkeypatch.setattr(planning, "CPU_STACK_LIMIT", 4 * 6 * 7)
    assert stacked_dense(mods, inputs((7,))) is not None


def test_a_module_repeated_for_several_tasks():
    (enc,) = modules(lambda: dense_encoder((7,), 6), n=1)
    assert_stacked_equals_loop([enc, enc, enc], inputs((7,), n=3))


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Sequential(nn.Linear(6, 3), nn.Tanh()), (6,)),  # other activation
    (lambda: nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.ReLU()), (6,)),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(6, 3)), (6,)),
    (lambda: MyLinear(6, 3), (6,)),  # a subclass may change forward
    (lambda: nn.Linear(6, 3), (2, 6)),  # Linear on 3-D inputs: not a [T, B, in] product
    (lambda: nn.Sequential(nn.Flatten(0), nn.Linear(30, 3)), (6,)),  # flattens the batch
    (lambda: nn.Identity(), (6,)),
])
def test_other_modules_are_not_stacked(make, shape):
    assert stacked_dense(modules(make), inputs(shape)) is None


def test_hooks_unequal_shapes_and_single_modules_are_not_stacked():
    mods = modules(lambda: dense_encoder((7,), 6))
    xs = inputs((7,))
    assert stacked_dense(mods[:1], xs[:1]) is None  # one task: nothing to batch
    assert stacked_dense(mods, xs[:-1] + inputs((7,), n=1, batch=B + 1)) is None  # batches
    other = modules(lambda: dense_encoder((7,), 5), n=1)
    assert stacked_dense(mods[:-1] + other, xs) is None  # widths
    assert stacked_dense(mods, inputs((7,), dtype=torch.float32)) is None  # dtypes
    handle = mods[2][1].register_forward_hook(lambda m, i, o: o * 2)
    assert stacked_dense(mods, xs) is None
    handle.remove()
    assert stacked_dense(mods, xs) is not None


# ---------------------------------------------------------------------- forward_tasks


def tasks_of(kind, features=(7, 7, 7), n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, f in enumerate(features):
        x = rng.random((n, f))
        y = {"multiclass": rng.integers(0, 3, n), "binary": rng.integers(0, 2, n),
             "regression": rng.random(n)}[kind]
        out.append(Task(f"t{i}", kind, (x, y), num_outputs=3 if kind == "multiclass" else 0))
    return out


def model_for(tasks, encoder="learned", method="soft"):
    torch.manual_seed(0)
    core = make_core(method, dense_blocks(6, 3), len(tasks), seed=0, dropout=0.0)
    model = build_model(tasks, core, encoder=encoder).double()
    if method == "soft":
        with torch.no_grad():
            model.core.scale_logits.normal_()
    return model


def forward_and_grads(model, xs, tasks, fused):
    model.fused = fused
    outs = model.forward_tasks(xs, tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = sum((o**3).sum() + o.sum() for o in outs)
    return outs, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
@pytest.mark.parametrize("encoder", ["learned", "frozen"])
@pytest.mark.parametrize("method", ["soft", "parallel"])
def test_forward_tasks_equals_the_per_task_loop(kind, encoder, method):
    model = model_for(tasks_of(kind), encoder, method)
    xs = inputs((7,), n=4, requires_grad=False)
    order = [2, 0, 1, 2]  # not in order, one task twice
    assert stacked_dense([model.encoders[t] for t in order], xs) is not None
    assert stacked_dense([model.decoders[t] for t in order],
                         inputs((6,), n=4, requires_grad=False)) is not None
    fused_out, fused_grads = forward_and_grads(model, xs, order, True)
    ref_out, ref_grads = forward_and_grads(model, xs, order, False)
    for a, b, x, t in zip(fused_out, ref_out, xs, order):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(a, model(x, t), atol=1e-12, rtol=1e-12)
    for a, b in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_unequal_input_sizes_fall_back_to_the_loop():
    model = model_for(tasks_of("binary", features=(5, 7, 7)))
    xs = [torch.randn(B, f, dtype=torch.float64) for f in (5, 7, 7)]
    outs = model.forward_tasks(xs, [0, 1, 2])
    for out, x, t in zip(outs, xs, range(3)):
        torch.testing.assert_close(out, model(x, t), atol=1e-12, rtol=1e-12)


def test_a_wrong_encoder_width_is_still_reported():
    tasks = tasks_of("binary")
    torch.manual_seed(0)
    core = make_core("soft", dense_blocks(6, 3), len(tasks), seed=0)
    model = build_model(tasks, core)
    for t in range(3):
        model.encoders[t] = dense_encoder((7,), 5)
    with pytest.raises(Exception, match="shared core expects"):
        model.forward_tasks([torch.randn(B, 7)] * 3, [0, 1, 2])


def mixed_tasks():
    """Input sizes 5, 7, 5, 7, 9 and classes 2, 3, 2, 2, 3: encoders alike in pairs, heads
    alike in a group of three and a pair."""
    rng = np.random.default_rng(0)
    return [Task(f"t{i}", "multiclass", (rng.random((12, f)), rng.integers(0, k, 12)),
                 num_outputs=k)
            for i, (f, k) in enumerate(zip((5, 7, 5, 7, 9), (2, 3, 2, 2, 3)))]


def test_alike_tasks_are_batched_group_by_group(monkeypatch):
    model = model_for(mixed_tasks())
    order = [0, 1, 2, 3, 4, 2]
    xs = [torch.randn(B, model.encoders[t][1].in_features, dtype=torch.float64) for t in order]
    groups = []

    stacked_parts = dense._stacked_parts

    def counting(parts, inputs):
        groups.append(len(parts))
        return stacked_parts(parts, inputs)

    monkeypatch.setattr(dense, "_stacked_parts", counting)
    fused_out, fused_grads = forward_and_grads(model, xs, order, True)
    assert sorted(groups) == [2, 2, 3, 4]  # encoders of 5 and 7 inputs, heads of 2 and 3
    ref_out, ref_grads = forward_and_grads(model, xs, order, False)
    for a, b in zip(fused_out + list(fused_grads), ref_out + list(ref_grads)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------- losses


def outputs_and_targets(kind, n=T, shape=(B, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = [torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
            for _ in range(n)]
    if kind == "multiclass":
        ys = [torch.randint(0, shape[1], shape[:1], generator=g) for _ in range(n)]
    elif kind == "binary":
        ys = [torch.randint(0, 2, shape[:1], generator=g).double() for _ in range(n)]
    else:
        ys = [torch.randn(*shape, dtype=torch.float64, generator=g) for _ in range(n)]
    return outs, ys


@pytest.mark.parametrize("kind, shape", [("multiclass", (B, 3)), ("binary", (B, 1)),
                                         ("regression", (B, 1)), ("regression", (B, 3))])
def test_stacked_losses_equal_each_tasks_loss(kind, shape):
    tasks = tasks_of(kind, features=(7,) * T)
    outs, ys = outputs_and_targets(kind, shape=shape)
    if kind != "regression" or shape[1] == 1:
        ys = [y.reshape(-1) if kind == "regression" else y for y in ys]
    stacked = stacked_losses(tasks, outs, ys)
    loop = [t.loss(o, y) for t, o, y in zip(tasks, outs, ys)]
    assert len(stacked) == T
    for a, b in zip(stacked, loop):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-13)
    weights = torch.arange(1.0, T + 1, dtype=torch.float64)  # distinct per task
    ga = torch.autograd.grad((torch.stack(stacked) * weights).sum(), outs)
    gb = torch.autograd.grad((torch.stack(loop) * weights).sum(), outs)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=1e-13)


def test_losses_that_differ_are_not_stacked():
    outs, ys = outputs_and_targets("multiclass")
    mixed = tasks_of("multiclass", features=(7,) * (T - 1)) + tasks_of("binary", features=(7,))
    assert stacked_losses(mixed, outs, ys) is None
    tasks = tasks_of("multiclass", features=(7,) * T)
    assert stacked_losses(tasks[:1], outs[:1], ys[:1]) is None
    short, short_y = outputs_and_targets("multiclass", n=1, shape=(B - 1, 3))
    assert stacked_losses(tasks, outs[:-1] + short, ys[:-1] + short_y) is None

    class WeightedTask(Task):
        def loss(self, output, target):
            return 2 * super().loss(output, target)

    tasks[1] = WeightedTask("w", "multiclass", tasks[1].train, num_outputs=3)
    assert stacked_losses(tasks, outs, ys) is None


def test_the_trainer_stacks_losses_group_by_group():
    rng = np.random.default_rng(0)
    tasks = mixed_tasks() + [Task("r", "regression", (rng.random((12, 5)), rng.random(12)))]
    trainer = Trainer(model_for(tasks), tasks, TrainConfig(progress=False))
    order = [0, 1, 2, 3, 4, 5, 2]
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(B, tasks[t].num_outputs, dtype=torch.float64, generator=g)
            for t in order]
    ys = [torch.randint(0, tasks[t].num_outputs, (B,), generator=g)
          if tasks[t].kind == "multiclass" else torch.rand(B, dtype=torch.float64, generator=g)
          for t in order]
    losses = trainer.losses_of(order, outs, ys)
    for loss, t, out, y in zip(losses, order, outs, ys):
        torch.testing.assert_close(loss, tasks[t].loss(out, y), atol=1e-14, rtol=1e-13)


# ---------------------------------------------------------------------- training


def test_a_training_step_equals_the_reference_step():
    """One joint step with batched encoders, heads and losses updates the parameters as the
    per-task loop does, and reports the same per-task losses."""
    tasks = tasks_of("binary", features=(7,) * 3, n=40)
    cfg = TrainConfig(steps=3, batch_size=8, eval_every=3, progress=False, seed=2)
    results = []
    for fused in (True, False):
        model = model_for(tasks).float()
        model.fused = fused
        trainer = Trainer(model, tasks, cfg)
        losses = [trainer.train_step() for _ in range(3)]
        results.append((losses, model.state_dict()))
    (fused_losses, fused_state), (ref_losses, ref_state) = results
    np.testing.assert_allclose(fused_losses, ref_losses, rtol=1e-5)
    for k in fused_state:
        torch.testing.assert_close(fused_state[k], ref_state[k], atol=1e-5, rtol=1e-5, msg=k)


def test_optimisers_use_their_fastest_implementation():
    from flexmtl.training.optim import OPTIMIZERS, fast_optimizer, parameter_groups

    tasks = tasks_of("binary")
    def optimizer(name):
        groups = parameter_groups(model_for(tasks).float(), TrainConfig())
        return fast_optimizer(OPTIMIZERS.get(name), groups)

    assert all(g["fused"] for g in optimizer("adam").param_groups)
    assert all(g["foreach"] for g in optimizer("rmsprop").param_groups)
    trainer = Trainer(model_for(tasks).float(), tasks, TrainConfig(progress=False))
    trainer.setup()  # the trainer builds its optimiser the same way
    assert all(g["fused"] for g in trainer.optimizer.param_groups)


# ---------------------------------------------------------------------- allocation streams


def test_allocation_samples_come_from_the_given_generator():
    """Data-parallel training hands every rank one shared generator (SharedStream)."""
    from flexmtl.sharing.allocation import GumbelMatrixAllocation

    alloc = GumbelMatrixAllocation(3, 16)
    a = alloc.sample(1, 1.0, generator=torch.Generator().manual_seed(5))
    b = alloc.sample(1, 1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    alloc.generator = torch.Generator().manual_seed(5)
    state = torch.get_rng_state()
    torch.testing.assert_close(alloc(1, 1.0), a)  # training: the module's generator
    assert torch.equal(torch.get_rng_state(), state)  # the default stream is untouched
    alloc.eval_mode = "sample"
    alloc.eval()
    alloc(1, 1.0)  # evaluation (rank 0 alone): the default stream, not the shared one
    assert not torch.equal(torch.get_rng_state(), state)
