"""The soft ordering paper's image experiments (Omniglot Sec. 4.3, CelebA Sec. 4.4) end to end
on tiny fixture files in the original formats, and the library pieces they rest on: cores of
blocks that shrink the image, lazily read inputs shared by tasks, the second optimiser."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_omniglot
from torch import nn

from flexmtl import ConfigError, ShapeError, Task, TrainConfig, Trainer, build_model, make_core
from flexmtl.data import celeba, omniglot
from flexmtl.data.celeba import CelebAImages
from flexmtl.errors import DataNotFoundError
from flexmtl.experiments import get_experiment
from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.experiments.soft_ordering_images import SharedEncoderModel
from flexmtl.runner import run_experiment
from flexmtl.tasks import LazyInputs
from flexmtl.training import TaskBatchSampler
from flexmtl.vision import ChannelPad, ResNet50Features, load_imagenet_weights

METHODS = ("single", "parallel", "permuted", "soft")


# ---------------------------------------------------------------------- shrinking cores


def pool_blocks(n=3, channels=4, padding=0, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=padding), nn.ReLU(),
                          nn.MaxPool2d(2)) for _ in range(n)]


def test_core_shapes_are_probed_per_depth():
    core = make_core("soft", pool_blocks(), 2, feature_shape=(4, 30, 30))
    assert core.depth_shapes == ((4, 30, 30), (4, 14, 14), (4, 6, 6), (4, 2, 2))
    assert core.output_shape == (4, 2, 2) and core.feature_shape == (4, 30, 30)
    same = make_core("parallel", pool_blocks(padding=1), 2, feature_shape=(4, 30, 30))
    assert same.output_shape == (4, 3, 3)
    calls = []
    dense = dense_blocks(6, 3)
    dense[0].register_forward_hook(lambda *args: calls.append(1))
    assert make_core("soft", dense, 2, depth=5).depth_shapes == ((6,),) * 6
    assert len(calls) == 1  # shape preserving: the later depths are not probed again
    # a model over a shrinking core: decoders read the output shape
    tasks = [Task(f"t{i}", "multiclass", (np.zeros((4, 4, 30, 30)), np.arange(4) % 3))
             for i in range(2)]
    model = build_model(tasks, core, encoder="identity")
    assert model(torch.zeros(5, 4, 30, 30), 1).shape == (5, 3)


def test_blocks_that_disagree_or_do_not_fit_a_depth_are_refused():
    mixed = pool_blocks(2) + [nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]
    with pytest.raises(ShapeError, match=r"at depth 1 .* block 2 \(Sequential\) -> \(4, 30, 30\)"):
        make_core("soft", mixed, 2, feature_shape=(4, 30, 30))
    with pytest.raises(ShapeError, match=r"block 0 \(Sequential\) at depth 2 failed on an "
                                         r"input of per-example shape \(4, 3, 3\)"):
        make_core("permuted", pool_blocks(), 2, feature_shape=(4, 8, 8))


@pytest.mark.parametrize("method", METHODS)
def test_fused_shrinking_core_equals_the_reference(method):
    core = make_core(method, pool_blocks(), 3, seed=1, feature_shape=(4, 22, 22)).double()
    if method == "soft":
        with torch.no_grad():
            core.scale_logits.normal_()
    reference = copy.deepcopy(core)
    reference.fused = False
    hs = [torch.randn(n, 4, 22, 22, dtype=torch.float64, requires_grad=True) for n in (3, 2, 3)]
    tasks = [0, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fused path, not the warned loop
        out = core.forward_tasks(hs, tasks)
    expected = reference.forward_tasks(hs, tasks)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(sum((o * o).sum() for o in out), [*hs, *core.parameters()])
    ref = torch.autograd.grad(sum((o * o).sum() for o in expected),
                              [*hs, *reference.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------- shared inputs


def test_sampler_streams_give_tasks_of_one_group_the_same_batches():
    plain = TaskBatchSampler([10, 10, 7], 4, 3)
    explicit = TaskBatchSampler([10, 10, 7], 4, 3, streams=[0, 1, 2])
    for _ in range(6):
        for t in range(3):
            assert torch.equal(plain.next(t), explicit.next(t))
    sampler = TaskBatchSampler([10, 10, 7], 4, 3, streams=["a", "a", 2])
    seen = []
    for step in range(7):
        if step == 3:  # resume from a checkpoint taken mid-way
            state = sampler.state_dict()
            sampler = TaskBatchSampler([10, 10, 7], 4, 3, streams=["a", "a", 2])
            sampler.load_state_dict(state)
        a, b, c = (sampler.next(t) for t in range(3))
        assert torch.equal(a, b) and len(c) == 4
        seen.append(a)
    fresh = TaskBatchSampler([10, 10, 7], 4, 3, streams=["a", "a", 2])
    for batch in seen:  # uninterrupted: the stream moves on once per step, whoever asks first
        assert torch.equal(fresh.next(1), batch)
        assert torch.equal(fresh.next(0), batch)
        fresh.next(2)
    with pytest.raises(ValueError, match="equal size"):
        TaskBatchSampler([10, 9], 4, 0, streams=[0, 0])


class CountingInputs(LazyInputs):
    """Lazy inputs over an array, counting the examples read."""

    def __init__(self, x: np.ndarray):
        super().__init__()
        self.x = torch.as_tensor(x)
        self.shared["reads"] = 0

    @property
    def shape(self):
        return tuple(self.x.shape)

    def read(self, index):
        self.shared["reads"] += len(index)
        return self.x[torch.as_tensor(index)]


def grouped_tasks(lazy: bool, n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 5)).astype(np.float32)
    parts = [slice(0, 24), slice(24, 32), slice(32, n)]
    inputs = [CountingInputs(x[p]) if lazy else x[p] for p in parts]
    tasks = []
    for j in range(3):
        y = (x[:, j] > 0.5).astype(np.float32)
        tasks.append(Task(f"a{j}", "binary", *[(xs, y[p]) for xs, p in zip(inputs, parts)],
                          input_group="shared"))
    return tasks, inputs


def shared_encoder_model(tasks):
    torch.manual_seed(0)
    core = make_core("soft", dense_blocks(6, 2), len(tasks), dropout=0.0)
    encoder = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Identity())  # not a stacked dense
    model = build_model(tasks, core, decoder="sigmoid")
    return SharedEncoderModel(core, encoder, list(model.decoders))


def test_tasks_of_an_input_group_read_and_encode_each_batch_once():
    tasks, (train, val, test) = grouped_tasks(lazy=True)
    assert tasks[0].train.x is train and tasks[0].input_shape == (5,)
    model = shared_encoder_model(tasks)
    encodes = []
    model.encoders[0].register_forward_hook(lambda *args: encodes.append(args[1][0].shape[0]))
    cfg = TrainConfig(steps=3, batch_size=8, eval_every=3, eval_batch_size=5, progress=False)
    trainer = Trainer(model, tasks, cfg)
    res = trainer.fit()
    assert train.shared["reads"] == 3 * 8  # one batch per step for all three tasks
    # val (8) and test (8) in batches of 5: read and encoded once per evaluation
    assert val.shared["reads"] == 2 * 8 and test.shared["reads"] == 8
    assert encodes[:3] == [8, 8, 8] and len(encodes) == 3 + 2 * 2 + 2
    assert [k for k in model.state_dict() if k.startswith("enc")] == ["encoder.0.weight",
                                                                      "encoder.0.bias"]
    for t in range(3):  # the task-by-task reference: the same outputs
        x = val.x[torch.arange(4)]
        torch.testing.assert_close(model.forward_tasks([x], [t])[0], model(x, t))
    # the same numbers as the tasks with in-memory inputs
    eager, _ = grouped_tasks(lazy=False)
    again = Trainer(shared_encoder_model(eager), eager, cfg).fit()
    assert res.test["loss"] == pytest.approx(again.test["loss"], rel=1e-6)
    for name, metrics in again.val["tasks"].items():
        assert res.val["tasks"][name] == pytest.approx(metrics, rel=1e-6)


def test_tasks_of_an_input_group_need_splits_of_equal_size():
    tasks, _ = grouped_tasks(lazy=False)
    tasks[1].val = None
    with pytest.raises(ConfigError, match="share input group 'shared'.*val splits differ"):
        Trainer(shared_encoder_model(tasks), tasks, TrainConfig(steps=1, progress=False))


# ---------------------------------------------------------------------- second optimiser


def tiny_task():
    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.float32)
    return [Task("t", "binary", (x[:40], y[:40]), (x[40:50], y[40:50]), (x[50:], y[50:]))]


def small_model(tasks):
    torch.manual_seed(0)
    return build_model(tasks, make_core("soft", dense_blocks(6, 2), 1), decoder="sigmoid")


@pytest.fixture
def scripted_validation(monkeypatch):
    """The summed validation loss at each evaluation step: best at step 4, then worse."""
    losses = {2: 1.0, 4: 0.9, 6: 0.95, 8: 0.97, 10: 0.5, 12: 0.6}
    evaluate = Trainer.evaluate

    def scripted(self, split="val"):
        metrics = evaluate(self, split)
        if split == "val" and self.step in losses:
            metrics["loss"] = losses[self.step]
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", scripted)


def test_finetune_optimizer_takes_over_when_validation_stalls(tmp_path, scripted_validation):
    tasks = tiny_task()
    cfg = TrainConfig(steps=12, batch_size=8, eval_every=2, progress=False, sharing_lr=0.1,
                      finetune_optimizer="rmsprop", finetune_lr=1e-4, finetune_patience=2)
    trainer = Trainer(small_model(tasks), tasks, cfg, out_dir=tmp_path / "ref")
    res = trainer.fit()
    assert res.finetune_step == 8  # evaluations at 6 and 8 did not beat step 4
    assert res.best_step == 10  # selection goes on over both phases
    assert isinstance(trainer.optimizer, torch.optim.RMSprop)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({"weights": 1e-4, "biases": 1e-4, "sharing": 1e-4 * 0.1 / 1e-3})
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 4  # steps 9..12
    # a run stopped before the switch and resumed ends exactly like the uninterrupted one
    stop = res.finetune_step - 2
    Trainer(small_model(tasks), tasks, TrainConfig(**{**cfg.__dict__, "steps": stop}),
            out_dir=tmp_path / "run").fit()
    resumed = Trainer(small_model(tasks), tasks, cfg, out_dir=tmp_path / "run")
    resumed.setup()
    assert resumed.step == stop and isinstance(resumed.optimizer, torch.optim.Adam)
    assert resumed.fit().finetune_step == res.finetune_step
    for k, v in trainer.final_state.items():
        torch.testing.assert_close(resumed.final_state[k], v, rtol=0, atol=0, msg=k)
    # resuming after the switch rebuilds the finetune optimiser
    again = Trainer(small_model(tasks), tasks, cfg, out_dir=tmp_path / "ref")
    again.setup()
    assert isinstance(again.optimizer, torch.optim.RMSprop) and again.step == 12
    with pytest.raises(ConfigError, match="finetune_lr > 0"):
        TrainConfig(finetune_optimizer="rmsprop", finetune_lr=0.0).validate()


# ---------------------------------------------------------------------- ResNet-50


@pytest.fixture
def one_thread():
    """ResNet-50 on a CPU shared with other work: one thread is many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resnet50_features_and_imagenet_weights(tmp_path, monkeypatch, one_thread):
    torch.manual_seed(0)
    net = ResNet50Features().eval()
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, 2048)
    assert sum(p.numel() for p in net.parameters()) == 23_508_032  # ResNet-50 without fc
    # a file like torchvision's: the same names, plus the classifier fc.*
    saved = {**{k: v + 1 for k, v in net.state_dict().items()},
             "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(saved, tmp_path / "weights.pth")
    for k, v in load_imagenet_weights(net, tmp_path / "weights.pth").state_dict().items():
        assert torch.equal(v, saved[k]), k
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DataNotFoundError, match=r"resnet50-0676ba61\.pth.*IMAGENET1K_V1.*"
                                                r"pretrained=false") as info:
        load_imagenet_weights(net)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(info.value)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ShapeError, match="not a torchvision ResNet-50"):
        load_imagenet_weights(net, tmp_path / "bad.pth")
    assert ChannelPad(5)(torch.ones(2, 1, 3, 3)).shape == (2, 5, 3, 3)


