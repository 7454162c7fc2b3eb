"""The multi-task trainer: protocol, determinism, resume, selection, divergence."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from flexmtl import Task, TrainConfig, Trainer, TrainingDiverged, build_model, make_core
from flexmtl.experiments.soft_ordering import dense_blocks


def make_tasks(num=2, n=60, features=(5, 7), seed=0):
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(num):
        f = features[i % len(features)]
        x = rng.random((n, f)).astype(np.float32)
        y = (x[:, 0] > 0.5).astype(np.int64) + (x[:, 1] > 0.5)
        tasks.append(Task(f"t{i}", "multiclass", (x[:40], y[:40]), (x[40:50], y[40:50]),
                          (x[50:], y[50:]), num_outputs=3))
    return tasks


def make_model(method="soft", tasks=None, seed=0, encoder="learned", dropout=0.2):
    tasks = tasks or make_tasks()
    torch.manual_seed(seed)
    core = make_core(method, dense_blocks(8, 3), len(tasks), seed=seed, dropout=dropout)
    return build_model(tasks, core, encoder=encoder)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_joint_step_is_one_adam_update_of_the_summed_loss():
    tasks = make_tasks()
    model = make_model(tasks=tasks, dropout=0.0)
    reference = make_model(tasks=tasks, dropout=0.0)
    reference.load_state_dict(model.state_dict())
    cfg = TrainConfig(steps=1, batch_size=8, eval_every=1, progress=False, seed=3)
    trainer = Trainer(model, tasks, cfg)
    # the same batches, drawn by a fresh sampler with the same seed
    from flexmtl.training import TaskBatchSampler

    sampler = TaskBatchSampler([len(t.train) for t in tasks], 8, 3)
    scales = reference.core.scale_logits  # at their own rate (the core's sharing_lr)
    others = [p for p in reference.parameters() if p is not scales]
    opt = torch.optim.Adam([{"params": others, "lr": cfg.lr},
                            {"params": [scales], "lr": reference.core.sharing_lr(cfg.lr)}])
    loss = sum(t.loss(reference(t.train.x[i], k), t.train.y[i])
               for k, t in enumerate(tasks) for i in [sampler.next(k)])
    loss.backward()
    opt.step()
    trainer.fit()
    for (k, a), b in zip(trainer.final_state.items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_training_learns_and_reports_per_task_metrics(tmp_path):
    tasks = make_tasks()
    trainer = Trainer(make_model(tasks=tasks), tasks,
                      TrainConfig(steps=150, batch_size=16, eval_every=25, lr=1e-2,
                                  progress=False), out_dir=tmp_path)
    before = trainer.evaluate("train")["loss"]
    result = trainer.fit()
    assert trainer.evaluate("train")["loss"] < before
    assert set(result.test["tasks"]) == {"t0", "t1"}
    assert 0 <= result.test["accuracy"] <= 1
    # checkpoint selected on validation loss, among the evaluated steps
    best = min(result.history, key=lambda h: h["loss"])
    assert result.best_step == best["step"]
    assert result.val["loss"] == pytest.approx(best["loss"], rel=1e-5)
    for name in ("train_log.csv", "eval_log.csv", "last.pt", "best.pt", "sharing.pt"):
        assert (tmp_path / name).stat().st_size > 0
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["step", "loss"] and len(rows) == 151
    snaps = torch.load(tmp_path / "sharing.pt", weights_only=False)["sharing"]
    assert [s for s, _ in snaps] == [0, 25, 50, 75, 100, 125, 150]


def test_same_seed_same_result_on_cpu():
    tasks = make_tasks()
    runs = []
    for _ in range(2):
        t = Trainer(make_model(tasks=tasks), tasks,
                    TrainConfig(steps=20, batch_size=8, eval_every=10, progress=False))
        t.fit()
        runs.append(t.final_state)
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_the_config_seed_seeds_every_draw_of_training(capsys):
    """Dropout masks and batches come from TrainConfig.seed, whatever the global random state
    was before training; another seed draws otherwise. The run also leaves the process's
    thread count as it found it, and draws no progress bar into output that is not a
    terminal."""
    tasks = make_tasks()
    states = {}
    torch.set_num_threads(2)
    for label, seed, noise in (("a", 3, 0), ("b", 3, 5), ("c", 4, 0)):
        model = make_model(tasks=tasks, dropout=0.5)  # the same initial weights
        torch.rand(noise)  # other work before training moves the global generator
        np.random.rand(noise)
        t = Trainer(model, tasks, TrainConfig(steps=12, batch_size=8, eval_every=6,
                                              seed=seed, threads=1, progress=True))
        t.fit()
        states[label] = t.final_state
        assert torch.get_num_threads() == 2  # scoped to the run
    assert all(torch.equal(states["a"][k], states["b"][k]) for k in states["a"])
    assert not all(torch.equal(states["a"][k], states["c"][k]) for k in states["a"])
    assert "\r" not in capsys.readouterr().err  # stderr here is not a terminal


def test_frozen_encoders_do_not_change():
    tasks = make_tasks()
    model = make_model(tasks=tasks, encoder="frozen")
    enc_before = params(model.encoders)
    core_before = params(model.core)
    Trainer(model, tasks, TrainConfig(steps=10, eval_every=5, progress=False)).fit()
    for k, v in params(model.encoders).items():
        assert torch.equal(v, enc_before[k]), k
    assert any(not torch.equal(v, core_before[k]) for k, v in params(model.core).items())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tasks = make_tasks()
    model = make_model(tasks=tasks)

    def poison(trainer, step):
        if step == 7:
            with torch.no_grad():
                trainer.model.core.blocks[0][0].weight.fill_(float("nan"))

    trainer = Trainer(model, tasks, TrainConfig(steps=20, eval_every=5, progress=False),
                      out_dir=tmp_path, callbacks=[poison])
    with pytest.raises(TrainingDiverged, match=r"step 8.*last.pt \(step 5\)"):
        trainer.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_trainer import make_tasks, make_model
    from flexmtl import Trainer, TrainConfig

    def kill(trainer, step):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

    tasks = make_tasks()
    cfg = TrainConfig(steps=30, batch_size=8, eval_every=10, progress=False)
    result = Trainer(make_model(tasks=tasks), tasks, cfg, out_dir=sys.argv[1],
                     callbacks=[kill]).fit()
    print(result.test["loss"])
""")


