"""Bad inputs are refused where they enter, with a :class:`FlexMTLError` subclass whose
message names the culprit (task, split, key) and says what to do -- never a raw traceback,
never a run that trains on nonsense: tasks (labels, NaN, shapes, empty splits), a Trainer
given tasks that are not the model's, training settings, experiment configs (Python API
and CLI). And what must keep working: soft binary targets, integral float labels, the
``allow_nonfinite`` opt-out.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexmtl import (
    ConfigError,
    DataError,
    FlexMTLError,
    MultiTaskModel,
    ShapeError,
    Task,
    TrainConfig,
    Trainer,
    UnknownNameError,
    build_model,
    make_core,
)
from flexmtl.cli import main
from flexmtl.experiments import get_experiment
from flexmtl.experiments.soft_ordering import dense_blocks
from flexmtl.runner import run_experiment

RNG = np.random.default_rng(0)
X = RNG.random((8, 3)).astype(np.float32)
X4 = RNG.random((4, 3)).astype(np.float32)
CLASSES = np.array([0, 1, 2, 0, 1, 2, 0, 1])
CLASSES4 = np.array([0, 1, 2, 1])
BITS = np.array([0, 1, 1, 0, 1, 0, 0, 1])
BITS4 = np.array([0, 1, 0, 1])
QUIET = TrainConfig(steps=1, batch_size=4, eval_every=1, progress=False)


pytestmark = pytest.mark.usefixtures("isolated")  # tests/faults/conftest.py


def with_value(a: np.ndarray, value, index=(1,)) -> np.ndarray:
    out = np.array(a, dtype=np.float32 if isinstance(value, float) else a.dtype)
    out[index] = value
    return out


def huge64(a: np.ndarray, value: float, index) -> np.ndarray:
    """``a`` as float64 with ``value`` (finite, beyond float32's range) at ``index``."""
    out = a.astype(np.float64)
    out[index] = value
    return out


def task(name="a", kind="multiclass", train=None, val=None, test=None, **kw) -> Task:
    ys = {"multiclass": (CLASSES, CLASSES4), "binary": (BITS, BITS4),
          "regression": (X[:, 0], X4[:, 0])}[kind]
    train = train if train is not None else (X, ys[0])
    val = val if val is not None else (X4, ys[1])
    return Task(name, kind, train, val, test, **kw)


# ---------------------------------------------------------------------- tasks
# (id, how the task is made, error class, fragments the message must hold)
TASK_CASES = [
    ("binary -1/2", lambda: task("b", "binary", train=(X, np.array([0, -1, 2, 0, 1, 0, 0, 1]))),
     DataError, ["task 'b'", "train split", "0 or 1", "soft_targets=True", "-1", "2"]),
    ("binary 2 in val", lambda: task("b", "binary", val=(X4, np.array([0, 2, 0, 1]))),
     DataError, ["task 'b'", "val split", "0 or 1"]),
    ("binary 0.3 without soft", lambda: task("b", "binary", train=(X, BITS * 0.3)),
     DataError, ["train split", "soft_targets=True"]),
    ("soft target 1.5", lambda: task("b", "binary", train=(X, BITS * 1.5), soft_targets=True),
     DataError, ["task 'b'", "train split", "[0, 1]"]),
    ("soft target -0.1 in test", lambda: task("b", "binary", test=(X4, BITS4 - 0.1),
                                               soft_targets=True),
     DataError, ["test split", "[0, 1]"]),
    ("binary one-hot", lambda: task("b", "binary", train=(X, np.eye(2)[BITS])),
     ShapeError, ["task 'b'", "train split", "[N]"]),
    ("multiclass fractional", lambda: task(train=(X, CLASSES + 0.5)),
     DataError, ["task 'a'", "train split", "whole class indices", "0.5"]),
    ("multiclass fractional val", lambda: task(val=(X4, CLASSES4 * 0.7)),
     DataError, ["task 'a'", "val split", "whole class indices"]),
    ("multiclass one-hot", lambda: task(train=(X, np.eye(3)[CLASSES])),
     DataError, ["task 'a'", "train split", "(8, 3)", "argmax"]),
    ("multiclass one-hot test", lambda: task(test=(X4, np.eye(3)[CLASSES4])),
     DataError, ["test split", "argmax"]),
    ("multiclass strings", lambda: task(train=(X, np.array(list("abcabcab")))),
     DataError, ["task 'a'", "train split", "not numbers", "np.unique"]),
    ("multiclass objects", lambda: task(train=(X, np.array(["x", 1] * 4, dtype=object))),
     DataError, ["train split", "not numbers"]),
    ("multiclass negative", lambda: task(train=(X, with_value(CLASSES, -1))),
     DataError, ["task 'a'", "train split", "0..2", "-1"]),
    ("multiclass too large val", lambda: task(val=(X4, np.array([0, 1, 2, 5]))),
     DataError, ["task 'a'", "val split", "0..2", "5", "num_outputs"]),
    ("multiclass too large test", lambda: task(test=(X4, np.array([3, 1, 2, 0])),
                                               num_outputs=3),
     DataError, ["test split", "0..2", "3"]),
    ("multiclass NaN label", lambda: task(train=(X, with_value(CLASSES, math.nan))),
     DataError, ["train split", "NaN"]),
    ("multiclass NaN label opt-out", lambda: task(train=(X, with_value(CLASSES, math.nan)),
                                                  allow_nonfinite=True),
     DataError, ["train split", "NaN", "even with allow_nonfinite=True", "drop those"]),
    ("multiclass label 1e20", lambda: task(train=(X, with_value(CLASSES, 1e20))),
     DataError, ["task 'a'", "train split", "label value 1e+20", "example 1"]),
    ("multiclass label -1e20 val", lambda: task(val=(X4, with_value(CLASSES4, -1e20))),
     DataError, ["val split", "label value -1e+20"]),
    ("inputs beyond float32", lambda: task(train=(huge64(X, 1e300, (2, 1)), CLASSES)),
     DataError, ["task 'a'", "train split", "inputs", "1e+300", "example 2",
                 "too large for float32", "rescale the inputs"]),
    ("inputs beyond float32 opt-out", lambda: task(
        train=(huge64(X, -1e300, (2, 1)), CLASSES),
        allow_nonfinite=True),
     DataError, ["train split", "too large for float32"]),
    ("targets beyond float32", lambda: task("r", "regression",
                                            test=(X4, huge64(X4[:, 0], 1e300, (1,)))),
     DataError, ["task 'r'", "test split", "targets", "too large for float32", "example 1"]),
    ("1-D inputs", lambda: task("r", "regression", train=(X[:, 0], X[:, 1])),
     ShapeError, ["task 'r'", "train split", "(8,)", "reshape(-1, 1)"]),
    ("1-D inputs val", lambda: task("r", "regression", val=(X4[:, 0], X4[:, 1])),
     ShapeError, ["task 'r'", "val split", "reshape(-1, 1)"]),
    ("scalar targets", lambda: task("r", "regression", train=(X, 1.0)),
     ShapeError, ["train split", "one per example"]),
    ("empty train", lambda: task(train=(X[:0], CLASSES[:0]), num_outputs=3),
     DataError, ["task 'a'", "train split", "empty"]),
    ("empty val", lambda: task(val=(X4[:0], CLASSES4[:0])),
     DataError, ["task 'a'", "val split", "empty"]),
    ("empty test", lambda: task(test=(X4[:0], CLASSES4[:0])),
     DataError, ["test split", "empty"]),
    ("length mismatch", lambda: task(train=(X, CLASSES[:7])),
     ShapeError, ["task 'a'", "train split", "8 inputs", "7 targets"]),
    ("val features differ", lambda: task(val=(np.zeros((4, 5)), CLASSES4)),
     ShapeError, ["task 'a'", "val split", "(5,)", "(3,)"]),
    ("test features differ", lambda: task(test=(np.zeros((4, 2)), CLASSES4)),
     ShapeError, ["test split", "(2,)"]),
    ("regression columns differ", lambda: task("r", "regression", train=(X, X[:, :2]),
                                               val=(X4, X4)),
     ShapeError, ["task 'r'", "val split", "targets", "(3,)", "(2,)"]),
    ("regression 3-D targets", lambda: task("r", "regression",
                                            train=(X, np.zeros((8, 2, 2)))),
     ShapeError, ["task 'r'", "train split", "[N, outputs]"]),
    ("regression num_outputs", lambda: task("r", "regression", train=(X, X), val=(X4, X4),
                                            num_outputs=2),
     ShapeError, ["task 'r'", "num_outputs=2", "3 column"]),
    ("ragged inputs", lambda: task(train=([[1.0, 2.0], [3.0]] * 4, CLASSES)),
     ShapeError, ["task 'a'", "train split", "rectangular"]),
    ("string inputs", lambda: task(train=(np.array([["a", "b", "c"]] * 8), CLASSES)),
     DataError, ["task 'a'", "train split", "inputs", "not numbers"]),
    ("complex targets", lambda: task("r", "regression",
                                     train=(X, torch.zeros(8, dtype=torch.complex64))),
     DataError, ["train split", "complex"]),
    ("not a pair", lambda: task(train=X), ShapeError, ["task 'a'", "train split", "pair"]),
    ("no train", lambda: Task("a", "multiclass", None), ConfigError, ["task 'a'", "train"]),
    ("unknown kind", lambda: Task("a", "classes", (X, CLASSES)),
     ConfigError, ["task 'a'", "kind"]),
    ("soft multiclass", lambda: task(soft_targets=True), ConfigError,
     ["task 'a'", "soft_targets", "binary"]),
    ("num_outputs negative", lambda: task(num_outputs=-2), ConfigError,
     ["task 'a'", "num_outputs", "-2"]),
    ("num_outputs 2.5", lambda: task(num_outputs=2.5), ConfigError,
     ["task 'a'", "num_outputs", "2.5"]),
    ("num_outputs True", lambda: task(num_outputs=True), ConfigError,
     ["task 'a'", "num_outputs", "True"]),
    ("binary num_outputs 3", lambda: task("b", "binary", num_outputs=3), ConfigError,
     ["task 'b'", "num_outputs", "multiclass"]),
    ("empty name", lambda: task(""), ConfigError, ["name", "non-empty"]),
]
# NaN or inf in inputs or targets of each split
for _split in ("train", "val", "test"):
    for _value in (math.nan, math.inf):
        for _what in ("inputs", "targets"):
            def _make(split=_split, value=_value, what=_what):
                data = {"train": (X, X[:, 0]), "val": (X4, X4[:, 0]), "test": (X4, X4[:, 0])}
                x, y = data[split]
                x, y = (with_value(x, value, (2, 1)), y) if what == "inputs" else \
                    (x, with_value(y, value, (2,)))
                data[split] = (x, y)
                return Task("r", "regression", data["train"], data["val"], data["test"])
            TASK_CASES.append((f"{_value} in {_split} {_what}", _make, DataError,
                               ["task 'r'", f"{_split} split", _what, "1 NaN or infinite",
                                "example 2", "allow_nonfinite=True"]))


@pytest.mark.parametrize("make, error, fragments", [c[1:] for c in TASK_CASES],
                         ids=[c[0] for c in TASK_CASES])
def test_bad_task_data_is_refused_naming_task_and_split(make, error, fragments):
    with pytest.raises(error) as info:
        make()
    assert isinstance(info.value, FlexMTLError)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_lazy_inputs_are_checked_by_shape_only():
    from flexmtl.tasks import LazyInputs

    class Lazy(LazyInputs):
        reads = 0

        def __init__(self, shape):
            super().__init__()
            self._shape = shape

        @property
        def shape(self):
            return self._shape

        def read(self, index):
            Lazy.reads += 1
            return torch.full((len(index), *self._shape[1:]), math.nan)

    t = Task("lazy", "binary", (Lazy((8, 3)), BITS))  # NaN inside: not read to validate
    assert Lazy.reads == 0 and t.input_shape == (3,)
    with pytest.raises(ShapeError, match="task 'lazy': train split: lazy inputs have shape"):
        Task("lazy", "binary", (Lazy((8,)), BITS))


# ---------------------------------------------------------------------- what still works
def test_integral_float_and_bool_labels_are_accepted():
    t = task(train=(X, CLASSES.astype(np.float64)), val=(X4, CLASSES4[:, None]))
    assert t.train.y.dtype == torch.long and t.train.y.tolist() == CLASSES.tolist()
    assert t.val.y.shape == (4,)  # [N, 1] class indices become [N]
    b = task("b", "binary", train=(X, BITS.astype(bool)))
    assert b.train.y.dtype == torch.float32 and b.train.y.tolist() == BITS.tolist()
    o = task(train=(X, np.array(list(CLASSES), dtype=object)))
    assert o.train.y.tolist() == CLASSES.tolist()


def test_numpy_integer_num_outputs_is_accepted():
    t = task(num_outputs=np.int64(3))
    assert t.num_outputs == 3 and type(t.num_outputs) is int


def test_allow_nonfinite_keeps_nan_and_inf():
    x = with_value(X, math.nan, (0, 0))
    y = with_value(X[:, 1], math.inf, (3,))
    t = Task("r", "regression", (x, y), (x[:4], y[:4]), allow_nonfinite=True)
    assert torch.isnan(t.train.x[0, 0]) and torch.isinf(t.val.y[3])
    b = Task("b", "binary", (x, with_value(BITS, math.nan, (2,))), allow_nonfinite=True)
    assert torch.isnan(b.train.y[2])


def test_binary_soft_targets_train_and_are_scored_against_thresholded_targets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    p = rng.uniform(size=40).astype(np.float32)  # probabilities, none exactly 0 or 1
    tasks = [Task(n, "binary", (x[:30], p[:30]), (x[30:], p[30:]), soft_targets=True)
             for n in ("s0", "s1")]
    torch.manual_seed(0)
    model = build_model(tasks, make_core("soft", dense_blocks(6, 2), 2, seed=0))
    trainer = Trainer(model, tasks, TrainConfig(steps=2, batch_size=8, eval_every=1,
                                                progress=False))
    result = trainer.fit()
    model.eval()
    with torch.no_grad():
        for i, t in enumerate(tasks):
            out = model(t.val.x, i).reshape(-1)
            expected_acc = float(((out > 0) == (t.val.y >= 0.5)).float().mean())
            expected_loss = float(F.binary_cross_entropy_with_logits(out, t.val.y))
            got = result.val["tasks"][t.name]
            assert got["accuracy"] == pytest.approx(expected_acc)
            assert got["loss"] == pytest.approx(expected_loss, rel=1e-5)
            assert 0 < got["accuracy"] <= 1  # not the 0.0 of comparing against 0.37 etc.
        # the fused (stacked) losses of the two alike tasks equal the task-by-task ones
        outs = [model(t.train.x, i) for i, t in enumerate(tasks)]
        ys = [t.train.y for t in tasks]
        fused = trainer.losses_of([0, 1], outs, ys)
        single = [t.loss(o, y) for t, o, y in zip(tasks, outs, ys)]
        assert torch.allclose(torch.stack(fused), torch.stack(single), rtol=1e-5)


def test_hard_binary_accuracy_is_unchanged():
    t = task("b", "binary")
    out = torch.tensor([-1.0, 2.0, 0.5, -0.2, 3.0, 1.0, -4.0, 0.0])
    # predictions 0,1,1,0,1,1,0,0 against 0,1,1,0,1,0,0,1
    assert int(t.correct(out, t.train.y)) == 6


# ---------------------------------------------------------------------- model and trainer
def three_tasks():
    return [task("a"), task("b", "binary"), task("c", "regression")]


def model_for(tasks):
    torch.manual_seed(0)
    return build_model(tasks, make_core("soft", dense_blocks(4, 2), len(tasks), seed=0))


def _trainer(tasks_for_model, tasks_given, config=QUIET):
    return Trainer(model_for(tasks_for_model), tasks_given, config)


TRAINER_CASES = [
    ("duplicate names", lambda: Trainer(model_for([task("a"), task("b")]),
                                        [task("a"), task("a")], QUIET),
     ConfigError, ["unique", "'a'"]),
    ("duplicate names in build_model", lambda: model_for([task("a"), task("a")]),
     ConfigError, ["unique", "'a'"]),
    ("duplicate names in MultiTaskModel", lambda: MultiTaskModel(
        make_core("soft", dense_blocks(4, 2), 2), [torch.nn.Identity()] * 2,
        [torch.nn.Identity()] * 2, ["x", "x"]), ConfigError, ["unique", "'x'"]),
    ("names count in MultiTaskModel", lambda: MultiTaskModel(
        make_core("soft", dense_blocks(4, 2), 2), [torch.nn.Identity()] * 2,
        [torch.nn.Identity()] * 2, ["x"]), ConfigError, ["1 task names", "2 tasks"]),
    ("build_model task count", lambda: build_model(
        three_tasks(), make_core("soft", dense_blocks(4, 2), 2)),
     ConfigError, ["3 tasks", "2 tasks"]),
    ("reverse order", lambda: _trainer(three_tasks(), three_tasks()[::-1]),
     ConfigError, ["another order", "model a, b, c", "given c, b, a"]),
    ("one too many", lambda: _trainer(three_tasks()[:2], three_tasks()),
     ConfigError, ["built for 2 tasks but got 3", "not in the model: c"]),
    ("one too few", lambda: _trainer(three_tasks(), three_tasks()[:2]),
     ConfigError, ["built for 3 tasks but got 2", "missing: c"]),
    ("other name", lambda: _trainer(three_tasks(), [task("a"), task("b", "binary"),
                                                    task("z", "regression")]),
     ConfigError, ["2: model 'c', given 'z'"]),
    ("other input shape", lambda: _trainer(
        three_tasks(), [task("a", train=(np.zeros((8, 5)), CLASSES),
                             val=(np.zeros((4, 5)), CLASSES4)),
                        task("b", "binary"), task("c", "regression")]),
     ShapeError, ["task 'a'", "(5,)", "(3,)"]),
    ("other outputs", lambda: _trainer(
        three_tasks(), [task("a", num_outputs=5), task("b", "binary"),
                        task("c", "regression")]),
     ShapeError, ["task 'a'", "5 outputs", "built for 3"]),
    ("not a Task", lambda: _trainer(three_tasks()[:1], [(X, CLASSES)]),
     ConfigError, ["tasks[0]", "tuple", "not a flexmtl Task"]),
    ("no tasks", lambda: Trainer(torch.nn.Linear(1, 1), [], QUIET), ConfigError, ["no tasks"]),
    ("config mapping unknown key", lambda: _trainer([task()], [task()], {"step": 5}),
     UnknownNameError, ["TrainConfig key 'step'", "Did you mean 'steps'"]),
    ("config mapping bad value", lambda: _trainer([task()], [task()], {"steps": True}),
     ConfigError, ["steps must be a whole number", "True"]),
    ("config not a TrainConfig", lambda: _trainer([task()], [task()], [("steps", 5)]),
     ConfigError, ["config must be a TrainConfig or a mapping", "list"]),
    ("out_dir empty", lambda: Trainer(model_for([task()]), [task()], QUIET, out_dir=""),
     ConfigError, ["out_dir=''", "empty", "current folder"]),
    ("out_dir blank", lambda: Trainer(model_for([task()]), [task()], QUIET, out_dir=" "),
     ConfigError, ["out_dir=' '", "empty"]),
    ("val_accuracy for regression", lambda: _trainer(
        [task("r", "regression"), task("s", "regression")],
        [task("r", "regression"), task("s", "regression")],
        TrainConfig(steps=1, select_on="val_accuracy", progress=False)),
     ConfigError, ["val_accuracy", "r, s", "regression", "val_loss"]),
]
for _name, _value in [("batch_size", 2.5), ("steps", True), ("eval_every", "10"),
                      ("seed", 1.5), ("threads", 1.0), ("finetune_patience", None),
                      ("lr", math.nan), ("weight_decay", "0.1"), ("checkpoint_every", -1)]:
    TRAINER_CASES.append((
        f"TrainConfig {_name}={_value!r}",
        lambda n=_name, v=_value: _trainer([task()], [task()],
                                           TrainConfig(progress=False, **{n: v})),
        ConfigError, [_name]))


@pytest.mark.parametrize("make, error, fragments", [c[1:] for c in TRAINER_CASES],
                         ids=[c[0] for c in TRAINER_CASES])
def test_trainer_refuses_tasks_and_settings_that_do_not_fit(make, error, fragments):
    with pytest.raises(error) as info:
        make()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_trainer_takes_a_mapping_of_train_config_fields():
    trainer = _trainer([task()], [task()], {"steps": 1, "batch_size": 4, "progress": False})
    assert trainer.config == TrainConfig(steps=1, batch_size=4, progress=False)
    assert trainer.fit().steps == 1


@pytest.mark.parametrize("out, message", [
    ("f", "out_dir f is a file; pass a folder"),
    ("f/sub", "out_dir f/sub lies below the file f; pass a folder"),
])
def test_trainer_out_dir_that_is_a_file_is_refused_before_anything_is_written(out, message):
    Path("f").write_text("my notes")
    trainer = Trainer(model_for([task()]), [task()], QUIET, out_dir=out)  # no I/O yet
    with pytest.raises(ConfigError) as info:
        trainer.fit()
    assert str(info.value) == message
    assert Path("f").read_text() == "my notes" and sorted(os.listdir()) == ["f"]


def test_evaluate_refuses_an_unknown_split_naming_it():
    trainer = _trainer([task()], [task()])
    with pytest.raises(UnknownNameError) as info:
        trainer.evaluate("trian")
    assert "unknown split 'trian'" in str(info.value)
    assert "Did you mean 'train'" in str(info.value)
    assert not trainer._ready  # refused before setup
    assert set(trainer.evaluate("train")["tasks"]) == {"a"}


def test_matching_tasks_and_unnamed_models_pass():
    tasks = three_tasks()
    Trainer(model_for(tasks), three_tasks(), QUIET)  # equal tasks made again
    core = make_core("soft", dense_blocks(3, 2), 1)
    model = MultiTaskModel(core, [torch.nn.Identity()], [torch.nn.Linear(3, 3)])
    Trainer(model, [task("anything")], QUIET)  # no names given: only the count is checked


# ---------------------------------------------------------------------- experiment configs
CONFIG_CASES = [
    ("uci", ["tasks=iris,iris"], ["tasks=iris,iris", "iris more than once"]),
    ("uci", ["tasks=iris,wine,iris,wine"], ["iris, wine more than once"]),
    ("uci", ["width=0"], ["width must be >= 1", "'uci'", "got 0"]),
    ("uci", ["width=-4"], ["width must be >= 1", "-4"]),
    ("uci", ["layers=0"], ["layers must be >= 1"]),
    ("uci", ["depth=-1"], ["depth must be >= 0"]),
    ("uci", ["batch_size=2.5"], ["batch_size=", "2.5", "int"]),
    ("mnist-pairs", ["num_tasks=0"], ["num_tasks must be >= 1"]),
    ("random-tasks", ["n=0"], ["n must be >= 1"]),
    ("random-tasks", ["m=-1"], ["m must be >= 1"]),
    ("synthetic-transfer", ["d=0"], ["d must be >= 1"]),
    ("synthetic-transfer", ["hidden=0"], ["hidden must be >= 1"]),
    ("synthetic-transfer", ["n_train=0"], ["n_train must be >= 1"]),
    ("synthetic-transfer", ["n_val=-1"], ["n_val must be >= 0"]),
    ("four-mnists", ["filters=0"], ["filters must be >= 1"]),
    ("clusters", ["channels=0"], ["channels must be >= 1"]),
    ("omniglot", ["alphabets=Greek,Greek"], ["alphabets=Greek,Greek", "Greek more than once"]),
    ("omniglot", ["size=0"], ["size must be >= 1"]),
    ("celeba", ["image_size=0"], ["image_size must be >= 1"]),
    ("layer-vis", ["width=0"], ["width must be >= 1"]),
]


@pytest.mark.parametrize("experiment, overrides, fragments", CONFIG_CASES,
                         ids=[f"{c[0]} {' '.join(c[1])}" for c in CONFIG_CASES])
def test_experiment_config_refuses_bad_sizes_and_duplicate_names(experiment, overrides,
                                                                  fragments):
    with pytest.raises(ConfigError) as info:
        get_experiment(experiment).resolve_config(None, overrides)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_experiment_defaults_pass():
    from flexmtl.experiments.base import EXPERIMENTS

    for name in EXPERIMENTS:
        get_experiment(name).resolve_config()


CLI_CASES = [
    (["uci", "tasks=iris,iris"], "iris more than once"),
    (["uci", "tasks=iris", "width=0"], "width must be >= 1"),
    (["random-tasks", "n=8", "m=4", "--sweep", "n=8,0"], "n must be >= 1"),
    (["synthetic-transfer", "n_train=8", "n_val=4", "n_test=4", "select_on=val_accuracy"],
     "select_on='val_accuracy' needs a classification task"),
    (["synthetic-transfer", "n_train=8", "n_val=0", "n_test=4"],
     "task 'task0': val split: the split is empty"),
    (["random-tasks", "n=8", "m=4", "steps=30"], "steps given twice (steps=30 and --steps 1)"),
    (["random-tasks", "n=8", "m=4", "device=cpu", "--device", "cpu"],
     "device given twice (device=cpu and --device cpu)"),
    (["random-tasks", "n=8", "m=4", "compile=false", "--compile"],
     "compile given twice (compile=false and --compile)"),
    (["random-tasks", "n=8", "m=4", "--methods", ""], "--methods '' holds no method name"),
    (["random-tasks", "n=8", "m=4", "--methods", "soft,"], "--methods 'soft,' holds no"),
]


@pytest.mark.parametrize("args, fragment", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_bad_inputs_end_in_one_line_and_status_2(args, fragment, capsys):
    argv = ["run", *args, "--steps", "1", "--seeds", "1", "--no-progress", "--no-plots",
            "--out", "o"]
    if "--sweep" not in args:
        argv.append("--no-sweep")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("flexmtl: error: ") and captured.err.count("\n") == 1
    assert fragment in captured.err, captured.err


def test_cli_empty_out_is_refused(capsys):
    argv = ["run", "random-tasks", "n=8", "m=4", "--steps", "1", "--seeds", "1", "--no-sweep",
            "--no-progress", "--no-plots", "--out", ""]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flexmtl: error: out_dir (--out) '' is empty") and \
        err.count("\n") == 1, err
    assert os.listdir() == []  # nothing written into the current folder


def test_cli_sweep_and_no_sweep_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "random-tasks", "--sweep", "n=8,16", "--no-sweep", "--out", "o"])
    assert info.value.code == 2
    assert "argument --no-sweep: not allowed with argument --sweep" in capsys.readouterr().err
    assert os.listdir() == []