# ---------------------------------------------------------------------- CelebA


ATTRIBUTES = [f"fixture_attr_{j:02d}" for j in range(40)]
PARTITION = (0, 0, 0, 0, 1, 1, 2, 2)  # 4 train, 2 val, 2 test images


def write_celeba_fixture(root: Path) -> Path:
    """Tiny CelebA files (flat colours, attribute names of the fixture's own) in the release's
    formats: 178x218 JPEGs, list_attr_celeba.txt, list_eval_partition.txt."""
    from PIL import Image

    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    lines = [str(len(PARTITION)), " ".join(ATTRIBUTES)]
    for i in range(len(PARTITION)):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (178, 218), (30 * i, 255 - 30 * i, 100)).save(images / name)
        values = np.where((i + np.arange(40)) % 2 == 0, 1, -1)
        lines.append(name + "".join(f" {v:2d}" for v in values))
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {code}\n" for i, code in enumerate(PARTITION)))
    return folder


@pytest.fixture
def celeba_root(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    celeba._read_index.cache_clear()
    write_celeba_fixture(tmp_path)
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path))
    yield tmp_path
    celeba._read_index.cache_clear()


TINY_CELEBA = {"image_size": 32, "pretrained": False, "steps": 2, "eval_every": 1,
               "batch_size": 2, "eval_batch_size": 4, "loader_threads": 2, "threads": 1}