def test_killed_run_resumes_exactly_where_it_stopped(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = subprocess.run([sys.executable, script, tmp_path / "ref", "0"], env=env,
                         capture_output=True, text=True, check=True)
    killed = subprocess.run([sys.executable, script, tmp_path / "run", "25"], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 20
    resumed = subprocess.run([sys.executable, script, tmp_path / "run", "0"], env=env,
                             capture_output=True, text=True, check=True)
    assert resumed.stdout == ref.stdout
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ref_log = (tmp_path / "ref" / "train_log.csv").read_text()
    assert (tmp_path / "run" / "train_log.csv").read_text() == ref_log


def test_round_robin_schedule_makes_one_update_per_task():
    tasks = make_tasks()
    model = make_model(tasks=tasks)
    trainer = Trainer(model, tasks, TrainConfig(steps=3, schedule="round-robin", eval_every=3,
                                                progress=False))
    trainer.fit()
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 6  # 3 steps x 2 tasks
    json.dumps(trainer.history)  # history is plain data


def test_fresh_start_replaces_logs_of_an_attempt_without_checkpoint(tmp_path):
    tasks = make_tasks()
    (tmp_path / "train_log.csv").write_text("step,loss\n1,9\n2,9\n")
    Trainer(make_model(tasks=tasks), tasks,
            TrainConfig(steps=4, eval_every=2, progress=False), out_dir=tmp_path).fit()
    steps = [r.split(",")[0] for r in (tmp_path / "train_log.csv").read_text().splitlines()]
    assert steps == ["step", "1", "2", "3", "4"]


def test_parameter_groups_skip_l2_on_biases_and_sharing_parameters():
    from flexmtl.training.optim import parameter_groups

    model = make_model("soft")
    groups = {g["name"]: g for g in parameter_groups(
        model, TrainConfig(lr=0.01, weight_decay=0.1, sharing_lr=0.5))}
    assert groups["sharing"]["params"] == [model.core.scale_logits]
    assert groups["sharing"]["lr"] == 0.5 and groups["sharing"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups["biases"]["params"])
    assert groups["biases"]["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in groups["weights"]["params"])
    assert groups["weights"]["weight_decay"] == 0.1
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)
    model.core.sharing_lr = lambda lr: 4.0 * lr  # the core's rule, e.g. Gumbel-Matrix: tasks x lr
    groups = {g["name"]: g for g in parameter_groups(model, TrainConfig(lr=0.01))}
    assert groups["sharing"]["lr"] == pytest.approx(0.04)


def test_core_regularization_is_added_to_each_task_loss():
    tasks = make_tasks()
    model = make_model(tasks=tasks, dropout=0.0)
    trainer = Trainer(model, tasks, TrainConfig(progress=False))
    x, y = tasks[1].train
    plain = trainer.training_losses([1], [(x, y)])[0].detach()
    model.core.regularization = lambda task: torch.tensor(10.0 * (task + 1))
    again = trainer.training_losses([1], [(x, y)])[0].detach()
    assert float(again) == pytest.approx(float(plain) + 20.0)


def test_gradient_clipping_bounds_the_update_norm():
    tasks = make_tasks()
    model = make_model(tasks=tasks, dropout=0.0)
    trainer = Trainer(model, tasks, TrainConfig(optimizer="sgd", lr=1.0, sharing_lr=1.0,
                                                clip_grad_norm=0.01, progress=False))
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    trainer.update(1000 * trainer.training_losses([0], [tuple(tasks[0].train)])[0], [0])
    after = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert float((after - before).norm()) == pytest.approx(0.01, rel=1e-4)


def test_accuracy_selection_with_a_regression_task_still_selects(tmp_path):
    rng = np.random.default_rng(0)
    tasks = make_tasks(1) + [Task("r", "regression", (rng.random((40, 5)), rng.random(40)),
                                  (rng.random((10, 5)), rng.random(10)))]
    model = make_model(tasks=tasks)
    result = Trainer(model, tasks, TrainConfig(steps=6, eval_every=2, select_on="val_accuracy",
                                               progress=False), out_dir=tmp_path).fit()
    assert result.best_step in (2, 4, 6) and (tmp_path / "best.pt").exists()
    assert result.val["accuracy"] == result.val["tasks"]["t0"]["accuracy"]  # classification only


def test_resume_refuses_other_settings_or_fewer_steps(tmp_path):
    from flexmtl import ConfigError

    tasks = make_tasks()
    Trainer(make_model(tasks=tasks), tasks, TrainConfig(steps=4, eval_every=2, progress=False),
            out_dir=tmp_path).fit()
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.1"):
        Trainer(make_model(tasks=tasks), tasks, TrainConfig(steps=8, lr=0.1, progress=False),
                out_dir=tmp_path).fit()
    with pytest.raises(ConfigError, match="past the 2 steps"):
        Trainer(make_model(tasks=tasks), tasks, TrainConfig(steps=2, progress=False),
                out_dir=tmp_path).fit()
    longer = Trainer(make_model(tasks=tasks), tasks,
                     TrainConfig(steps=6, eval_every=2, progress=False), out_dir=tmp_path)
    assert longer.step == 0  # the constructor reads nothing
    longer.setup()
    assert longer.step == 4 and longer.fit().steps == 6 and longer.resumed_from == 4


def test_steps_and_epochs_are_exclusive():
    from flexmtl import ConfigError
    from flexmtl.experiments import get_experiment

    with pytest.raises(ConfigError, match="both set"):
        TrainConfig(steps=10, epochs=2).validate()
    exp = get_experiment("four-mnists")
    assert exp.resolve_config(overrides={"steps": 5})["epochs"] == 0.0
    uci = get_experiment("uci").resolve_config(overrides={"epochs": 3})
    assert uci["steps"] == 0 and uci["epochs"] == 3.0
