"""Vectorised runs (flexmtl.training.batched, flexmtl.fusion.runs): a run trained in a
batch is the same run whatever its batch -- bit for bit beside other runs, alone in a
batch of one, at any place -- and equals the run trained alone by ``Trainer.fit`` up to
float rounding (parameters, every validation score, the selected step, the test
metrics; float64 and float32); batches resume (also alone) from their checkpoints; a run
that diverges leaves the batch; and the runner's results do not depend on how runs are
grouped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from study_helpers import run_results
from torch import nn

from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.models import build_model
from flexmtl.runner import run_experiment
from flexmtl.sharing import make_core
from flexmtl.tasks import Split, Task
from flexmtl.training import Trainer
from flexmtl.training.batched import RunBatch, batch_reason
from flexmtl.training.rng import seed_everything

METHODS = ("soft", "parallel", "permuted", "single")
#: three tasks: two alike encoders (7 inputs) and one of its own (5), three task kinds
SHAPES = ((5, "multiclass", 3), (7, "binary", 1), (7, "regression", 1))
CONFIG = dict(steps=12, batch_size=8, eval_every=4, lr=0.01, threads=1, progress=False)


def make_tasks(seed: int, dtype: torch.dtype = torch.float32, nan: bool = False,
               rows: int = 60) -> list[Task]:
    rng = np.random.default_rng(seed)
    tasks = []
    train, val = rows * 2 // 3, rows * 5 // 6
    for i, (features, kind, classes) in enumerate(SHAPES):
        x = rng.normal(size=(rows, features)).astype(np.float32)
        y = (rng.integers(0, classes, rows) if kind == "multiclass"
             else rng.integers(0, 2, rows).astype(np.float32) if kind == "binary"
             else rng.normal(size=rows).astype(np.float32))
        task = Task(f"t{i}", kind, (x[:train], y[:train]), (x[train:val], y[train:val]),
                    (x[val:], y[val:]), num_outputs=classes)
        for split in ("train", "val", "test"):  # the Task keeps float32: cast for the test
            s = getattr(task, split)
            target = s.y if not s.y.is_floating_point() else s.y.to(dtype)
            setattr(task, split, Split(s.x.to(dtype), target))
        tasks.append(task)
    if nan:
        x, y = tasks[0].train
        tasks[0].train = Split(torch.full_like(x, float("nan")), y)
    return tasks


def make_trainer(method: str, seed: int, out: Path | None, dtype=torch.float32,
                 dropout: float = 0.5, activation: str = "relu", nan: bool = False,
                 width: int = 6, encoder: str = "learned", **config) -> Trainer:
    """A run as the runner makes one: seeded, its tasks, seeded again, its model."""
    seed_everything(seed)
    batch = config.get("batch_size", CONFIG["batch_size"])
    tasks = make_tasks(seed, dtype, nan, rows=max(60, 3 * batch))
    seed_everything(seed)
    core = make_core(method, dense_blocks(width, 3, activation), len(tasks), seed=seed,
                     dropout=dropout)
    model = build_model(tasks, core, encoder=encoder).to(dtype)
    return Trainer(model, tasks, {**CONFIG, "seed": seed, **config}, out_dir=out)


def alone(method, seed, out, **kw):
    trainer = make_trainer(method, seed, out, **kw)
    return trainer, trainer.fit()


def batched(method, seeds, out, **kw):
    batch = RunBatch([])
    for seed in seeds:  # each set up right after its model is built, as alone
        trainer = make_trainer(method, seed, None if out is None else out / f"s{seed}", **kw)
        batch.setup(trainer)
        batch.trainers.append(trainer)
    assert batch_reason(batch.trainers) is None
    return batch.trainers, batch.fit()


def same_run(a: Trainer, ra, b: Trainer, rb, tolerance: float = 0.0) -> None:
    """Two runs are the same run: bit for bit, or (``tolerance``) every parameter and
    metric within it -- and the same selected step."""
    for states in ((a.model.state_dict(), b.model.state_dict()), (a.final_state, b.final_state)):
        for (name, p), q in zip(states[0].items(), states[1].values()):
            assert (torch.equal(p, q) if not tolerance
                    else torch.allclose(p, q, rtol=0, atol=tolerance)), name
    assert ra.best_step == rb.best_step
    if not tolerance:  # as text: a regression task's accuracy is NaN, never == NaN
        assert json.dumps([ra.history, ra.best_score, ra.val, ra.test]) == json.dumps(
            [rb.history, rb.best_score, rb.val, rb.test])
        return
    close = lambda x, y: x == pytest.approx(y, rel=0, abs=tolerance)  # noqa: E731
    assert all(close(h["loss"], g["loss"]) for h, g in zip(ra.history, rb.history))
    assert close(ra.val["loss"], rb.val["loss"]) and close(ra.test["loss"], rb.test["loss"])
    assert ra.test["accuracy"] == rb.test["accuracy"]


#: how far a batched run may be from its run alone (``Trainer.fit``) after 12 steps: the
#: batch computes the same functions with other kernels (a ``bmm`` over the runs for the
#: run alone's ``mm``, its own Adam arithmetic for torch's fused Adam kernel), which round
#: otherwise; these bounds leave a wide margin over what the runs here differ by.
F64_TOLERANCE = 1e-12
F32_TOLERANCE = 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_batched_runs_equal_runs_alone(method, tmp_path):
    dtype = torch.float64
    runs = [alone(method, seed, tmp_path / f"a{seed}", dtype=dtype) for seed in range(3)]
    trainers, results = batched(method, range(3), tmp_path / "b", dtype=dtype)
    for (a, ra), b, rb in zip(runs, trainers, results):
        same_run(a, ra, b, rb, F64_TOLERANCE)
    assert len({ra.test["loss"] for _, ra in runs}) == 3  # three different runs
    # each run's files: its checkpoints, its logs
    for seed in range(3):
        assert (tmp_path / "b" / f"s{seed}" / "best.pt").exists()
        assert (tmp_path / "b" / f"s{seed}" / "last.pt").exists()
        logged = (tmp_path / "b" / f"s{seed}" / "eval_log.csv").read_text().splitlines()
        assert len(logged) == 1 + CONFIG["steps"] // CONFIG["eval_every"]


#: batches of 32 rows, width 32 (the uci experiment's)
EXACT = dict(batch_size=32, width=32)


@pytest.mark.parametrize("method", METHODS)
def test_batched_runs_equal_runs_alone_in_float32(method):
    # the scales at the model's rate: at soft ordering's default (1000x, here 10) Adam's
    # first steps move each scale logit by about +-10 whatever its gradient's size, so a
    # float32 rounding of a near-zero gradient decides a whole step (float64: tested above)
    kw = {**EXACT, "sharing_lr": CONFIG["lr"]}
    runs = [alone(method, seed, None, **kw) for seed in (0, 1)]
    trainers, results = batched(method, (0, 1), None, **kw)
    for (a, ra), b, rb in zip(runs, trainers, results):
        same_run(a, ra, b, rb, F32_TOLERANCE)


@pytest.mark.parametrize(("method", "dropout", "activation", "batch_size"),
                         [("soft", 0.25, "relu", 8), ("soft", 0.5, "linear", 8),
                          ("soft", 0.0, "relu", 8), ("permuted", 0.25, "linear", 8),
                          ("soft", 0.8, "relu", 8), ("soft", 0.8, "relu", 5)])
def test_every_dropout_path_draws_as_alone(method, dropout, activation, batch_size):
    """p = 0.5 with ReLU clears bits; other p draw 8- or 16-bit codes, all depths at once
    where each depth's masks take whole 64-bit words (else depth by depth: 5-row batches);
    a linear block keeps its mask for the backward: each run draws what its run alone
    draws."""
    kw = dict(dropout=dropout, activation=activation, dtype=torch.float64,
              batch_size=batch_size, sharing_lr=CONFIG["lr"])  # as the float32 test says
    runs = [alone(method, seed, None, **kw) for seed in (4, 5)]
    trainers, results = batched(method, (4, 5), None, **kw)
    for (a, ra), b, rb in zip(runs, trainers, results):
        same_run(a, ra, b, rb, F64_TOLERANCE)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shapes", [{}, EXACT], ids=["tiny", "uci-shaped"])
def test_a_run_does_not_depend_on_its_batch(method, shapes):
    """Seed 1 trained beside seeds 0 and 2, beside seed 3, or in a batch of its own: the
    same run, bit for bit. (Tiny shapes include products with a dimension of 1 -- a binary
    task's decoder -- which ``bmm`` would round by the number of runs.)"""
    (_, b1, _), (_, r1, _) = batched(method, (0, 1, 2), None, **shapes)
    (c1, _), (s1, _) = batched(method, (1, 3), None, **shapes)
    (d1,), (t1,) = batched(method, (1,), None, **shapes)
    same_run(b1, r1, c1, s1)
    same_run(b1, r1, d1, t1)


@pytest.mark.parametrize("method", ["soft", "permuted"])
def test_frozen_encoders_are_applied_once(method, tmp_path):
    """Frozen random encoders (mnist-pairs): the batch encodes each run's training inputs
    once and its batches index the encodings; the runs still equal their runs alone, and
    a run does not depend on its batch."""
    from flexmtl.fusion.runs import RunStack

    kw = dict(encoder="frozen", dtype=torch.float64)
    trainer = make_trainer(method, 0, None, **kw)
    trainer.setup()
    stack = RunStack([trainer.model], [8] * 3, [t.input_shape for t in trainer.tasks])
    assert stack.fixed_encoders() == [0, 1, 2]
    x = trainer.train_data[1].x
    assert torch.allclose(stack.encode(1, 0, x), trainer.model.encoders[1](x), atol=1e-12)
    runs = [alone(method, seed, tmp_path / f"a{seed}", **kw) for seed in (0, 1)]
    trainers, results = batched(method, (0, 1), tmp_path / "b", **kw)
    for (a, ra), b, rb in zip(runs, trainers, results):
        same_run(a, ra, b, rb, F64_TOLERANCE)
    (c1,), (s1,) = batched(method, (1,), None, **kw)
    same_run(trainers[1], results[1], c1, s1)


def test_a_batch_resumes_and_its_runs_resume_alone(tmp_path):
    # the scales at the model's rate: at the default 1000x, float rounding of the resumed run
    # alone (other kernels) grows past the float32 tolerance (as in the tests above)
    kw = {**EXACT, "sharing_lr": CONFIG["lr"]}
    (full0, full1), (r0, r1) = batched("soft", (0, 1), tmp_path / "full", **kw)

    def stop(trainer, step):
        if step == 6:
            raise KeyboardInterrupt

    batch = RunBatch([])
    for seed in (0, 1):
        trainer = make_trainer("soft", seed, tmp_path / f"b{seed}", **kw)
        trainer.callbacks.append(stop)
        batch.setup(trainer)
        batch.trainers.append(trainer)
    with pytest.raises(KeyboardInterrupt):
        batch.fit()
    assert all(not (tmp_path / f"b{s}" / "run.lock").exists() for s in (0, 1))
    # the batch resumes (seed 1 from a copy of its folder): both end as the uninterrupted
    # runs, bit for bit; seed 1 resumes alone in a batch of one (bit for bit) and by
    # Trainer.fit (up to rounding)
    import shutil
    shutil.copytree(tmp_path / "b1", tmp_path / "c1")
    shutil.copytree(tmp_path / "b1", tmp_path / "d1")
    again = RunBatch([])
    for seed, folder in ((0, "b0"), (1, "c1")):
        trainer = make_trainer("soft", seed, tmp_path / folder, **kw)
        again.setup(trainer)
        again.trainers.append(trainer)
    assert [t.resumed_from for t in again.trainers] == [4, 4]  # the last checkpoint
    results = again.fit()
    for a, ra, b, rb in zip((full0, full1), (r0, r1), again.trainers, results):
        same_run(a, ra, b, rb)
    one = RunBatch([make_trainer("soft", 1, tmp_path / "b1", **kw)])
    same_run(full1, r1, one.trainers[0], one.fit()[0])
    lone = make_trainer("soft", 1, tmp_path / "d1", **kw)
    same_run(full1, r1, lone, lone.fit(), F32_TOLERANCE)


def test_a_diverging_run_leaves_the_batch(tmp_path):
    """Seed 1 has NaN inputs: it stops with TrainingDiverged as alone, the others train on
    as they would without it."""
    from flexmtl.errors import TrainingDiverged

    batch = RunBatch([])
    for seed in (0, 1, 2):
        trainer = make_trainer("soft", seed, tmp_path / f"s{seed}", nan=seed == 1, **EXACT)
        batch.setup(trainer)
        batch.trainers.append(trainer)
    outcomes = batch.fit()
    assert isinstance(outcomes[1], TrainingDiverged)
    assert "loss became nan at step 1" in str(outcomes[1])
    trainers, results = batched("soft", (0, 2), tmp_path / "without", **EXACT)
    for seed, b, rb in zip((0, 2), trainers, results):
        same_run(batch.trainers[seed], outcomes[seed], b, rb)


def test_what_is_not_batched_says_why():
    def trainers(method="soft", **config):
        return [make_trainer(method, s, None, **config) for s in (0, 1)]

    assert batch_reason(trainers()) is None
    assert batch_reason(trainers()[:1]) is None  # a batch of one
    assert "schedule" in batch_reason(trainers(schedule="round-robin"))
    assert "Adam" in batch_reason(trainers(optimizer="sgd"))
    assert "clipping" in batch_reason(trainers(clip_grad_norm=1.0))
    mixed = trainers()
    mixed[1].config.lr = 0.5
    assert "settings differ" in batch_reason(mixed)
    hooked = trainers()
    hooked[0].model.encoders[0].register_forward_hook(lambda *args: None)
    assert "hooks" in batch_reason(hooked)
    routed = [make_trainer("soft", s, None) for s in (0, 1)]
    for t in routed:  # a block that is not a dense layer
        t.model.core.blocks[0] = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    assert "dense" in batch_reason(routed)


def test_the_runner_gives_the_same_results_with_and_without_batches(tmp_path, monkeypatch):
    """Batched: the same results in one batch per method, or split over two workers'
    batches; without batches (each run by Trainer.fit), the same up to float rounding."""
    monkeypatch.chdir(tmp_path)
    study = dict(methods=["soft", "permuted"], seeds=3, steps=15, sweep=None, progress=False,
                 plots=False, overrides={"n": 16, "m": 8, "eval_every": 5, "dropout": 0.5,
                                         "activation": "relu"}, log=lambda _: None)
    run_experiment("random-tasks", out_dir="one", batch_runs=False, jobs=1, **study)
    run_experiment("random-tasks", out_dir="batched", jobs=1, **study)
    run_experiment("random-tasks", out_dir="split", jobs=2, **study)
    one, batched_ = run_results(Path("one")), run_results(Path("batched"))
    split = run_results(Path("split"))
    assert len(one) == 6 and batched_.keys() == split.keys()
    for path in batched_:  # each differing value named
        a, b = batched_[path], split[path]
        assert [(k, a.get(k)) for k in a if a.get(k) != b.get(k)] == [], path
    assert one.keys() == batched_.keys()
    for path, result in one.items():
        other = batched_[path]
        assert other["best_step"] == result["best_step"]
        for split in ("val", "test"):
            assert other[split]["loss"] == pytest.approx(result[split]["loss"], abs=1e-5)
            assert other[split]["accuracy"] == pytest.approx(result[split]["accuracy"],
                                                             abs=1e-5, nan_ok=True)


def test_runs_are_grouped_where_their_model_batches():
    from flexmtl.runner import run_groups

    runs = [(0, "soft", s) for s in range(3)] + [(0, "gumbel", s) for s in range(3)]
    soft_only = lambda i, method: method == "soft"  # noqa: E731
    assert run_groups(runs, 2, True, soft_only) == [
        runs[:3], [runs[3]], [runs[4]], [runs[5]]]  # a model that does not batch: singles
    assert run_groups(runs, 4, True) == [runs[:2], runs[2:3], runs[3:5], runs[5:]]
    assert run_groups(runs, 1, True) == [runs[:3], runs[3:]]
    assert run_groups(runs, 2, False) == [[run] for run in runs]


def test_the_longest_groups_start_first():
    """The probe estimates a run's time from timed steps (the main process's torch threads
    unchanged) and orders groups longest first: more runs, or slower steps, first."""
    from flexmtl.experiments import get_experiment
    from flexmtl.runner import _Probe

    exp = get_experiment("random-tasks")
    cfg = exp.resolve_config(None, {"n": 16, "m": 8, "steps": 40})
    probe = _Probe(exp, [(None, cfg)])
    threads = torch.get_num_threads()
    seconds = probe.run_seconds(0, "soft")
    assert torch.get_num_threads() == threads
    assert seconds > 0 and probe.run_seconds(0, "soft") == seconds  # probed once
    probe._seconds.update({(0, "soft"): 3.0, (0, "parallel"): 1.0, (0, "permuted"): 1.25})
    soft, parallel, permuted = ([(0, m, s) for s in range(3)]
                                for m in ("soft", "parallel", "permuted"))
    groups = [parallel[:1], permuted[:2], soft[:1], parallel[1:]]
    assert probe.longest_first(groups) == [soft[:1], permuted[:2], parallel[1:],
                                           parallel[:1]]
    assert probe.longest_first([parallel[:1], parallel[1:2]]) == [parallel[:1],
                                                                  parallel[1:2]]  # ties kept
