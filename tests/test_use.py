"""Using finished runs (flexmtl.use): load_run rebuilds the selected model exactly (its
metrics are the run's own), predicts and evaluates new arrays with clear errors, and a task's
exported path computes the full model's outputs for that task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import flexmtl as fm
from flexmtl.cli import main
from flexmtl.errors import ConfigError, DataError, FolderMismatchError, ShapeError, UnknownNameError
from flexmtl.runner import run_experiment
from flexmtl.use.export import parameter_bytes

TINY = {"steps": 6, "eval_every": 3, "m": 4, "n": 16}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("use") / "run"
    run_experiment("random-tasks", methods=["parallel", "permuted"], seeds=2, out_dir=out,
                   overrides=TINY, sweep=False, progress=False, plots=False, log=lambda s: 0)
    return out


def test_load_run_rebuilds_the_selected_model(tiny_run):
    run = fm.load_run(tiny_run, method="permuted", seed=1)
    assert run.experiment == "random-tasks" and run.method == "permuted" and run.seed == 1
    result = json.loads((tiny_run / "permuted" / "seed-1" / "result.json").read_text())
    assert run.best_step == result["best_step"]
    # its metrics on the run's own splits are the ones the run reported
    for split in ("val", "test"):
        if result[split]["tasks"]:
            got = run.evaluate(split)
            assert got["loss"] == pytest.approx(result[split]["loss"], rel=1e-6)
    assert not any(p.requires_grad for p in run.model.parameters()) and not run.model.training
    # the same run by its own folder
    alone = fm.load_run(tiny_run / "permuted" / "seed-1")
    x = run.tasks[0].val.x
    assert np.array_equal(alone.predict(0, x), run.predict(run.task_names[0], x))
    # predict equals the model's forward, one example without its batch dimension too
    assert np.allclose(run.predict(1, x[:3]), run.model(x[:3], 1).numpy())
    assert run.predict(1, x[0].numpy()).shape == run.predict(1, x[:1]).shape
    # new data: the same numbers as the run's split
    val = run.tasks[1].val
    on_new = run.evaluate(data={run.task_names[1]: (val.x.numpy(), val.y.numpy())})
    assert list(on_new["tasks"]) == [run.task_names[1]]
    assert on_new["loss"] == pytest.approx(run.evaluate("val")["tasks"][run.task_names[1]]["loss"])


def test_load_run_says_what_is_wrong(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="several methods: name one of parallel, permuted"):
        fm.load_run(tiny_run)
    with pytest.raises(UnknownNameError, match="Did you mean 'permuted'"):
        fm.load_run(tiny_run, method="permute")
    with pytest.raises(UnknownNameError, match="seed"):
        fm.load_run(tiny_run, method="parallel", seed=7)
    with pytest.raises(ConfigError, match="drop method"):
        fm.load_run(tiny_run / "parallel" / "seed-0", method="parallel")
    with pytest.raises(FileNotFoundError, match="neither a training run"):
        fm.load_run(tmp_path)
    run = fm.load_run(tiny_run, method="parallel")
    x = run.tasks[0].val.x
    with pytest.raises(UnknownNameError, match="Did you mean"):
        run.predict(run.task_names[0][:-1] + "x", x)
    # the model's rules for a task: a name or an integer (numpy's too), never a bool or float
    assert run.task_index(np.int64(1)) == 1 == run.task_index(run.task_names[1])
    for wrong in (True, 1.0):
        with pytest.raises(TypeError, match=f"name or an integer.*{run.task_names[0]}"):
            run.task_index(wrong)
        with pytest.raises(TypeError, match="name or an integer"):
            run.model.task_index(wrong)
    with pytest.raises(IndexError, match=f"out of range.*{run.task_names[0]}"):
        run.predict(len(run.tasks), x)
    with pytest.raises(ShapeError, match="takes inputs of shape"):
        run.predict(0, x[:, :-1])
    with pytest.raises(DataError, match="NaN"):
        run.predict(0, np.full(tuple(x.shape), np.nan, dtype=np.float32))
    with pytest.raises(ShapeError, match="targets"):
        run.evaluate(data={run.task_names[0]: (x, run.tasks[0].val.y[:2])})
    assert run.tasks[0].kind == "binary"  # random tasks: a label is the sign of the logit
    assert run.predict_labels(0, x).tolist() == (run.predict(0, x)[:, 0] > 0).astype(int).tolist()
    # the data or model behind a run changed since it trained: refused, with what changed
    fingerprint = tiny_run / "parallel" / "seed-0" / "fingerprint.json"
    saved = fingerprint.read_text()
    changed = json.loads(saved)
    key = next(k for k in changed if k.endswith(".train.y"))
    changed[key] = "0" * 16
    fingerprint.write_text(json.dumps(changed))
    try:
        with pytest.raises(FolderMismatchError, match="train.y"):
            fm.load_run(tiny_run, method="parallel")
        fm.load_run(tiny_run, method="parallel", check=False)
    finally:
        fingerprint.write_text(saved)


def test_evaluate_command(tiny_run, tmp_path, capsys):
    run = fm.load_run(tiny_run, method="parallel")
    val = run.tasks[0].val
    np.savez(tmp_path / "new.npz", x=val.x.numpy(), y=val.y.numpy())
    assert main(["evaluate", str(tiny_run), "--method", "parallel", "--split", "val",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["loss"] == pytest.approx(run.evaluate("val")["loss"])
    assert main(["evaluate", str(tiny_run / "parallel" / "seed-0"), "--data",
                 f"{run.task_names[0]}={tmp_path / 'new.npz'}"]) == 0
    assert "from" in capsys.readouterr().out
    assert main(["evaluate", str(tiny_run), "--method", "parallel", "--data", "nope.csv"]) == 2
    assert "TASK=FILE" in capsys.readouterr().err


def _tasks(rng, kinds=("multiclass", "binary")):
    def split(n, f):
        x = rng.random((n, f), dtype=np.float32)
        return x, (x[:, 0] > 0.5).astype(np.int64)
    return [fm.Task(f"t{i}", kind, train=split(40, 3 + i), val=split(20, 3 + i))
            for i, kind in enumerate(kinds)]


def test_a_trainer_run_loads_into_its_own_model(tmp_path):
    rng = np.random.default_rng(0)
    tasks = _tasks(rng)

    def build():
        fm.seed_everything(0)
        blocks = [nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)]
        return fm.build_model(tasks, fm.make_core("soft", blocks, len(tasks)))

    trained = build()
    fm.Trainer(trained, tasks, fm.TrainConfig(steps=4, eval_every=2, progress=False),
               out_dir=tmp_path / "mine").fit()
    fresh = build()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # not the trained weights
    run = fm.load_run(tmp_path / "mine", model=fresh, tasks=tasks)
    trained.eval()
    x = tasks[0].val.x
    assert np.allclose(run.predict("t0", x), trained(x, 0).detach().numpy(), atol=1e-6)
    assert run.predict_labels("t0", x).tolist() == trained(x, 0).argmax(1).tolist()
    assert set(run.predict_labels("t1", tasks[1].val.x).tolist()) <= {0, 1}
    regression = fm.Task("r", "regression", train=(x, x[:, 0]), val=(x, x[:, 0]))
    run.tasks = [tasks[0], regression]
    with pytest.raises(ConfigError, match="no labels"):
        run.predict_labels("r", tasks[1].val.x[:, :3])
    with pytest.raises(FileNotFoundError, match="model=..."):
        fm.load_run(tmp_path / "mine")
    with pytest.raises(FolderMismatchError, match="does not fit"):
        fm.load_run(tmp_path / "mine", model=fm.build_model(tasks, fm.make_core(
            "parallel", [nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)], 2)))


# ---------------------------------------------------------------------- export


def _model(method, tasks, **options):
    fm.seed_everything(1)
    if method in ("gumbel", "no-sharing", "shared-bottom"):
        layers = [[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)] for _ in range(2)]
        core = fm.make_core(method, layers, len(tasks), feature_shape=(8,), **options)
    else:
        blocks = [nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)]
        core = fm.make_core(method, blocks, len(tasks), seed=0, **options)
    return fm.build_model(tasks, core).eval()


@pytest.mark.parametrize("method", ["parallel", "permuted", "single", "soft", "gumbel",
                                    "no-sharing", "shared-bottom"])
def test_a_task_module_computes_the_models_outputs_for_its_task(method):
    tasks = _tasks(np.random.default_rng(1), ("multiclass", "binary", "multiclass"))
    model = _model(method, tasks)
    if method == "gumbel":  # a pattern with shared, own and unused components
        with torch.no_grad():
            for layer in model.core.routed_layers:
                logits = layer.allocation.logits
                logits[..., 0] = torch.tensor([[3.0, 3, -3], [3, -3, 3], [-3.0, -3, -3]])
                logits[..., 1] = 0.0
    for t, task in enumerate(tasks):
        module = fm.task_module(model, task.name)
        x = task.val.x
        assert torch.allclose(module(x), model(x, t), atol=1e-6), (method, t)
        assert parameter_bytes(module) < parameter_bytes(model)
    if method == "gumbel":  # only the active components are kept; none: the layer is zeros
        sizes = [parameter_bytes(fm.task_module(model, t).path) for t in range(3)]
        assert sizes[0] == sizes[1] > 0 and sizes[2] == 0


def test_pruning_soft_order_branches():
    tasks = _tasks(np.random.default_rng(2))
    model = _model("soft", tasks)
    with torch.no_grad():  # task 0 nearly hard (0.995 on one layer per depth), layer 2 unused
        logits = torch.full((3, 3), -3.0)
        logits[[0, 0, 1], [0, 1, 2]] = 3.0
        model.core.scale_logits[0] = logits
    full = fm.task_module(model, 0)
    pruned = fm.task_module(model, 0, prune=0.05)
    x = tasks[0].val.x
    assert parameter_bytes(pruned.path) == 2 / 3 * parameter_bytes(full.path)
    assert [len(k) for k in pruned.path.kept] == [1, 1, 1]
    assert [len(k) for k in full.path.kept] == [3, 3, 3]
    # what pruning drops is the dropped branches' share of the output, no more
    assert torch.allclose(pruned(x), model(x, 0), atol=0.1)
    assert not torch.allclose(pruned(x), model(x, 0), atol=1e-6)
    with pytest.raises(ConfigError, match="prune"):
        fm.task_module(model, 0, prune=1.0)


@pytest.mark.parametrize("method", ["soft", "gumbel"])
def test_export_task_round_trip(tmp_path, method):
    tasks = _tasks(np.random.default_rng(3))
    model = _model(method, tasks)
    x = tasks[1].val.x
    path = fm.export_task(model, "t1", tmp_path / "t1.pt2", x[:4])
    loaded = torch.export.load(str(path)).module()
    assert torch.allclose(loaded(x), model(x, 1), atol=1e-5)  # another batch size
    assert torch.allclose(loaded(x[:1]), model(x[:1], 1), atol=1e-5)
    with pytest.raises(ShapeError, match="two or more"):
        fm.export_task(model, "t1", tmp_path / "x.pt2", x[:1])


def test_export_refuses_what_it_cannot_copy():
    tasks = _tasks(np.random.default_rng(4))

    class Odd(fm.SharingCore):
        kind = "odd"

        def __init__(self):
            super().__init__()
            self.num_tasks, self.feature_shape, self.output_shape = 2, (8,), (8,)
            self.lin = nn.Linear(8, 8)

        def forward(self, h, task):
            return self.lin(h) * (task + 1)

    model = fm.build_model(tasks, Odd())
    with pytest.raises(ConfigError, match="task_path"):
        fm.task_module(model, 0)
    Odd.task_path = lambda self, task: nn.Sequential(self.lin)  # a core of your own, supported
    assert torch.allclose(fm.task_module(model, 0)(tasks[0].val.x), model(tasks[0].val.x, 0))
    with pytest.raises(UnknownNameError, match="t0"):
        fm.task_module(model, "t9")


def test_export_command(tiny_run, tmp_path, capsys):
    run = fm.load_run(tiny_run, method="permuted", seed=0)
    out = tmp_path / "task.pt2"
    assert main(["export", str(tiny_run), "--method", "permuted", "--task", run.task_names[1],
                 "--out", str(out)]) == 0
    assert "torch.export.load" in capsys.readouterr().out
    x = run.tasks[1].val.x
    assert torch.allclose(torch.export.load(str(out)).module()(x), run.model(x, 1), atol=1e-5)
    assert main(["export", str(tiny_run), "--method", "permuted", "--task", "nope",
                 "--out", str(out)]) == 2
    assert "Known:" in capsys.readouterr().err


def test_flexmtl_lends_the_use_and_analysis_names_lazily():
    import importlib
    import subprocess
    import sys

    from flexmtl import cosine_similarity, group_tasks, load_run, summarize  # noqa: F401

    assert {"load_run", "export_task", "task_module", "group_tasks", "cosine_similarity",
            "summarize", "group_recovery"} <= set(fm.__all__)
    assert fm.group_tasks is importlib.import_module("flexmtl.analysis").group_tasks
    with pytest.raises(AttributeError, match="no attribute 'lod_run'"):
        fm.lod_run  # noqa: B018
    # import flexmtl does not import the modules behind them
    code = "import sys, flexmtl; print('flexmtl.use.run' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_run_of_a_swept_experiment(tmp_path):
    out = tmp_path / "sweep"
    run_experiment("random-tasks", methods=["parallel"], seeds=1, out_dir=out,
                   overrides={"steps": 2, "eval_every": 1, "m": 3}, sweep=("n", (8, 16)),
                   progress=False, plots=False, log=lambda s: 0)
    for n in (8, 16):
        run = fm.load_run(out, point=f"n={n}")
        assert run.config["n"] == n and run.tasks[0].train.x.shape == (n, 3)
    assert fm.load_run(out / "n=16" / "parallel" / "seed-0").config["n"] == 16
    with pytest.raises(ConfigError, match="name the point, one of n=8, n=16"):
        fm.load_run(out)
    with pytest.raises(UnknownNameError, match="n=8"):
        fm.load_run(out, point="n=9")