def test_celeba_decodes_and_encodes_each_batch_once(celeba_root, monkeypatch):
    exp = get_experiment("celeba")
    cfg = exp.resolve_config(overrides=TINY_CELEBA)
    tasks = exp.build_tasks(cfg, 0)
    assert len(tasks) == 40 and [t.name for t in tasks] == ATTRIBUTES
    assert [len(tasks[0].train), len(tasks[0].val), len(tasks[0].test)] == [4, 2, 2]
    assert tasks[0].input_shape == (3, 32, 32) and tasks[0].input_group == "celeba"
    assert tasks[0].train.y.tolist() == [1, 0, 1, 0] and tasks[1].train.y.tolist() == [0, 1, 0, 1]
    decoded = []
    read = celeba.read_celeba_image
    monkeypatch.setattr(celeba, "read_celeba_image",
                        lambda path, size: decoded.append(path) or read(path, size))
    model = exp.build_model("soft", tasks, cfg, 0)
    assert isinstance(model.encoder[1], ResNet50Features)
    assert all(e is model.encoder for e in model.encoders)  # one encoder for all tasks
    keys = list(model.state_dict())  # the ResNet once, not once per task
    assert sum(k.startswith("encoder.1.") for k in keys) == len(model.encoder[1].state_dict())
    assert not any(k.startswith("encoders.") for k in keys)
    runs = []
    model.encoder.register_forward_hook(lambda *args: runs.append(args[1][0].shape[0]))
    trainer = Trainer(model, tasks, exp.train_config(cfg, 0, False))
    trainer.fit()
    # 2 steps x 2 images; val and test (2 images each) once: the split fits one batch, and
    # its evaluations after step 1, step 2 and at the end read the same batch again
    assert len(decoded) == 2 * 2 + 2 + 2
    # the ResNet: once per training step, once per evaluation batch (3 val, 1 test)
    assert runs == [2] * (2 + 3 + 1)


