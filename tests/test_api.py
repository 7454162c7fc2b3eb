"""Public read-outs and settings of the cores and models: soft-order scales read as plain
numbers, set, frozen and overridden for all tasks at once; allocation probabilities read
as plain numbers; a routed core that infers its input shape; heads reachable by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import flexmtl as fm
from flexmtl.errors import ConfigError, ShapeError, UnknownNameError


def _blocks(n=3, w=4):
    return [nn.Sequential(nn.Linear(w, w), nn.Tanh()) for _ in range(n)]


def test_soft_order_scales_read_set_freeze_and_override():
    torch.manual_seed(0)
    core = fm.make_core("soft", _blocks(), 2)
    assert core.scales(0).grad_fn is None and not core.scales().requires_grad  # plain numbers
    assert core.scales(0, grad=True).requires_grad  # for a regulariser of one's own
    order = torch.zeros(3, 3)
    order[[2, 0, 1], [0, 1, 2]] = 1.0  # task 1: layer 2, then 0, then 1
    core.set_scales(order, task=1)
    assert torch.allclose(core.scales(1), order, atol=1e-12)
    assert core.layer_order(1) == [2, 0, 1]
    # with hard scales, task 1 is its blocks in that order (Eq. 7 becomes Eq. 3)
    h = torch.randn(5, 4)
    expected = core.blocks[1](core.blocks[0](core.blocks[2](h)))
    assert torch.allclose(core(h, 1), expected, atol=1e-6)
    mixed = torch.full((2, 3, 3), 1 / 3)
    core.set_scales(mixed)
    assert torch.allclose(core.scales(), mixed)
    with pytest.raises(ConfigError, match="sum to 1"):
        core.set_scales(torch.full((3, 3), 0.5), task=0)
    with pytest.raises(ShapeError, match=r"\[layers, depths\]"):
        core.set_scales(torch.full((2, 3), 0.5), task=0)
    sig = fm.make_core("soft", _blocks(), 2, gate="sigmoid")
    sig.set_scales(torch.full((3, 3), 0.25), task=0)
    assert torch.allclose(sig.scales(0), torch.full((3, 3), 0.25), atol=1e-6)
    # frozen scales get no gradient; unfrozen they learn again
    core.freeze_scales()
    core(h, 0).sum().backward()
    assert core.scale_logits.grad is None
    core.freeze_scales(False)
    core(h, 0).sum().backward()
    assert core.scale_logits.grad is not None
    # forward_tasks takes the override of forward, for all tasks at once, fused or not
    override = torch.stack([order, mixed[0]])
    hs = [torch.randn(4, 4), torch.randn(2, 4)]
    for fused in (True, False):
        core.fused = fused
        outs = core.forward_tasks(hs, [0, 1], scales=override)
        refs = [core(hs[0], 0, scales=override[0]), core(hs[1], 1, scales=override[1])]
        assert all(torch.allclose(o, r, atol=1e-6) for o, r in zip(outs, refs))
    with pytest.raises(ShapeError, match="tasks, layers, depths"):
        core.forward_tasks(hs, [0, 1], scales=override[0])


def test_routed_core_infers_its_input_shape_and_reads_probabilities():
    torch.manual_seed(0)
    comps = lambda: [nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(3)]  # noqa: E731
    layer = fm.RoutedLayer(comps(), 2, input_shape=(6,))
    core = fm.RoutedCore([layer, fm.RoutedLayer(comps(), 2, input_shape=(6,))], 2)
    assert core.feature_shape == (6,)
    by_name = fm.make_core("gumbel", [comps(), comps()], 2)  # no feature_shape needed
    assert by_name.feature_shape == (6,)
    p = core.probabilities()
    assert p.shape == (2, 6) and not p.requires_grad
    assert torch.allclose(p, core.sharing_snapshot().detach())
    assert not layer.probabilities().requires_grad and layer.probs().requires_grad
    with pytest.raises(ShapeError, match="feature_shape"):
        fm.make_core("gumbel", [[nn.Conv2d(1, 2, 3)]], 2)


def test_heads_and_encoders_by_name():
    rng = np.random.default_rng(0)
    x = rng.random((10, 3), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    tasks = [fm.Task("age", "multiclass", (x, y)), fm.Task("income", "binary", (x, y))]
    model = fm.build_model(tasks, fm.make_core("parallel", _blocks(w=8), 2))
    assert model.head("income") is model.decoders[1]
    assert model.task_encoder("age") is model.encoders[0]
    assert model.head(0) is model.decoders[0] and model.task_index("income") == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'income'"):
        model.head("incme")
    with pytest.raises(IndexError):
        model.task_encoder(2)


def test_tensorboard_logs_losses_rates_and_learned_sharing(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(0)
    x = rng.random((30, 3), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    tasks = [fm.Task("a", "multiclass", (x, y), (x, y)), fm.Task("b", "binary", (x, y), (x, y))]
    for method in ("soft", "gumbel"):
        torch.manual_seed(0)
        if method == "soft":
            core = fm.make_core("soft", _blocks(w=8), 2)
        else:
            core = fm.make_core("gumbel", [[nn.Sequential(nn.Linear(8, 8), nn.ReLU())
                                            for _ in range(2)]], 2)
        model = fm.build_model(tasks, core)
        out = tmp_path / method
        fm.Trainer(model, tasks, fm.TrainConfig(steps=4, eval_every=2, progress=False,
                                                tensorboard=True), out_dir=out).fit()
        events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
        assert {"train/loss", "train/loss/a", "train/loss/b", "val/loss",
                "val/accuracy/a"} <= scalars
        assert any(t.startswith("lr/") for t in scalars)
        assert len(events.Scalars("train/loss")) == 4 and len(events.Scalars("val/loss")) == 2
        if method == "soft":
            assert {"scales/a", "scales/b"} <= images
        else:
            assert {"allocation/probabilities", "allocation/task_similarity"} <= images
    with pytest.raises(ConfigError, match="out_dir"):
        fm.Trainer(model, tasks, fm.TrainConfig(tensorboard=True))


def test_a_run_says_what_data_it_reads_before_training(tmp_path):
    from flexmtl.runner import run_experiment

    lines: list[str] = []
    run_experiment("random-tasks", methods=["parallel"], seeds=1, out_dir=tmp_path / "run",
                   overrides={"steps": 2, "eval_every": 1, "m": 3, "n": 8}, sweep=False,
                   progress=False, plots=False, log=lines.append)
    data = [i for i, line in enumerate(lines) if line.startswith("  data: ")]
    trained = [i for i, line in enumerate(lines) if "seed 0:" in line]
    assert data and trained and max(data) < min(trained)
    assert "2 tasks (random0, random1)" in lines[data[0]]  # one note: one line


def test_the_data_line_says_exact_stand_in_or_other_form():
    from types import SimpleNamespace

    from flexmtl.runner import _data_line

    def task(note, **info):
        return SimpleNamespace(note=note, info=info)

    assert _data_line(task("iris file", exact=True)) == "exact: iris file"
    assert _data_line(task("stand-in: ionosphere", exact=False, stand_in_for="australian")) \
        == "STAND-IN for australian: ionosphere"
    assert _data_line(task("credit-g", exact=False, stand_in_for=None)) \
        == "not the paper's form: credit-g"
    assert _data_line(task("MNIST 5,000-image subset")) == "MNIST 5,000-image subset"


def test_tensorboard_through_the_runner_with_several_seeds_restart_and_resume(tmp_path):
    """`flexmtl run ... --tensorboard` with several seeds (the runner's batchability probe has
    no run folder: it must not ask for TensorBoard); a restart deletes the old events, and a
    resumed run drops the events after its checkpoint (purge_step)."""
    pytest.importorskip("tensorboard")
    from flexmtl.run_folder import TrainingRun
    from flexmtl.runner import run_experiment

    out = tmp_path / "run"
    run_experiment("random-tasks", methods=["soft"], seeds=2, out_dir=out,
                   overrides={"steps": 4, "eval_every": 2, "m": 3, "n": 8, "tensorboard": True},
                   sweep=False, progress=False, plots=False, log=lambda _: None)
    for seed in (0, 1):
        events = list((out / "soft" / f"seed-{seed}" / "tensorboard").glob("events.*"))
        assert events, seed
    run = TrainingRun(out / "soft" / "seed-0")
    stale = run.path / "tensorboard" / "events.out.tfevents.old"
    stale.write_bytes(b"")
    run.start_fresh()
    assert not (run.path / "tensorboard").exists()
    run.path.joinpath("tensorboard").mkdir()
    assert (run.path / "tensorboard") in run.delete_files()
    assert not (run.path / "tensorboard").exists()


def test_task_index_takes_names_and_integers_only():
    tasks = [fm.Task("a", "binary", (np.zeros((4, 2), np.float32), np.zeros(4, np.int64)))]
    model = fm.build_model(tasks, fm.make_core("parallel", _blocks(w=2), 1))
    assert model.task_index("a") == 0 and model.task_index(np.int64(0)) == 0
    for wrong in (True, 0.0):
        with pytest.raises(TypeError, match="name or an integer"):
            model.task_index(wrong)
    with pytest.raises(UnknownNameError):
        model.task_index("b")