RUN_ARGUMENT_CASES = [
    ({"methods": 5}, ["methods must be method names", "5"]),
    ({"methods": ["parallel", 3]}, ["methods must be method names", "3"]),
    ({"methods": []}, ["methods [] holds no name"]),
    ({"methods": "soft,,parallel"}, ["holds no name or an empty one", "''"]),
    ({"seeds": True}, ["seeds must be a whole number", "True"]),
    ({"seeds": 1.5}, ["seeds must be a whole number", "1.5"]),
    ({"seeds": 0}, ["seeds must be >= 1, got 0"]),
    ({"out_dir": ""}, ["out_dir (--out) '' is empty", "runs/random-tasks"]),
    ({"overrides": {"n": 8, "m": 4, "steps": 3}}, ["steps given twice", "steps=3", "steps=1"]),
]


@pytest.mark.parametrize("arguments, fragments", RUN_ARGUMENT_CASES,
                         ids=[repr(c[0]) for c in RUN_ARGUMENT_CASES])
def test_run_experiment_refuses_bad_arguments(arguments, fragments):
    kwargs = {"overrides": {"n": 8, "m": 4}, "seeds": 1, "steps": 1, "sweep": False,
              "progress": False, "plots": False, "log": lambda s: None, **arguments}
    with pytest.raises(ConfigError) as info:
        run_experiment("random-tasks", **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert os.listdir() == []  # refused before any folder is made


def test_run_experiment_takes_a_comma_separated_methods_string():
    results = run_experiment("random-tasks", methods="parallel, single", seeds=1, steps=1,
                             overrides={"n": 8, "m": 4}, sweep=False, out_dir="o",
                             progress=False, plots=False, log=lambda s: None)
    assert list(results["methods"]) == ["parallel", "single"]


def test_run_experiment_refuses_duplicate_tasks_and_zero_width():
    with pytest.raises(ConfigError, match="tasks=iris,iris lists iris more than once"):
        run_experiment("uci", overrides={"tasks": ["iris", "iris"]}, seeds=1, steps=1,
                       progress=False, plots=False, log=lambda s: None)
    with pytest.raises(ConfigError, match="width must be >= 1"):
        run_experiment("uci", overrides={"width": 0, "tasks": "iris"}, seeds=1, steps=1,
                       progress=False, plots=False, log=lambda s: None)