def test_celeba_runs_end_to_end(celeba_root):
    results = run_experiment("celeba", methods=["parallel", "soft"], seeds=1,
                             out_dir=celeba_root / "run", progress=False, plots=False,
                             log=lambda s: 0, overrides=TINY_CELEBA)
    assert set(results["methods"]) == {"parallel", "soft"}
    run = json.loads((celeba_root / "run" / "soft" / "seed-0" / "result.json").read_text())
    assert run["steps"] == 2 and len(run["test"]["tasks"]) == 40
    assert np.array(run["sharing"]["scales"]).shape == (40, 4, 4)
    assert "official partition" in run["tasks"][0]["note"]


def test_celeba_needs_the_imagenet_weights_by_default(celeba_root, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(celeba_root / "torch"))
    exp = get_experiment("celeba")
    cfg = exp.resolve_config()
    assert cfg["pretrained"] and cfg["image_size"] == 224 and cfg["batch_size"] == 32
    assert cfg["finetune_optimizer"] == "rmsprop" and cfg["finetune_lr"] == 1e-5
    tasks = exp.build_tasks(exp.resolve_config(overrides={"image_size": 32}), 0)
    with pytest.raises(DataNotFoundError, match="resnet50-0676ba61.pth"):
        exp.build_model("soft", tasks, cfg, 0)


def test_image_experiments_without_data_say_what_to_download(tmp_path, monkeypatch, capsys):
    from flexmtl.cli import main

    celeba._read_index.cache_clear()
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path))
    assert main(["run", "celeba", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "img_align_celeba.zip" in err and "list_eval_partition.txt" in err
    assert str(tmp_path / "celeba") in err
    assert main(["run", "omniglot-ordering", "--no-sweep", "--out", str(tmp_path / "run2"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and str(tmp_path / "omniglot") in err


def test_celeba_images_are_read_lazily(celeba_root):
    index = celeba.load_celeba_index()
    images = CelebAImages(index.train_paths, 16, threads=2)
    assert images.shape == (4, 3, 16, 16) and len(images) == 4
    batch = images[torch.tensor([2, 0])]
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert images[np.array([2, 0])] is batch  # the last batch is kept
    np.testing.assert_allclose(batch[1].numpy(),
                               celeba.read_celeba_image(index.train_paths[0], 16))
    assert images[1:3].shape == (2, 3, 16, 16)
    assert CelebAImages(index.train_paths, None).shape == (4, 3, 218, 178)


# ---------------------------------------------------------------------- Omniglot


@pytest.fixture
def omniglot_root(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    omniglot._load_task.cache_clear()
    # the first three alphabets of the literature's order, 2-3 characters each
    write_omniglot(tmp_path, {"Gujarati": ("images_background", 3),
                              "Sylheti": ("images_evaluation", 2),
                              "Arcadian": ("images_background", 2)})
    monkeypatch.setenv("FLEXMTL_DATA", str(tmp_path))
    yield tmp_path
    omniglot._load_task.cache_clear()


def test_omniglot_ordering_model_follows_the_paper(omniglot_root):
    exp = get_experiment("omniglot-ordering")
    cfg = exp.resolve_config(overrides={"num_tasks": 2})
    tasks = exp.build_tasks(cfg, 0)
    assert [t.name for t in tasks] == ["Gujarati", "Sylheti"]
    assert [len(tasks[0].train), len(tasks[0].val), len(tasks[0].test)] == [42, 6, 12]
    model = exp.build_model("soft", tasks, cfg, 0)
    assert model.core.depth_shapes == ((53, 105, 105), (53, 51, 51), (53, 24, 24),
                                       (53, 11, 11), (53, 4, 4))
    assert model.core.dropout.p == 0.5 and model.core.scale_logits.shape == (2, 4, 4)
    assert model.decoders[0][1].in_features == 53 * 4 * 4
    assert model.decoders[0][1].out_features == 3 and model.decoders[1][1].out_features == 2
    h = model.encoders[0](tasks[0].train.x[:2])
    assert h.shape == (2, 53, 105, 105) and h[:, 1:].abs().sum() == 0  # zero-padded channels
    torch.testing.assert_close(h[:, :1], tasks[0].train.x[:2])


def test_omniglot_ordering_sweeps_the_number_of_tasks(omniglot_root):
    tiny = {"image_size": 46, "channels": 6, "steps": 2, "eval_every": 1, "batch_size": 4,
            "threads": 1}
    results = run_experiment("omniglot-ordering", seeds=1, out_dir=omniglot_root / "run",
                             progress=False, plots=False, log=lambda s: 0, overrides=tiny,
                             sweep=("num_tasks", [2, 3]))
    points = results["sweep"]["points"]
    assert [p["value"] for p in points] == [2, 3]
    assert set(points[0]["methods"]) == set(METHODS)
    assert set(points[1]["data"]) == {"Gujarati", "Sylheti", "Arcadian"}
    run = json.loads((omniglot_root / "run" / "num_tasks=3" / "permuted" / "seed-0" /
                      "result.json").read_text())
    assert run["steps"] == 2 and set(run["test"]["tasks"]) == {"Gujarati", "Sylheti", "Arcadian"}
    exp = get_experiment("omniglot-ordering")
    assert exp.sweep == ("num_tasks", (10, 20, 30, 40, 50))
    with pytest.raises(ConfigError, match="num_tasks"):
        exp.build_tasks(exp.resolve_config(overrides={"num_tasks": 51}), 0)
